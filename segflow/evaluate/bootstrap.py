"""Paired bootstrap over test images: is the new model's mIoU really above the champion's?

A test split of a few hundred images gives an mIoU that moves by a point or more when other
images of the same kind are drawn, so "0.612 beats 0.608" says nothing by itself. Both models
are scored on the *same* images, and those images are resampled with replacement: each resample
gives both models' mIoU on the same draw, and their difference. The percentile interval of that
difference at ``confidence`` is what the promotion gate reads; pairing cancels the variation
that comes from which images happen to be hard, which is most of it.

The statistic is the dataset-level mIoU of :func:`segflow.evaluate.metrics.metrics_from_confusion`
(intersections and unions summed over the drawn images, then IoU per class, classes with an
empty union left out), not a mean of per-image scores. So each image is kept as three count
vectors: true positives, ground-truth pixels and predicted pixels per class (``(3, C)``); a draw
sums them with the multiplicity each image got, which is one matrix product per model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from segflow.errors import SegflowError
from segflow.io import atomic_path

TP, GT, PRED = 0, 1, 2


def image_counts(confusion: np.ndarray) -> np.ndarray:
    """``(3, C)`` int64 of one image's confusion matrix (rows = truth): TP, GT and predicted
    pixels per class."""
    confusion = np.asarray(confusion, dtype=np.int64)
    return np.stack([np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)])


class SplitCounts:
    """A split's confusion matrix (summed) and each image's three count vectors, filled one
    image at a time, so a split of thousands of 150-class images never holds thousands of
    C x C matrices. Used wherever a split is scored: plain argmax and after the CRF."""

    def __init__(self, num_images: int, num_classes: int) -> None:
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.image_counts = np.zeros((num_images, 3, num_classes), dtype=np.int64)

    def add(self, index: int, confusion: np.ndarray) -> None:
        """Image ``index``'s confusion matrix (rows = truth)."""
        self.confusion += confusion
        self.image_counts[index] = image_counts(confusion)


def miou_of_counts(counts: np.ndarray) -> np.ndarray | float:
    """mIoU of summed counts ``(..., 3, C)``: IoU per class where the union is not empty, mean
    over those classes (NaN where no class has pixels). Same rule as metrics_from_confusion."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, gt, pred = counts[..., TP, :], counts[..., GT, :], counts[..., PRED, :]
    union = gt + pred - tp
    seen = union > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(seen, tp / union, 0.0)
        miou = iou.sum(axis=-1) / seen.sum(axis=-1)
    return float(miou) if np.ndim(miou) == 0 else miou


@dataclass(frozen=True)
class PairedBootstrap:
    """mIoU of both models on all images, their difference and its percentile interval."""

    new_miou: float
    old_miou: float
    diff: float
    low: float
    high: float
    confidence: float
    samples: int
    num_images: int
    seed: int

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def paired_bootstrap(
    new: np.ndarray,
    old: np.ndarray,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedBootstrap:
    """Interval of mIoU(new) - mIoU(old) over ``samples`` resamples of the images.

    ``new`` and ``old`` are ``(N, 3, C)`` per-image counts of the same N images in the same
    order. Deterministic for a given ``seed``.
    """
    new, old = np.asarray(new, dtype=np.int64), np.asarray(old, dtype=np.int64)
    if new.shape != old.shape or new.ndim != 3 or new.shape[1] != 3:
        raise SegflowError(
            f"paired bootstrap: per-image counts of shapes {new.shape} and {old.shape}; "
            "both models must be scored on the same images and classes, (N, 3, C)"
        )
    n = new.shape[0]
    if n == 0:
        raise SegflowError("paired bootstrap: no test images")
    if not 0.5 < confidence < 1:
        raise SegflowError(f"paired bootstrap: confidence {confidence} must be in (0.5, 1)")
    rng = np.random.default_rng(seed)
    # weights[b, i]: how often image i is drawn in resample b (a multinomial draw of n images).
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(np.float64)
    flat_new, flat_old = new.reshape(n, -1), old.reshape(n, -1)
    diffs = miou_of_counts((weights @ flat_new).reshape(samples, 3, -1)) - miou_of_counts(
        (weights @ flat_old).reshape(samples, 3, -1)
    )
    diffs = diffs[np.isfinite(diffs)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha]) if diffs.size else (np.nan, np.nan)
    new_miou, old_miou = miou_of_counts(new.sum(axis=0)), miou_of_counts(old.sum(axis=0))
    return PairedBootstrap(
        new_miou=float(new_miou),
        old_miou=float(old_miou),
        diff=float(new_miou - old_miou),
        low=float(low),
        high=float(high),
        confidence=float(confidence),
        samples=int(samples),
        num_images=int(n),
        seed=int(seed),
    )


def save_image_counts(path: str | Path, ids: list[str], **counts: np.ndarray) -> None:
    """Write per-image counts (``raw=..., crf=...``, each ``(N, 3, C)``) with the sample ids."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, ids=np.asarray(ids, dtype=str), **counts)


def load_image_counts(path: str | Path, hint: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """``(ids, {name: counts})`` of :func:`save_image_counts`; missing is a SegflowError."""
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: per-image counts not found; {hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = [str(i) for i in data["ids"]]
            counts = {k: data[k] for k in data.files if k != "ids"}
    except (OSError, ValueError, KeyError) as exc:
        raise SegflowError(f"{path}: unreadable per-image counts ({exc}); {hint}") from None
    return ids, counts
