"""The report's pictures: sample figures, the legend, the confusion heat map, the IoU bars and
the training curve.

Sample figures are drawn with OpenCV into an RGB array (exact pixels, so a test can check a
panel against the input colours) and written by :func:`write_png`; the charts are matplotlib
figures built with ``Figure`` directly, never ``pyplot``, so drawing a report keeps no global
figure state and needs no display. Labels are train ids with 255 = ignore; anything outside
the class table is drawn black rather than in a colour a reader could mistake for a class.

A sample figure is a grid of panels, three to a row, each under its caption:
``image | ground truth | prediction (served)`` and ``overlay (served) | errors (served) |`` the
other prediction (without the CRF when the CRF is served, with it when it is not), then a
legend of the classes in the figure. Small images are enlarged by a whole factor (nearest
neighbour, so every source pixel stays a sharp square) to at least :data:`MIN_PANEL_WIDTH`;
large ones are shrunk to :data:`MAX_PANEL_WIDTH`.
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

#: Layout of a sample figure: a caption strip above each panel, white gaps between panels, a
#: title strip above the grid when the sample has a caption.
HEADER_PX = 24
GAP_PX = 4
TITLE_PX = 30
COLUMNS = 3
#: Panels narrower than this are enlarged by a whole factor (a 128-pixel-wide image is a
#: thumbnail nobody can read); wider than MAX_PANEL_WIDTH are shrunk (a 2048-pixel Cityscapes
#: frame would make 6K-wide PNGs).
MIN_PANEL_WIDTH = 320
MAX_PANEL_WIDTH = 640
#: Legend entries: a square swatch and the class name, wrapped over rows of this height.
SWATCH_PX = 14
LEGEND_ROW_PX = 22
#: Cells of the confusion heat map carry their percentage up to this many classes.
ANNOTATE_MAX_CLASSES = 25
#: The errors panel: wrong pixels in this colour over the image in grey.
ERROR_RGB = (255, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class QualitativeSample:
    """One image to draw: RGB uint8 H x W x 3 and H x W label maps (train ids, 255 = ignore);
    ``caption`` says why it was chosen (e.g. ``worst of 233 test images: mIoU 12.34 %``)."""

    id: str
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    pred_crf: np.ndarray | None = None
    caption: str = ""


def colorize(labels: np.ndarray, classes: Sequence[ClassInfo]) -> np.ndarray:
    """H x W train ids -> H x W x 3 RGB in the class colours; 255 and unknown ids black."""
    lut = np.zeros((256, 3), np.uint8)
    for c in classes:
        if 0 <= c.id < 256 and c.id != IGNORE_INDEX:
            lut[c.id] = c.color
    return lut[labels.astype(np.uint8)]


def panel_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) a panel of an H x W image is drawn at (see the module doc)."""
    if width > MAX_PANEL_WIDTH:
        scale = MAX_PANEL_WIDTH / width
        return max(1, round(height * scale)), MAX_PANEL_WIDTH
    factor = max(1, min(math.ceil(MIN_PANEL_WIDTH / width), MAX_PANEL_WIDTH // width))
    return height * factor, width * factor


def panel_origin(index: int, size: tuple[int, int], titled: bool) -> tuple[int, int]:
    """(y, x) of the top-left pixel of panel ``index`` (row-major, :data:`COLUMNS` a row)."""
    h, w = size
    row, col = divmod(index, COLUMNS)
    top = (TITLE_PX if titled else 0) + row * (HEADER_PX + h + GAP_PX) + HEADER_PX
    return top, col * (w + GAP_PX)


def sample_figure(
    sample: QualitativeSample, classes: Sequence[ClassInfo], crf_served: bool = False
) -> np.ndarray:
    """The sample's panels in a grid, captioned, with a legend of its classes; RGB uint8."""
    height, width = sample.label.shape
    size = panel_size(height, width)
    maps = [sample.pred] + ([sample.pred_crf] if sample.pred_crf is not None else [])
    for labels in maps:
        if labels.shape != (height, width):
            raise ValueError(f"sample {sample.id}: label maps differ in size from the truth")

    def scaled(labels: np.ndarray) -> np.ndarray:
        # nearest neighbour: a resized label map must still hold only class ids
        return cv2.resize(labels.astype(np.uint8), size[::-1], interpolation=cv2.INTER_NEAREST)

    shrink = size[1] < width
    image = cv2.resize(
        sample.image, size[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_NEAREST
    )
    truth = scaled(sample.label)
    with_crf = crf_served and sample.pred_crf is not None
    served = scaled(sample.pred_crf if with_crf else sample.pred)
    panels = [
        ("image", image),
        ("ground truth", colorize(truth, classes)),
        ("prediction + CRF (served)" if with_crf else "prediction (served)",
         colorize(served, classes)),
        ("overlay (served)", overlay(image, colorize(served, classes))),
        ("errors (served): red = wrong", errors(image, truth, served)),
    ]  # fmt: skip
    if sample.pred_crf is not None:
        other = sample.pred if with_crf else sample.pred_crf
        caption = "prediction without CRF" if with_crf else "prediction + CRF (not served)"
        panels.append((caption, colorize(scaled(other), classes)))

    h, w = size
    rows = math.ceil(len(panels) / COLUMNS)
    grid_w = COLUMNS * w + (COLUMNS - 1) * GAP_PX
    titled = bool(sample.caption)
    grid_h = (TITLE_PX if titled else 0) + rows * (HEADER_PX + h) + (rows - 1) * GAP_PX
    present = sorted(set(np.unique(np.concatenate([m.ravel() for m in [sample.label, *maps]]))))
    legend = legend_strip([c for c in classes if c.id in present], grid_w)
    out = np.full((grid_h + legend.shape[0], grid_w, 3), 255, np.uint8)
    if titled:
        cv2.putText(out, sample.caption, (4, TITLE_PX - 9), _FONT, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for i, (caption, panel) in enumerate(panels):
        y, x = panel_origin(i, size, titled)
        out[y : y + h, x : x + w] = panel
        cv2.putText(out, caption, (x + 4, y - 7), _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    out[grid_h:] = legend
    return out


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The prediction's colours blended over the image (``alpha`` the colours' weight)."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def errors(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The image in dimmed grey with every scored pixel the prediction gets wrong in red;
    pixels labelled 255 are not scored, so never red."""
    grey = (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) * 0.6).astype(np.uint8)
    out = np.repeat(grey[..., None], 3, axis=2)
    out[(truth != IGNORE_INDEX) & (truth != pred)] = ERROR_RGB
    return out


def legend_strip(classes: Sequence[ClassInfo], width: int) -> np.ndarray:
    """A white strip ``width`` wide: a swatch and the name of each class, wrapped in rows."""
    entries = []
    for c in classes:
        (text_w, _), _ = cv2.getTextSize(c.name, _FONT, 0.5, 1)
        entries.append((c, SWATCH_PX + 6 + text_w + 18))
    lines: list[list[tuple[ClassInfo, int]]] = [[]]
    used = 4
    for c, entry_w in entries:
        if lines[-1] and used + entry_w > width:
            lines.append([])
            used = 4
        lines[-1].append((c, entry_w))
        used += entry_w
    out = np.full((LEGEND_ROW_PX * len(lines) + 6 if entries else 0, width, 3), 255, np.uint8)
    for r, line in enumerate(lines):
        x, y = 4, 6 + r * LEGEND_ROW_PX
        for c, entry_w in line:
            out[y : y + SWATCH_PX, x : x + SWATCH_PX] = c.color
            cv2.rectangle(out, (x, y), (x + SWATCH_PX - 1, y + SWATCH_PX - 1), (90, 90, 90), 1)
            origin = (x + SWATCH_PX + 6, y + SWATCH_PX - 2)
            cv2.putText(out, c.name, origin, _FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
            x += entry_w
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
    """Row-normalised heat map(s) in %; rows absent from the truth are grey."""
    names = [c.name for c in classes]
    mats = [("without CRF", cm_before)] + ([("with CRF", cm_after)] if cm_after is not None else [])
    n = len(names)
    side = min(max(4.0, 0.42 * n + 2.5), 30.0)
    fig = Figure(figsize=(side * len(mats) + 1.0, side), dpi=100, layout="constrained")
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    for ax, (label, mat) in zip(axes, mats, strict=True):
        norm = np.ma.masked_invalid(100 * row_normalize(mat))
        image = ax.imshow(norm, vmin=0.0, vmax=100.0, cmap=_cmap(), interpolation="nearest")
        ax.set_title(f"confusion, % of each true class ({label})")
        ax.set_xticks(range(n), names, rotation=90 if n > 12 else 45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        if n <= ANNOTATE_MAX_CLASSES:
            for (t, p), value in np.ndenumerate(norm.filled(np.nan)):
                if value == value and value >= 0.5:
                    color = "white" if value > 50 else "black"
                    ax.text(p, t, f"{value:.0f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of the true class (%)")
    fig.savefig(path)


def _cmap():
    """Blues with NaN (a class absent from the truth) grey, so "no data" never reads as 0 %."""
    from matplotlib import colormaps

    return colormaps["Blues"].with_extremes(bad="#d9d9d9")


def plot_per_class_iou(
    path: Path, classes: Sequence[ClassInfo], before: dict, after: dict | None
) -> None:
    """Grouped bars of IoU (%) per class, without and with CRF; undefined IoU marked n/a.
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
        values = 100 * np.nan_to_num(_floats(metrics["iou"]))
        offset = (i - (len(series) - 1) / 2) * width
        label = f"{label} (mIoU {percent(metrics['miou'])})"
        ax.bar(x + offset, values, width, label=label, color=color)
    for i in range(n):
        if all(np.isnan(_floats(m["iou"])[i]) for _, m, _ in series):
            ax.text(i, 2, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, names, rotation=90 if n > 12 else 45, ha="right", fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.set_title("IoU per class")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path)


def plot_training_curve(path: Path, rows: Sequence[dict], best_epoch: int | None) -> None:
    """Train loss, validation (and dev) mIoU in % and the learning rate per epoch, side by
    side, the kept epoch marked: how the scored weights came about. ``rows`` are
    reports/train_curve.csv's rows (numbers, or None where a column has no value)."""
    epochs = np.array([float(r["epoch"]) for r in rows])
    fig = Figure(figsize=(12.0, 3.4), dpi=100, layout="constrained")
    loss_ax, miou_ax, lr_ax = fig.subplots(1, 3)
    panels = [
        (loss_ax, "train loss", [("train_loss", "train loss", 1.0)]),
        (miou_ax, "mIoU (%)", [("val_miou", "val", 100.0), ("dev_miou", "dev", 100.0)]),
        (lr_ax, "learning rate", [("lr", "lr", 1.0)]),
    ]
    for ax, title, columns in panels:
        for key, label, scale in columns:
            values = np.array([_float(r.get(key)) for r in rows]) * scale
            if np.isfinite(values).any():
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#888888", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    miou_ax.legend(fontsize=8, loc="lower right")
    if best_epoch is not None:
        loss_ax.text(0.99, 0.97, f"kept: epoch {best_epoch}", transform=loss_ax.transAxes,
                     ha="right", va="top", fontsize=8, color="#555555")  # fmt: skip
    fig.savefig(path)


def _float(value: object) -> float:
    try:
        return float(value) if value is not None and value != "" else math.nan
    except (TypeError, ValueError):
        return math.nan


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """A per-class list as floats, None (how the report's JSON writes NaN) as NaN."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)
