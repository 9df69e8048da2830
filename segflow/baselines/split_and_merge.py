"""Split-and-merge region segmentation with a region classifier: no deep learning.

The classical pipeline (Horowitz and Pavlidis 1974 for split-and-merge; a classifier over
region features, as in the pre-CNN scene-labelling systems), in numpy and OpenCV:

1. **Split** (:func:`quadtree_split`): the image, in CIE Lab (where Euclidean distance roughly
   follows perceived colour difference; OpenCV's 8-bit Lab, each channel 0..255), is split into
   quadrants recursively while a block is not homogeneous (the standard deviation of some Lab
   channel exceeds ``split_std``) and is larger than ``min_block`` pixels a side. Block
   statistics come from integral images, so each costs O(1).
2. **Merge** (:func:`merge_regions`): the blocks' region adjacency graph (4-neighbourhood) is
   walked from the most similar adjacent pair to the least; two regions merge when the distance
   between their *current* mean Lab colours is below ``merge_distance`` (union-find keeps the
   merged sums, so a region's mean follows its merges).
3. **Label** (:class:`SoftmaxRegression` over :func:`region_features`): each region is described
   by its size, mean and standard deviation of L, a, b, mean gradient magnitude of L (texture),
   centroid and bounding box in image-relative coordinates, and a ``bins``-bin histogram of each
   Lab channel. A multinomial logistic regression, trained in numpy by full-batch gradient
   descent with momentum on the train split's regions, gives each region a class. A region's
   target is the class distribution of its labelled pixels and its weight their count (times
   ``share ** -class_balance`` per class), so the loss is the pixel-level cross-entropy of giving
   the whole region one prediction: what pixel accuracy and IoU will count.

Everything runs at the shards' training scale; :mod:`segflow.baselines.scoring` brings the
label map to the masks' native resolution.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from segflow.baselines.options import check
from segflow.data.datasets.base import IGNORE_INDEX
from segflow.data.loader import ShardReader, split_files
from segflow.data.shards import read_index

WHAT = "baseline split_and_merge"


@dataclass(frozen=True)
class SplitMergeOptions:
    """``segflow baseline split_and_merge`` options (``-o KEY=VALUE``)."""

    #: A block splits while the std of some Lab channel (0..255 scale) exceeds this.
    split_std: float = 8.0
    #: Blocks of this many pixels a side or fewer are never split.
    min_block: int = 4
    #: Adjacent regions merge while their mean Lab colours are closer than this.
    merge_distance: float = 10.0
    #: Histogram bins per Lab channel in the region features.
    bins: int = 4
    #: Full-batch gradient descent steps (Nesterov momentum 0.9) of the softmax regression,
    #: and its step size.
    steps: int = 300
    lr: float = 0.5
    #: L2 penalty on the regression weights (not the biases).
    l2: float = 1e-4
    #: Per-class weight share(class) ** -class_balance on the training regions' pixels.
    class_balance: float = 0.5

    def __post_init__(self) -> None:
        check(self.split_std >= 0, WHAT, f"split_std must be >= 0 (got {self.split_std})")
        check(self.min_block >= 1, WHAT, f"min_block must be >= 1 (got {self.min_block})")
        check(self.merge_distance >= 0, WHAT, "merge_distance must be >= 0 "
              f"(got {self.merge_distance})")  # fmt: skip
        check(2 <= self.bins <= 64, WHAT, f"bins must be in 2..64 (got {self.bins})")
        check(self.steps >= 1, WHAT, f"steps must be >= 1 (got {self.steps})")
        check(self.lr > 0, WHAT, f"lr must be > 0 (got {self.lr})")
        check(self.l2 >= 0, WHAT, f"l2 must be >= 0 (got {self.l2})")
        check(0 <= self.class_balance <= 1, WHAT, "class_balance must be in [0, 1] "
              f"(got {self.class_balance})")  # fmt: skip


def to_lab(image: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB -> float64 Lab (OpenCV's 8-bit scaling: every channel 0..255)."""
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float64)


def _integral(values: np.ndarray) -> np.ndarray:
    """(H+1) x (W+1) x C table of sums over ``values[:y, :x]``."""
    out = np.zeros((values.shape[0] + 1, values.shape[1] + 1, values.shape[2]))
    out[1:, 1:] = values.cumsum(0).cumsum(1)
    return out


def _block_sums(table: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    y0, x0, h, w = blocks.T
    y1, x1 = y0 + h, x0 + w
    return table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]


