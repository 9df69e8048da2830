"""The report's numbers as tables: what the renderers show and what DVC plots read.

- :func:`class_table`, :func:`summary_table` and :func:`crf_regressions`: header and rows of
  text, built once and shown by both renderers (:mod:`.render`), so the markdown and the HTML
  cannot disagree. A metric is written by :func:`percent`: a percentage with two decimals and
  its unit (``62.98 %``), undefined (NaN or null) as a dash; a change by :func:`points`, in
  percentage points (``-2.55 pp``), so a reader never has to guess whether 0.6 means 0.6 % or
  60 %.
- :func:`write_iou_tables`: ``per_class_iou.csv`` / ``.json``, IoU as a fraction rounded to six
  places, NaN as an empty cell / ``null`` (DVC and JSON have no NaN).
- :func:`write_confusion_tables`: ``confusion_counts.csv`` (exact pixel counts per pair seen)
  and the long ``confusion.csv`` / ``confusion_crf.csv``. DVC's ``confusion`` and
  ``confusion_normalized`` templates *count rows* (one row per prediction); one row per pixel
  would be millions of rows, so each true class gets the same number of rows, split over the
  predicted classes in proportion to the pixel counts (:func:`confusion_rows`: largest
  remainder, deterministic). ``confusion_normalized`` with ``y: actual`` divides by the row
  total, so it draws the row-normalised matrix to within one row in ``rows_per_class``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segflow.data.datasets.base import ClassInfo

#: Upper bound on the rows of confusion.csv (split evenly over the true classes present).
CONFUSION_ROWS = 20_000

#: The summary table's rows: label shown, key of the metrics dict. mmsegmentation's mFscore is
#: F1 over pixel counts, 2TP / (2TP + FP + FN), which is Dice term for term: one row shows both
#: (see :data:`DICE_NOTE`) instead of two rows that always agree.
_SUMMARY_METRICS = [
    ("pixel accuracy (PA)", "pixel_accuracy"),
    ("mean accuracy (MPA)", "mean_accuracy"),
    ("mean IoU (mIoU)", "miou"),
    ("frequency-weighted IoU (FWIoU)", "fwiou"),
    ("mean Dice = mean F-score (mDice, mFscore)", "mdice"),
    ("mean precision", "mprecision"),
    ("mean recall", "mrecall"),
]

DICE_NOTE = (
    "mDice and mFscore are one number: over pixel counts the F-score (F1) is "
    "2TP / (2TP + FP + FN), which is the Dice coefficient, so mmsegmentation's two metrics always "
    "agree; reports/metrics.json keeps both names."
)


def _defined(x: float | None) -> bool:
    return x is not None and x == x


def percent(x: float | None) -> str:
    """A fraction as a percentage with two decimals and the unit; undefined as a dash."""
    return f"{100 * x:.2f} %" if _defined(x) else "-"


def points(delta: float | None) -> str:
    """A difference of two fractions in percentage points, signed; undefined as a dash."""
    return f"{100 * delta:+.2f} pp" if _defined(delta) else "-"


def hex_colour(color: Sequence[int]) -> str:
    """``#rrggbb`` of an RGB triple: how the per-class table names a class's colour."""
    return "#" + "".join(f"{int(c):02x}" for c in color)


def crf_regressions(
    classes: Sequence[ClassInfo], before: dict, after: dict | None
) -> list[tuple[str, float, float]]:
    """(class, IoU without, IoU with CRF) of every class the CRF makes worse, in class order.

    A CRF is chosen on the decision split by its mIoU; a mean that rises can hide a class that
    falls (thin classes such as poles are smoothed away), which is what a reader of a served
    CRF has to see."""
    if after is None:
        return []
    out = []
    for i, c in enumerate(classes):
        iou, iou_crf = before["iou"][i], after["iou"][i]
        if _defined(iou) and _defined(iou_crf) and iou_crf < iou:
            out.append((c.name, iou, iou_crf))
    return out


