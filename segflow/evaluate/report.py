"""The evaluation report: markdown, self-contained HTML, figures and DVC-plot tables.

``write_report`` fills one directory, swapped in atomically (a failed report leaves the
previous one whole):

- ``report.md`` and ``index.html``: the same content; per-class table (IoU without / with CRF,
  accuracy, pixel share), summary metrics, speed and memory, figures, samples. The HTML has its
  CSS inline and refers to images by relative path only, so the directory can be copied or
  logged as an MLflow artifact and still open offline.
- ``confusion_matrix.png``: row-normalised heat maps (before / after CRF), rows = truth.
- ``per_class_iou.png``: IoU per class, bars before vs after CRF.
- ``samples/<id>.png``: image | ground truth | prediction | prediction with CRF, in the dataset's
  colours; ignore (255) and any label outside the class table drawn black.
- ``per_class_iou.csv`` / ``.json``: ``class, iou, iou_crf`` (NaN written as empty / null).
- ``confusion_counts.csv``: exact ``actual, predicted, count[, count_crf]`` for every pair seen.
- ``confusion.csv`` (and ``confusion_crf.csv``): a long ``actual, predicted`` table for DVC. DVC's
  ``confusion`` and ``confusion_normalized`` templates *count rows* (one row per prediction);
  one row per pixel would be millions of rows, so each true class gets the same number of rows,
  split over the predicted classes in proportion to the pixel counts (largest remainder,
  deterministic). ``confusion_normalized`` with ``y: actual`` divides by the row total, so it
  draws the row-normalised matrix to within one row in ``rows_per_class``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from segflow.data.datasets.base import IGNORE_INDEX, ClassInfo
from segflow.io import atomic_dir

#: Layout of a sample figure: a white caption strip above the panels, white gaps between them.
HEADER_PX = 24
GAP_PX = 4
#: Panels wider than this are shrunk (a 2048-pixel Cityscapes frame would make 8K-wide PNGs).
MAX_PANEL_WIDTH = 640
#: Upper bound on the rows of confusion.csv (split evenly over the true classes present).
CONFUSION_ROWS = 20_000
#: Cells of the confusion heat map carry their percentage up to this many classes.
ANNOTATE_MAX_CLASSES = 25


@dataclass(frozen=True)
class QualitativeSample:
    """One image to draw: RGB uint8 H x W x 3 and H x W label maps (train ids, 255 = ignore)."""

    id: str
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    pred_crf: np.ndarray | None = None


def write_report(
    out_dir: str | Path,
    classes: Sequence[ClassInfo],
    before: dict,
    after: dict | None,
    cm_before: np.ndarray,
    cm_after: np.ndarray | None,
    samples: Sequence[QualitativeSample],
    speed: dict,
    title: str = "segflow evaluation",
    protocol: str = "",
    extra_files: dict[str, object] | None = None,
) -> None:
    """Write the report directory (see the module doc); ``before``/``after`` are
    :func:`segflow.evaluate.metrics.metrics_from_confusion` dicts, ``after``/``cm_after`` None
    when no CRF ran, ``speed`` is :func:`segflow.evaluate.speed.measure_inference`'s result
    (may be empty), with the served path's ``ms_per_image`` and ``ms_per_image_network`` when
    known. ``protocol`` is a paragraph on how the figures were measured; ``extra_files`` are
    JSON files written into the directory with it (name -> data)."""
    out_dir = Path(out_dir)
    cm_before = np.asarray(cm_before)
    cm_after = None if cm_after is None else np.asarray(cm_after)
    with atomic_dir(out_dir) as tmp:
        (tmp / "samples").mkdir()
        sample_files: list[tuple[str, str]] = []
        for sample in samples:
            stem = _safe_name(sample.id)
            if any(path == f"samples/{stem}.png" for _, path in sample_files):
                stem = f"{stem}_{len(sample_files)}"  # two ids that differ only in odd chars
            name = f"samples/{stem}.png"
            _write_png(tmp / name, sample_figure(sample, classes))
            sample_files.append((sample.id, name))
        plot_confusion(tmp / "confusion_matrix.png", classes, cm_before, cm_after)
        plot_per_class_iou(tmp / "per_class_iou.png", classes, before, after)
        _write_iou_tables(tmp, classes, before, after)
        _write_confusion_tables(tmp, classes, cm_before, cm_after)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
        content = _Content(title, classes, before, after, speed, sample_files, out_dir, protocol)
        (tmp / "report.md").write_text(content.markdown())
        (tmp / "index.html").write_text(content.html())


# ---------------------------------------------------------------------------------------------
# figures


def colorize(labels: np.ndarray, classes: Sequence[ClassInfo]) -> np.ndarray:
    """H x W train ids -> H x W x 3 RGB in the class colours; 255 and unknown ids black."""
    lut = np.zeros((256, 3), np.uint8)
    for c in classes:
        if 0 <= c.id < 256 and c.id != IGNORE_INDEX:
            lut[c.id] = c.color
    return lut[labels.astype(np.uint8)]


def sample_figure(sample: QualitativeSample, classes: Sequence[ClassInfo]) -> np.ndarray:
    """image | ground truth | prediction [| prediction with CRF], captioned, RGB uint8."""
    height, width = sample.label.shape
    scale = min(1.0, MAX_PANEL_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def label_panel(labels: np.ndarray) -> np.ndarray:
        if labels.shape != (height, width):
            raise ValueError(f"sample {sample.id}: label maps differ in size from the truth")
        if scale < 1:
            labels = cv2.resize(labels.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        return colorize(labels, classes)

    image = sample.image
    if scale < 1:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    panels = [("image", image), ("ground truth", label_panel(sample.label))]
    panels.append(("prediction", label_panel(sample.pred)))
    if sample.pred_crf is not None:
        panels.append(("prediction + CRF", label_panel(sample.pred_crf)))

    w, h = size
    out = np.full((HEADER_PX + h, len(panels) * w + (len(panels) - 1) * GAP_PX, 3), 255, np.uint8)
    for i, (caption, panel) in enumerate(panels):
        x = i * (w + GAP_PX)
        out[HEADER_PX:, x : x + w] = panel
        origin = (x + 4, HEADER_PX - 7)
        cv2.putText(out, caption, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write PNG")


def row_normalize(mat: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the share of a true class predicted as each class);
    rows of classes absent from the truth are NaN."""
    mat = mat.astype(np.float64)
    totals = mat.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, mat / totals, np.nan)