def quadtree_split(lab: np.ndarray, split_std: float, min_block: int) -> np.ndarray:
    """H x W int64 ids of the quadtree's leaf blocks (see the module docstring, step 1)."""
    height, width = lab.shape[:2]
    sums, squares = _integral(lab), _integral(lab * lab)
    blocks = np.array([[0, 0, height, width]])
    leaves = []
    while len(blocks):
        area = (blocks[:, 2] * blocks[:, 3])[:, None]
        mean = _block_sums(sums, blocks) / area
        var = np.maximum(_block_sums(squares, blocks) / area - mean**2, 0)
        split = (np.sqrt(var).max(1) > split_std) & (blocks[:, 2:].min(1) > min_block)
        leaves.append(blocks[~split])
        y0, x0, h, w = blocks[split].T
        h2, w2 = h // 2, w // 2
        blocks = np.concatenate(
            [
                np.stack([y0, x0, h2, w2], 1),
                np.stack([y0, x0 + w2, h2, w - w2], 1),
                np.stack([y0 + h2, x0, h - h2, w2], 1),
                np.stack([y0 + h2, x0 + w2, h - h2, w - w2], 1),
            ]
        )
    regions = np.empty((height, width), np.int64)
    for i, (y0, x0, h, w) in enumerate(np.concatenate(leaves)):
        regions[y0 : y0 + h, x0 : x0 + w] = i
    return regions


