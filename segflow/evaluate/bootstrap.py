"""Paired bootstrap over the gate's images: is the new model's mIoU really above the champion's?

A split of a few hundred images gives an mIoU that moves by a point or more when other
images of the same kind are drawn, so "0.612 beats 0.608" says nothing by itself. Both models
are scored on the *same* images, and those images are resampled with replacement: each resample
gives both models' mIoU on the same draw, and their difference. The percentile interval of that
difference at ``confidence`` is what the promotion gate reads; pairing cancels the variation
that comes from which images happen to be hard, which is most of it.

When the images come in groups (frames of one video sequence, slices of one patient), images of
a group are not independent draws: resampling images would treat 100 near-identical frames as
100 pieces of evidence and give a tight-looking interval. With ``groups`` the bootstrap
resamples whole groups: a group's images are summed into one unit first, which gives exactly
the same statistic on every draw (mIoU sums counts) with the group as the unit of evidence.

The statistic is the dataset-level mIoU of :func:`segflow.evaluate.metrics.metrics_from_confusion`
(intersections and unions summed over the drawn images, then IoU per class, classes with an
empty union left out), not a mean of per-image scores. So each image is kept as three count
vectors: true positives, ground-truth pixels and predicted pixels per class (``(3, C)``); a draw
sums them with the multiplicity each image got, which is one matrix product per model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
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
    #: Groups resampled (None: the images were the unit).
    num_groups: int | None = None

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def paired_bootstrap(
    new: np.ndarray,
    old: np.ndarray,
    samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> PairedBootstrap:
    """Interval of mIoU(new) - mIoU(old) over ``samples`` resamples of the images (or, with
    ``groups``, one group name per image, of the groups).

    ``new`` and ``old`` are ``(N, 3, C)`` per-image counts of the same N images in the same
    order. Deterministic for a given ``seed``.
    """
    new, old = np.asarray(new, dtype=np.int64), np.asarray(old, dtype=np.int64)
    if new.shape != old.shape or new.ndim != 3 or new.shape[1] != 3:
        raise SegflowError(
            f"paired bootstrap: per-image counts of shapes {new.shape} and {old.shape}; "
            "both models must be scored on the same images and classes, (N, 3, C)"
        )
    num_images = new.shape[0]
    if num_images == 0:
        raise SegflowError("paired bootstrap: no images")
    if not 0.5 < confidence < 1:
        raise SegflowError(f"paired bootstrap: confidence {confidence} must be in (0.5, 1)")
    num_groups = None
    if groups is not None:
        if len(groups) != num_images:
            raise SegflowError(
                f"paired bootstrap: {len(groups)} group names for {num_images} images"
            )
        new, old = sum_by_group(new, groups), sum_by_group(old, groups)
        num_groups = new.shape[0]
    n = new.shape[0]
    rng = np.random.default_rng(seed)
    # weights[b, i]: how often unit i is drawn in resample b (a multinomial draw of n units).
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
        num_images=int(num_images),
        seed=int(seed),
        num_groups=num_groups,
    )


def sum_by_group(counts: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """``(G, 3, C)``: the images' counts summed per group, groups in order of first appearance."""
    order: dict[str, int] = {}
    index = np.array([order.setdefault(g, len(order)) for g in groups])
    out = np.zeros((len(order), *counts.shape[1:]), dtype=np.int64)
    np.add.at(out, index, counts)
    return out


@dataclass
class ImageCounts:
    """Per-image counts of one split (the gate's decision split), as the evaluate stage wrote
    them for the register stage: ``counts["raw"]`` (plain argmax) and ``counts["crf"]`` (after
    the served CRF, when crf_tune chose it), each ``(N, 3, C)``, ids in the same order."""

    split: str
    ids: list[str]
    counts: dict[str, np.ndarray] = field(default_factory=dict)


def save_image_counts(path: str | Path, counts: ImageCounts) -> None:
    """Write :class:`ImageCounts` (one .npz, atomically)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, split=np.asarray(counts.split), ids=np.asarray(counts.ids, dtype=str),
            **counts.counts,
        )  # fmt: skip


def load_image_counts(path: str | Path, hint: str) -> ImageCounts:
    """What :func:`save_image_counts` wrote; missing or unreadable is a SegflowError + ``hint``."""
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: per-image counts not found; {hint}")
    try:
        with np.load(path, allow_pickle=False) as data:
            split = str(data["split"])
            ids = [str(i) for i in data["ids"]]
            counts = {k: data[k] for k in data.files if k not in ("ids", "split")}
    except (OSError, ValueError, KeyError) as exc:
        raise SegflowError(f"{path}: unreadable per-image counts ({exc}); {hint}") from None
    return ImageCounts(split, ids, counts)