def plot_confusion(
    path: Path, classes: Sequence[ClassInfo], cm_before: np.ndarray, cm_after: np.ndarray | None
) -> None:
    """Row-normalised heat map(s); rows absent from the truth are grey."""
    names = [c.name for c in classes]
    mats = [("without CRF", cm_before)] + ([("with CRF", cm_after)] if cm_after is not None else [])
    n = len(names)
    side = min(max(4.0, 0.42 * n + 2.5), 30.0)
    fig = Figure(figsize=(side * len(mats) + 1.0, side), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    for ax, (label, mat) in zip(axes, mats, strict=True):
        norm = np.ma.masked_invalid(row_normalize(mat))
        image = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap=_cmap(), interpolation="nearest")
        ax.set_title(f"confusion, row-normalised ({label})")
        ax.set_xticks(range(n), names, rotation=90 if n > 12 else 45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        if n <= ANNOTATE_MAX_CLASSES:
            for (t, p), value in np.ndenumerate(norm.filled(np.nan)):
                if value == value and value >= 0.005:
                    color = "white" if value > 0.5 else "black"
                    text = f"{100 * value:.0f}"
                    ax.text(p, t, text, ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the true class")
    fig.savefig(path)


def _cmap():
    from matplotlib import colormaps

    return colormaps["Blues"].with_extremes(bad="#d9d9d9")


def plot_per_class_iou(
    path: Path, classes: Sequence[ClassInfo], before: dict, after: dict | None
) -> None:
    """Grouped bars of IoU per class, without and with CRF; undefined IoU marked n/a."""
    names = [c.name for c in classes]
    n = len(names)
    series = [("without CRF", before, "#4c72b0")]
    if after is not None:
        series.append(("with CRF", after, "#dd8452"))
    fig = Figure(figsize=(min(max(6.0, 0.5 * n + 2.0), 40.0), 4.5), dpi=100, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(series)
    x = np.arange(n)
    for i, (label, metrics, color) in enumerate(series):
        values = np.nan_to_num(np.array(metrics["iou"], dtype=np.float64))
        offset = (i - (len(series) - 1) / 2) * width
        label = f"{label} (mIoU {_fmt(metrics['miou'])})"
        ax.bar(x + offset, values, width, label=label, color=color)
    for i in range(n):
        if all(math.isnan(m["iou"][i]) for _, m, _ in series):
            ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, names, rotation=90 if n > 12 else 45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title("IoU per class")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path)


# ---------------------------------------------------------------------------------------------
# tables for DVC plots


def _write_iou_tables(
    out: Path, classes: Sequence[ClassInfo], before: dict, after: dict | None
) -> None:
    rows = []
    for i, c in enumerate(classes):
        iou_crf = after["iou"][i] if after is not None else math.nan
        rows.append({"class": c.name, "iou": _num(before["iou"][i]), "iou_crf": _num(iou_crf)})
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


def _write_confusion_tables(
    out: Path, classes: Sequence[ClassInfo], cm_before: np.ndarray, cm_after: np.ndarray | None
) -> None:
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


# ---------------------------------------------------------------------------------------------
# markdown and HTML


class _Content:
    """The report's tables and text, rendered once as markdown and once as HTML."""

    def __init__(
        self, title, classes, before, after, speed, sample_files, out_dir, protocol=""
    ) -> None:
        self.title = title
        self.protocol = protocol
        self.classes = classes
        self.before, self.after = before, after
        self.speed = speed
        self.samples = sample_files
        self.out_dir = out_dir

    def class_table(self) -> tuple[list[str], list[list[str]]]:
        crf = self.after is not None
        header = ["id", "class", "IoU", "IoU (CRF)", "Dice", "Dice (CRF)", "accuracy"]
        header += ["accuracy (CRF)"] if crf else []
        header += ["precision", "pixel share"]
        rows = []
        b, a = self.before, self.after
        for i, c in enumerate(self.classes):
            row = [str(c.id), c.name, _fmt(b["iou"][i]), _fmt(a["iou"][i]) if crf else "no CRF"]
            row += [_fmt(b["dice"][i]), _fmt(a["dice"][i]) if crf else "no CRF"]
            row.append(_fmt(b["class_accuracy"][i]))
            row += [_fmt(a["class_accuracy"][i])] if crf else []
            row += [_fmt(b["precision"][i]), _fmt(b["pixel_share"][i])]
            rows.append(row)
        return header, rows

    def summary_table(self) -> tuple[list[str], list[list[str]]]:
        names = [
            ("pixel accuracy (PA)", "pixel_accuracy"),
            ("mean accuracy (MPA)", "mean_accuracy"),
            ("mean IoU (mIoU)", "miou"),
            ("frequency-weighted IoU (FWIoU)", "fwiou"),
            ("mean Dice (mDice)", "mdice"),
            ("mean F-score (mFscore)", "mfscore"),
            ("mean precision", "mprecision"),
            ("mean recall", "mrecall"),
        ]
        rows = []
        for label, key in names:
            after = _fmt(self.after[key]) if self.after is not None else "no CRF"
            rows.append([label, _fmt(self.before[key]), after])
        return ["metric", "without CRF", "with CRF"], rows

    def speed_text(self) -> str:
        s = self.speed
        if not s:
            return "Speed and memory were not measured."
        size = "x".join(str(v) for v in s.get("image_size", [])) or "?"
        text = (
            f"{s['ms_per_image_median']:.1f} ms per image (median of {s.get('repeats', '?')} "
            f"timed runs after {s.get('warmup', '?')} warm-up; {s.get('mode', 'single')} "
            f"inference, {size} input, batch {s.get('batch_size', 1)}, on {s.get('device', '?')})."
        )
        if "ms_per_image" in s:
            text += (
                f" Served path ({s.get('served', '?')}, on a "
                f"{'x'.join(str(v) for v in s.get('served_size', []))} image): "
                f"{s['ms_per_image']:.1f} ms per image, of which the network "
                f"{s['ms_per_image_network']:.1f} ms."
            )
        if "peak_memory_mb" in s:
            what = {
                "cuda_max_allocated": "peak allocated GPU memory (weights, input and activations)",
                "cpu_peak_rss_increase": "peak resident memory added by inference (CPU)",
                "cpu_maxrss_growth": "growth of the peak resident memory (CPU, lower bound)",
            }.get(s.get("memory_measure", ""), "peak memory")
            text += f" {what}: {s['peak_memory_mb']:.1f} MiB."
        return text

    def dvc_snippet(self) -> str:
        d = self.out_dir.as_posix()
        return (
            "plots:\n"
            f"  - {d}/per_class_iou.csv:\n"
            "      template: bar_horizontal\n"
            "      x: iou          # iou_crf for the CRF column\n"
            "      y: class\n"
            f"  - {d}/confusion.csv:\n"
            "      template: confusion_normalized\n"
            "      x: predicted\n"
            "      y: actual\n"
        )

    CONFUSION_NOTE = (
        "`confusion.csv` is a long `actual,predicted` table for DVC's confusion templates, which "
        "count rows: each true class gets the same number of rows, split over the predicted "
        "classes in proportion to its pixels, so `confusion_normalized` with `y: actual` draws "
        "the row-normalised matrix. Exact pixel counts per (actual, predicted) pair are in "
        "`confusion_counts.csv`."
    )
    NAN_NOTE = (
        "A dash marks a class absent from both ground truth and prediction: it is not scored "
        "and is left out of the means. A class predicted but absent from the ground truth has "
        "IoU 0. Pixels labelled 255 are not scored."
    )

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        lines += [self.protocol, ""] if self.protocol else []
        lines += ["## Summary", ""]
        lines += _md_table(*self.summary_table())
        lines += ["", self.speed_text(), "", "## Per class", ""]
        lines += _md_table(*self.class_table())
        lines += ["", self.NAN_NOTE, "", "## Figures", ""]
        lines += ["![confusion matrix](confusion_matrix.png)", ""]
        lines += ["![IoU per class](per_class_iou.png)", ""]
        if self.samples:
            lines += ["## Samples", ""]
            for sid, path in self.samples:
                lines += [f"![{sid}]({path})", ""]
        lines += ["## DVC plots", "", self.CONFUSION_NOTE, "", "```yaml"]
        lines += [self.dvc_snippet().rstrip("\n")]
        lines += ["```", ""]
        return "\n".join(lines)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        body += [f"<p>{_code_spans(e(self.protocol))}</p>"] if self.protocol else []
        body += ["<h2>Summary</h2>", _html_table(*self.summary_table())]
        body += [f"<p>{e(self.speed_text())}</p>", "<h2>Per class</h2>"]
        body += [_html_table(*self.class_table()), f"<p class='note'>{e(self.NAN_NOTE)}</p>"]
        body += ["<h2>Figures</h2>"]
        body += ['<img src="confusion_matrix.png" alt="confusion matrix">']
        body += ['<img src="per_class_iou.png" alt="IoU per class">']
        if self.samples:
            body += ["<h2>Samples</h2>"]
            body += [
                f'<figure><img src="{e(path)}" alt="{e(sid)}"><figcaption>{e(sid)}</figcaption>'
                "</figure>"
                for sid, path in self.samples
            ]
        body += ["<h2>DVC plots</h2>", f"<p>{_code_spans(e(self.CONFUSION_NOTE))}</p>"]
        body += [f"<pre>{e(self.dvc_snippet())}</pre>"]
        return (
            "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>{e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
th { background: #f0f0f0; }
.num { text-align: right; } .text { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
.note { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 1em; }
"""


#: Columns of text (left-aligned); every other column holds numbers (right-aligned).
_TEXT_COLUMNS = ("class", "metric")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = [":---" if h in _TEXT_COLUMNS else "---:" for h in header]
    return [line(header), "|" + "|".join(align) + "|"] + [line(r) for r in rows]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    cls = ["text" if h in _TEXT_COLUMNS else "num" for h in header]
    head = "".join(f"<th class='{k}'>{e(h)}</th>" for k, h in zip(cls, header, strict=True))
    body = "".join(
        "<tr>"
        + "".join(f"<td class='{k}'>{e(c)}</td>" for k, c in zip(cls, r, strict=True))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _code_spans(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _fmt(x: float | None) -> str:
    """A fraction as a percentage with two decimals; undefined (NaN) as a dash."""
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def _num(x: float) -> float | None:
    return None if x is None or x != x else round(float(x), 6)


def _safe_name(sample_id: str) -> str:
    """A sample id as a file name: ids may hold '/' (Cityscapes city/frame) or spaces."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._") or "sample"