def adjacent_pairs(regions: np.ndarray) -> np.ndarray:
    """E x 2 distinct (a, b) id pairs, a < b, of regions that touch (4-neighbourhood)."""
    a = np.concatenate([regions[:, :-1].ravel(), regions[:-1, :].ravel()])
    b = np.concatenate([regions[:, 1:].ravel(), regions[1:, :].ravel()])
    differ = a != b
    lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    n = int(regions.max()) + 1
    keys = np.unique(lo * n + hi)
    return np.stack([keys // n, keys % n], 1)


def merge_regions(lab: np.ndarray, regions: np.ndarray, merge_distance: float) -> np.ndarray:
    """Regions after merging similar neighbours (step 2), renumbered 0 .. R-1."""
    n = int(regions.max()) + 1
    flat = regions.ravel()
    count = np.bincount(flat, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(flat, lab[..., c].ravel(), n) for c in range(3)], 1)
    pairs = adjacent_pairs(regions)
    means = sums / np.maximum(count, 1)[:, None]
    order = np.argsort(np.linalg.norm(means[pairs[:, 0]] - means[pairs[:, 1]], axis=1))
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    limit = merge_distance**2
    for a, b in pairs[order]:
        ra, rb = root(a), root(b)
        if ra == rb:
            continue
        diff = sums[ra] / count[ra] - sums[rb] / count[rb]
        if float(diff @ diff) < limit:
            parent[rb] = ra
            sums[ra] += sums[rb]
            count[ra] += count[rb]
    roots = np.array([root(i) for i in range(n)])
    _, renumbered = np.unique(roots, return_inverse=True)
    return renumbered[regions]


def segment(image: np.ndarray, options: SplitMergeOptions) -> tuple[np.ndarray, np.ndarray]:
    """(regions, Lab image) of an RGB image: split, then merge."""
    lab = to_lab(image)
    blocks = quadtree_split(lab, options.split_std, options.min_block)
    return merge_regions(lab, blocks, options.merge_distance), lab


def region_features(lab: np.ndarray, regions: np.ndarray, bins: int) -> np.ndarray:
    """R x F features of each region (step 3 of the module docstring)."""
    h, w = regions.shape
    flat = regions.ravel()
    n = int(flat.max()) + 1
    count = np.bincount(flat, minlength=n).astype(np.float64)

    def mean_of(values: np.ndarray) -> np.ndarray:
        return np.bincount(flat, values.ravel(), n) / count

    colour = lab.reshape(-1, 3)
    means = np.stack([mean_of(colour[:, c]) for c in range(3)], 1)
    stds = np.sqrt(
        np.maximum(np.stack([mean_of(colour[:, c] ** 2) for c in range(3)], 1) - means**2, 0)
    )
    light = lab[..., 0].astype(np.float32)
    grad = np.hypot(cv2.Sobel(light, cv2.CV_32F, 1, 0), cv2.Sobel(light, cv2.CV_32F, 0, 1))
    ys, xs = np.mgrid[0:h, 0:w]
    yy, xx = ys.ravel() / max(h - 1, 1), xs.ravel() / max(w - 1, 1)
    top, left = np.full(n, np.inf), np.full(n, np.inf)
    bottom, right = np.full(n, -np.inf), np.full(n, -np.inf)
    np.minimum.at(top, flat, yy)
    np.maximum.at(bottom, flat, yy)
    np.minimum.at(left, flat, xx)
    np.maximum.at(right, flat, xx)
    quantised = np.minimum((colour * bins / 256).astype(np.int64), bins - 1)
    hist = [
        np.bincount(flat * bins + quantised[:, c], minlength=n * bins).reshape(n, bins)
        / count[:, None]
        for c in range(3)
    ]
    return np.column_stack(
        [
            np.log(count / (h * w)),
            means,
            stds,
            mean_of(grad),
            mean_of(yy),
            mean_of(xx),
            top,
            bottom,
            left,
            right,
            *hist,
        ]
    )


def region_targets(
    regions: np.ndarray, mask: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(R x C labelled-pixel counts per class, R labelled-pixel totals) of each region."""
    n = int(regions.max()) + 1
    valid = (mask != IGNORE_INDEX) & (mask < num_classes)
    keys = regions[valid] * num_classes + mask[valid].astype(np.int64)
    counts = np.bincount(keys, minlength=n * num_classes).reshape(n, num_classes)
    return counts.astype(np.float64), counts.sum(1).astype(np.float64)


class SoftmaxRegression:
    """Multinomial logistic regression on standardised features, trained with soft targets."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        self.mean = np.zeros(num_features)
        self.scale = np.ones(num_features)
        self.weight = np.zeros((num_features, num_classes))
        self.bias = np.zeros(num_classes)

    def scores(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weight + self.bias

    def fit(
        self, features: np.ndarray, targets: np.ndarray, weights: np.ndarray,
        steps: int, lr: float, l2: float, momentum: float = 0.9,
    ) -> list[float]:  # fmt: skip
        """Minimise the ``weights``-weighted cross-entropy against ``targets`` (rows summing to
        1) plus ``l2 * |weight|^2 / 2`` by full-batch gradient descent with Nesterov momentum
        (the loss is convex; momentum gets there in a few hundred steps); returns the losses."""
        self.mean = features.mean(0)
        self.scale = features.std(0) + 1e-8
        x = ((features - self.mean) / self.scale).astype(np.float32)
        t = targets.astype(np.float32)
        w = (weights / weights.sum()).astype(np.float32)
        params = [self.weight.astype(np.float32), self.bias.astype(np.float32)]
        velocity = [np.zeros_like(p) for p in params]
        losses = []
        for _ in range(steps):
            ahead = [p + momentum * v for p, v in zip(params, velocity, strict=True)]
            z = x @ ahead[0] + ahead[1]
            z -= z.max(1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
            losses.append(float(-(w * (t * log_p).sum(1)).sum()))
            g = w[:, None] * (np.exp(log_p) - t)
            grads = [x.T @ g + l2 * ahead[0], g.sum(0)]
            for p, v, grad in zip(params, velocity, grads, strict=True):
                v *= momentum
                v -= lr * grad
                p += v
        self.weight, self.bias = params[0].astype(np.float64), params[1].astype(np.float64)
        return losses

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.scores(features).argmax(1)


class SplitAndMerge:
    """Segment with split-and-merge, then label each region with the trained regression."""

    def __init__(self, options: SplitMergeOptions, regression: SoftmaxRegression) -> None:
        self.options = options
        self.regression = regression

    def label_map(self, image: np.ndarray) -> np.ndarray:
        """H x W uint8 labels of ``image`` (at the training scale)."""
        regions, lab = segment(image, self.options)
        classes = self.regression.predict(region_features(lab, regions, self.options.bins))
        return classes.astype(np.uint8)[regions]


def train_split_and_merge(
    shard_dir: str | Path,
    options: SplitMergeOptions,
    echo: Callable[[str], None] | None = None,
) -> SplitAndMerge:
    """Segment every train image, collect its regions' features and targets, fit the regression."""
    index = read_index(shard_dir)
    num_classes = int(index["num_classes"])
    pixels = np.asarray(index["splits"]["train"]["class_pixels"], dtype=np.float64)
    share = pixels / max(pixels.sum(), 1.0)
    class_weight = np.where(share > 0, np.maximum(share, 1e-12) ** -options.class_balance, 0.0)
    reader = ShardReader(split_files(shard_dir, "train"))
    started = time.perf_counter()
    features, targets, weights = [], [], []
    for i in range(len(reader)):
        image, mask = reader.decoded(i)
        regions, lab = segment(image, options)
        counts, total = region_targets(regions, mask, num_classes)
        keep = total > 0
        features.append(region_features(lab, regions, options.bins)[keep])
        targets.append(counts[keep] / total[keep, None])
        weights.append((counts[keep] * class_weight).sum(1))
    x, t, w = np.concatenate(features), np.concatenate(targets), np.concatenate(weights)
    regression = SoftmaxRegression(x.shape[1], num_classes)
    losses = regression.fit(x, t, w, options.steps, options.lr, options.l2)
    if echo is not None:
        echo(
            f"split_and_merge: {len(x)} regions from {len(reader)} train images, loss "
            f"{losses[0]:.3f} -> {losses[-1]:.3f} ({time.perf_counter() - started:.0f} s)"
        )
    return SplitAndMerge(options, regression)