def class_table(
    classes: Sequence[ClassInfo], before: dict, after: dict | None, crf_served: bool = False
) -> tuple[list[str], list[list[str]]]:
    """One row per class: id, colour, name, IoU without / with CRF and the change, Dice and
    accuracy (each without / with CRF), precision and pixel share. Without a CRF the IoU and
    Dice CRF cells read "no CRF" and the change and accuracy CRF columns are left out. When the
    CRF is served, a class it makes worse has "worse" after its change."""
    crf = after is not None
    header = ["id", "colour", "class", "IoU", "IoU (CRF)"]
    header += ["CRF change"] if crf else []
    header += ["Dice", "Dice (CRF)", "accuracy"]
    header += ["accuracy (CRF)"] if crf else []
    header += ["precision", "pixel share"]
    regressions = crf_regressions(classes, before, after) if crf_served else []
    worse = {name for name, _, _ in regressions}
    rows = []
    b, a = before, after
    for i, c in enumerate(classes):
        row = [str(c.id), hex_colour(c.color), c.name, percent(b["iou"][i])]
        if crf:
            change = None
            if _defined(b["iou"][i]) and _defined(a["iou"][i]):
                change = a["iou"][i] - b["iou"][i]
            row += [percent(a["iou"][i]), points(change) + (" worse" if c.name in worse else "")]
        else:
            row.append("no CRF")
        row += [percent(b["dice"][i]), percent(a["dice"][i]) if crf else "no CRF"]
        row.append(percent(b["class_accuracy"][i]))
        row += [percent(a["class_accuracy"][i])] if crf else []
        row += [percent(b["precision"][i]), percent(b["pixel_share"][i])]
        rows.append(row)
    return header, rows


def summary_table(before: dict, after: dict | None) -> tuple[list[str], list[list[str]]]:
    """The dataset-level metrics, one row each, without and with CRF."""
    rows = []
    for label, key in _SUMMARY_METRICS:
        with_crf = percent(after[key]) if after is not None else "no CRF"
        rows.append([label, percent(before[key]), with_crf])
    return ["metric", "without CRF", "with CRF"], rows


def write_iou_tables(
    out: Path, classes: Sequence[ClassInfo], before: dict, after: dict | None
) -> None:
    """``per_class_iou.json`` and ``.csv``: ``class, iou, iou_crf`` (``iou_crf`` empty / null
    when no CRF ran)."""
    rows = []
    for i, c in enumerate(classes):
        iou_crf = after["iou"][i] if after is not None else math.nan
        rows.append(
            {"class": c.name, "iou": _rounded(before["iou"][i]), "iou_crf": _rounded(iou_crf)}
        )
    (out / "per_class_iou.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "per_class_iou.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["class", "iou", "iou_crf"])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)


def confusion_rows(mat: np.ndarray, rows_per_class: int) -> list[tuple[int, int]]:
    """(actual, predicted) rows: ``rows_per_class`` per true class present, split over the
    predicted classes in proportion to the counts (largest remainder, ties to lower ids)."""
    rows: list[tuple[int, int]] = []
    for t, counts in enumerate(np.asarray(mat, dtype=np.float64)):
        total = counts.sum()
        if total <= 0:
            continue
        exact = counts * rows_per_class / total
        alloc = np.floor(exact).astype(np.int64)
        short = rows_per_class - int(alloc.sum())
        alloc[np.argsort(-(exact - alloc), kind="stable")[:short]] += 1
        for p, k in enumerate(alloc):
            rows.extend([(t, p)] * int(k))
    return rows


def write_confusion_tables(
    out: Path, classes: Sequence[ClassInfo], cm_before: np.ndarray, cm_after: np.ndarray | None
) -> None:
    """``confusion_counts.csv`` and ``confusion.csv`` (``confusion_crf.csv`` with a CRF); see
    the module doc for why the long tables hold a fixed number of rows per true class."""
    names = [c.name for c in classes]
    with open(out / "confusion_counts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["actual", "predicted", "count"] + (["count_crf"] if cm_after is not None else [])
        )
        for (t, p), count in np.ndenumerate(cm_before):
            extra = [int(cm_after[t, p])] if cm_after is not None else []
            if count or any(extra):
                writer.writerow([names[t], names[p], int(count), *extra])
    for name, mat in (("confusion.csv", cm_before), ("confusion_crf.csv", cm_after)):
        if mat is None:
            continue
        present = max(1, int((mat.sum(axis=1) > 0).sum()))
        with open(out / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["actual", "predicted"])
            writer.writerows(
                (names[t], names[p]) for t, p in confusion_rows(mat, CONFUSION_ROWS // present)
            )


def _rounded(x: float | None) -> float | None:
    """A fraction for the CSV/JSON files: six places are far below any difference that
    matters, and keep the files diff-friendly; NaN becomes None (empty cell / null)."""
    return None if x is None or x != x else round(float(x), 6)
