"""``write_report``: lays out the report directory and fills it, atomically.

Everything is written into a temp directory beside the target and swapped in only when the
last file is written (:func:`segflow.io.atomic_dir`), so a report that fails halfway (a sample
whose maps differ in size, a full disk) leaves the previous report whole. The pictures, the
tables and the two pages are each made by their own module; this one only decides the file
names, including a file name for each sample id.

What the pages say is also kept as ``report_data.json``, so :func:`render_registered` can render
them again, in a copy, with the registry version the register stage learns later.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segflow.data.datasets.base import ClassInfo
from segflow.errors import SegflowError
from segflow.evaluate.report.figures import (
    QualitativeSample,
    legend_strip,
    plot_confusion,
    plot_per_class_iou,
    plot_training_curve,
    sample_figure,
    write_png,
)
from segflow.evaluate.report.header import Provenance
from segflow.evaluate.report.render import Content
from segflow.evaluate.report.tables import write_confusion_tables, write_iou_tables
from segflow.io import atomic_dir

#: The pages' content as JSON (see :class:`segflow.evaluate.report.render.Content`).
REPORT_DATA = "report_data.json"
#: Width of legend.png, about the width of a sample figure of small images.
LEGEND_WIDTH = 960


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
    *,
    crf_served: bool = False,
    provenance: Provenance | None = None,
    curve: Sequence[dict] | None = None,
) -> None:
    """Write the report directory (see :mod:`segflow.evaluate.report`); ``before``/``after``
    are :func:`segflow.evaluate.metrics.metrics_from_confusion` dicts, ``after``/``cm_after``
    None when no CRF ran, ``crf_served`` whether the served model applies it, ``speed`` is
    :func:`segflow.evaluate.speed.measure_inference`'s result (may be empty), with the served
    path's ``ms_per_image`` and ``ms_per_image_network`` when known. ``protocol`` is a paragraph
    on how the figures were measured; ``provenance`` the model's identity for the header;
    ``curve`` the rows of reports/train_curve.csv (None: no training curve); ``extra_files``
    are JSON files written into the directory with it (name -> data)."""
    out_dir = Path(out_dir)
    cm_before = np.asarray(cm_before)
    cm_after = None if cm_after is None else np.asarray(cm_after)
    served = crf_served and after is not None
    with atomic_dir(out_dir) as tmp:
        (tmp / "samples").mkdir()
        sample_files: list[dict] = []
        for sample in samples:
            stem = _safe_name(sample.id)
            if any(s["path"] == f"samples/{stem}.png" for s in sample_files):
                stem = f"{stem}_{len(sample_files)}"  # two ids that differ only in odd chars
            name = f"samples/{stem}.png"
            write_png(tmp / name, sample_figure(sample, classes, served))
            sample_files.append({"id": sample.id, "path": name, "caption": sample.caption})
        write_png(tmp / "legend.png", legend_strip(classes, LEGEND_WIDTH))
        plot_confusion(tmp / "confusion_matrix.png", classes, cm_before, cm_after)
        plot_per_class_iou(tmp / "per_class_iou.png", classes, before, after)
        if curve:
            best = provenance.best_epoch if provenance is not None else None
            plot_training_curve(tmp / "training_curve.png", curve, best)
        write_iou_tables(tmp, classes, before, after)
        write_confusion_tables(tmp, classes, cm_before, cm_after)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
        data = {
            "title": title,
            "protocol": protocol,
            "classes": [c.to_dict() for c in classes],
            "before": _without_nan(before),
            "after": _without_nan(after),
            "crf_served": served,
            "speed": speed,
            "samples": sample_files,
            "provenance": (provenance or Provenance()).to_dict(),
            "figures": {"training_curve": bool(curve)},
        }
        (tmp / REPORT_DATA).write_text(json.dumps(data, indent=2) + "\n")
        _write_pages(tmp, data)


def render_registered(report_dir: str | Path, dst: str | Path, registry: str) -> Path:
    """A copy of the report at ``dst`` whose header names its registry version (``registry``,
    see :func:`segflow.evaluate.report.header.registry_text`); the report itself is unchanged."""
    report_dir, dst = Path(report_dir), Path(dst)
    try:
        data = json.loads((report_dir / REPORT_DATA).read_text())
    except (OSError, ValueError) as exc:
        raise SegflowError(
            f"{report_dir / REPORT_DATA}: cannot be read ({exc}); rerun the evaluate stage"
        ) from None
    shutil.copytree(report_dir, dst)
    data["provenance"] = {**data.get("provenance", {}), "registry": registry}
    (dst / REPORT_DATA).write_text(json.dumps(data, indent=2) + "\n")
    _write_pages(dst, data)
    return dst


def _write_pages(directory: Path, data: dict) -> None:
    content = Content(data)
    (directory / "report.md").write_text(content.markdown())
    (directory / "index.html").write_text(content.html())


def _without_nan(metrics: dict | None) -> dict | None:
    """A metrics dict with NaN as None: JSON has no NaN, and the tables print None as a dash."""
    if metrics is None:
        return None

    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return {key: clean(value) for key, value in metrics.items()}


def _safe_name(sample_id: str) -> str:
    """A sample id as a file name: ids may hold '/' (Cityscapes city/frame) or spaces."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._") or "sample"
