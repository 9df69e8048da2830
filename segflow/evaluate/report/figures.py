"""The report's pictures: sample panels, the confusion heat map, the IoU bars.

Sample panels are drawn with OpenCV into an RGB array (exact pixels, so a test can check the
truth panel against the input colours) and written by :func:`write_png`; the two charts are
matplotlib figures built with ``Figure`` directly, never ``pyplot``, so drawing a report keeps
no global figure state and needs no display. Labels are train ids with 255 = ignore; anything
outside the class table is drawn black rather than in a colour a reader could mistake for a
class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from segflow.data.datasets.base import IGNORE_INDEX, ClassInfo
from segflow.evaluate.report.tables import percent

#: Layout of a sample figure: a white caption strip above the panels, white gaps between them.
HEADER_PX = 24
GAP_PX = 4
#: Panels wider than this are shrunk (a 2048-pixel Cityscapes frame would make 8K-wide PNGs).
MAX_PANEL_WIDTH = 640
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
            # nearest neighbour: a shrunk label map must still hold only class ids
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


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB array as PNG (OpenCV wants BGR); a failed write raises instead of being
    silently skipped, as ``cv2.imwrite`` would."""
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
    """Blues with NaN (a class absent from the truth) grey, so "no data" never reads as 0 %."""
    from matplotlib import colormaps

    return colormaps["Blues"].with_extremes(bad="#d9d9d9")


def plot_per_class_iou(
    path: Path, classes: Sequence[ClassInfo], before: dict, after: dict | None
) -> None:
    """Grouped bars of IoU per class, without and with CRF; undefined IoU marked n/a.
    The legend's mIoU is written as in the tables, so the figure and the text agree."""
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
        label = f"{label} (mIoU {percent(metrics['miou'])})"
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
