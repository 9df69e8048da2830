"""``write_report``: lays out the report directory and fills it, atomically.

Everything is written into a temp directory beside the target and swapped in only when the
last file is written (:func:`segflow.io.atomic_dir`), so a report that fails halfway (a sample
whose maps differ in size, a full disk) leaves the previous report whole. The pictures, the
tables and the two pages are each made by their own module; this one only decides the file
names, including a file name for each sample id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segflow.data.datasets.base import ClassInfo
from segflow.evaluate.report.figures import (
    QualitativeSample,
    plot_confusion,
    plot_per_class_iou,
    sample_figure,
    write_png,
)
from segflow.evaluate.report.render import Content
from segflow.evaluate.report.tables import write_confusion_tables, write_iou_tables
from segflow.io import atomic_dir


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
    """Write the report directory (see :mod:`segflow.evaluate.report`); ``before``/``after``
    are :func:`segflow.evaluate.metrics.metrics_from_confusion` dicts, ``after``/``cm_after``
    None when no CRF ran, ``speed`` is :func:`segflow.evaluate.speed.measure_inference`'s result
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
            write_png(tmp / name, sample_figure(sample, classes))
            sample_files.append((sample.id, name))
        plot_confusion(tmp / "confusion_matrix.png", classes, cm_before, cm_after)
        plot_per_class_iou(tmp / "per_class_iou.png", classes, before, after)
        write_iou_tables(tmp, classes, before, after)
        write_confusion_tables(tmp, classes, cm_before, cm_after)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(data, indent=2) + "\n")
        content = Content(title, classes, before, after, speed, sample_files, out_dir, protocol)
        (tmp / "report.md").write_text(content.markdown())
        (tmp / "index.html").write_text(content.html())


def _safe_name(sample_id: str) -> str:
    """A sample id as a file name: ids may hold '/' (Cityscapes city/frame) or spaces."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", sample_id).strip("._") or "sample"
