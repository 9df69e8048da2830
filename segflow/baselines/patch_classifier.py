"""Sliding-window patch classification: a small CNN labels the centre pixel of each window.

Before fully convolutional networks, a CNN segmented by classifying, for every pixel, the
square patch centred on it (Ciresan et al. 2012 on neuron membranes; Farabet et al. 2013 on
scenes). It works, and explains why FCNs won: neighbouring windows overlap almost entirely, yet
each window's features are computed from scratch, so a 180x240 image costs 43,200 forward passes
where an FCN shares one. The patch also bounds the context a decision can use.

Training (:func:`train_patch_classifier`): patches of ``patch`` x ``patch`` pixels are cut
around centres sampled from the train split's labelled pixels (the shards, at their training
scale, through :class:`segflow.data.loader.ShardReader`), each labelled with its centre pixel's
class and flipped horizontally at random. Centres are drawn with per-pixel weight
``share(class) ** -class_balance`` (the class's share of the train pixels), so with the default
0.5 a class ten times rarer is drawn about three times more often per pixel than uniform
sampling would, and poles are seen at all. The image is padded by replicating its border, so
windows at the edge exist.

Inference (:meth:`PatchClassifier.label_map`), batched (``eval_batch`` windows per forward):

* ``stride`` 1: every pixel's centred window is classified; the label map is exact.
* ``stride`` s > 1: only the centres of an s x s grid of blocks are classified (block i covers
  rows ``i*s .. i*s + s - 1`` and its centre row is ``i*s + s // 2``, clipped to the image), and
  every pixel takes the label of its block's centre: nearest-neighbour upsampling of the coarse
  grid. s x s fewer windows, at the price of blocky boundaries.

The network (:class:`PatchCNN`): three 3x3 conv + BN + ReLU layers of ``width``, 2x and 4x
channels with a 2x2 max pool after the first two, then two fully connected layers; the window's
spatial layout reaches the classifier (no global pooling), so "what is at the centre" stays
distinguishable from "what is nearby".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.baselines.options import check
from segflow.data.datasets.base import IGNORE_INDEX
from segflow.data.loader import ShardReader, split_files
from segflow.data.shards import read_index

WHAT = "baseline patch_classifier"


@dataclass(frozen=True)
class PatchOptions:
    """``segflow baseline patch_classifier`` options (``-o KEY=VALUE``)."""

    #: Window side in pixels (odd, so one pixel is the centre), at the shards' scale.
    patch: int = 31
    #: Inference grid step: 1 classifies every pixel's window, s classifies one per s x s block.
    stride: int = 4
    #: Channels of the first conv layer (the others have 2x and 4x).
    width: int = 16
    #: Training steps (Adam, cosine-decayed learning rate) of ``batch_size`` windows each.
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    #: Centre sampling weight share(class) ** -class_balance (0: uniform over labelled pixels).
    class_balance: float = 0.5
    #: Train images each step's windows are cut from.
    images_per_step: int = 8
    #: Windows per forward pass at inference.
    eval_batch: int = 2048

    def __post_init__(self) -> None:
        check(self.patch >= 5 and self.patch % 2 == 1, WHAT, f"patch must be odd and >= 5 "
              f"(got {self.patch})")  # fmt: skip
        check(self.stride >= 1, WHAT, f"stride must be >= 1 (got {self.stride})")
        check(self.width >= 1, WHAT, f"width must be >= 1 (got {self.width})")
        check(self.steps >= 1, WHAT, f"steps must be >= 1 (got {self.steps})")
        check(self.batch_size >= 1, WHAT, f"batch_size must be >= 1 (got {self.batch_size})")
        check(self.lr > 0, WHAT, f"lr must be > 0 (got {self.lr})")
        check(0 <= self.class_balance <= 1, WHAT, "class_balance must be in [0, 1] "
              f"(got {self.class_balance})")  # fmt: skip
        check(self.images_per_step >= 1, WHAT, "images_per_step must be >= 1")
        check(self.eval_batch >= 1, WHAT, f"eval_batch must be >= 1 (got {self.eval_batch})")


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class PatchCNN(nn.Module):
    """``N x 3 x patch x patch`` windows -> ``N x num_classes`` scores of their centre pixels."""

    def __init__(self, num_classes: int, patch: int = 31, width: int = 16) -> None:
        super().__init__()
        self.patch = patch
        self.features = nn.Sequential(
            conv_bn_relu(3, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
        )
        side = patch // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * width * side * side, 8 * width),
            nn.ReLU(inplace=True),
            nn.Linear(8 * width, num_classes),
        )

    def forward(self, patches: Tensor) -> Tensor:
        return self.classifier(self.features(patches))


def grid_centres(length: int, stride: int) -> list[int]:
    """Centre of each ``stride``-long block of ``0 .. length - 1``, clipped to the last pixel."""
    return [min(i * stride + stride // 2, length - 1) for i in range(math.ceil(length / stride))]


class PatchClassifier:
    """A trained :class:`PatchCNN` with the normalisation it was trained with."""

    def __init__(
        self,
        model: PatchCNN,
        mean: Sequence[float],
        std: Sequence[float],
        stride: int = 1,
        eval_batch: int = 2048,
    ) -> None:
        self.model = model.eval()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.stride = stride
        self.eval_batch = eval_batch

    @property
    def radius(self) -> int:
        return self.model.patch // 2

    def normalize(self, image: np.ndarray) -> Tensor:
        """H x W x 3 uint8 RGB -> 3 x H x W float, ``(pixel / 255 - mean) / std``."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
        return (x - self.mean) / self.std

    def padded(self, image: np.ndarray) -> Tensor:
        """The normalised image with ``patch // 2`` border pixels replicated on every side."""
        r = self.radius
        return F.pad(self.normalize(image)[None], (r, r, r, r), mode="replicate")[0]

    @torch.no_grad()
    def logits_at(self, image: np.ndarray, rows: Sequence[int], cols: Sequence[int]) -> Tensor:
        """Scores (C x len(rows) x len(cols)) of the windows centred at every (row, col) pair,
        ``eval_batch`` windows per forward pass."""
        padded = self.padded(image)
        p = self.model.patch
        cols_t = torch.as_tensor(list(cols))
        out, batch, done = [], [], 0
        for y in rows:
            # The band of rows of this window row; unfold is a view, indexing copies the windows.
            band = padded[:, y : y + p, :].unfold(2, p, 1)  # 3 x p x (W) x p
            batch.append(band[:, :, cols_t, :].permute(2, 0, 1, 3))  # len(cols) x 3 x p x p
            done += len(cols_t)
            if done >= self.eval_batch:
                out.append(self.model(torch.cat(batch)))
                batch, done = [], 0
        if batch:
            out.append(self.model(torch.cat(batch)))
        scores = torch.cat(out)
        return scores.T.reshape(-1, len(rows), len(cols_t))

    def label_map(self, image: np.ndarray, stride: int | None = None) -> np.ndarray:
        """H x W uint8 labels of ``image`` (at the training scale); ``stride`` as documented in
        the module docstring (default: the classifier's)."""
        s = stride or self.stride
        h, w = image.shape[:2]
        grid = self.logits_at(image, grid_centres(h, s), grid_centres(w, s)).argmax(0).numpy()
        grid = grid.astype(np.uint8)
        if s == 1:
            return grid
        return grid[np.arange(h) // s][:, np.arange(w) // s]


def centre_weights(class_pixels: Sequence[int], class_balance: float) -> np.ndarray:
    """Sampling weight of a labelled pixel of each class: ``share ** -class_balance`` (0 for a
    class with no train pixels)."""
    pixels = np.asarray(class_pixels, dtype=np.float64)
    share = pixels / max(pixels.sum(), 1.0)
    weights = np.zeros_like(share)
    present = share > 0
    weights[present] = share[present] ** -class_balance
    return weights


def sample_windows(
    classifier: PatchClassifier,
    image: np.ndarray,
    mask: np.ndarray,
    weights: np.ndarray,
    count: int,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor] | None:
    """``count`` windows of ``image`` centred on labelled pixels drawn by class weight, and
    their centre labels; None when the image has no labelled pixel."""
    valid = (mask != IGNORE_INDEX) & (mask < len(weights))
    flat = np.flatnonzero(valid)
    if flat.size == 0:
        return None
    w = weights[mask.ravel()[flat]]
    if w.sum() <= 0:
        return None
    picks = rng.choice(flat, size=count, p=w / w.sum())
    ys, xs = np.divmod(picks, mask.shape[1])
    padded = classifier.padded(image)
    p = classifier.model.patch
    windows = torch.stack([padded[:, y : y + p, x : x + p] for y, x in zip(ys, xs, strict=True)])
    flips = torch.from_numpy(rng.random(count) < 0.5)
    windows[flips] = windows[flips].flip(-1)
    return windows, torch.from_numpy(mask[ys, xs].astype(np.int64))


def train_patch_classifier(
    shard_dir: str | Path,
    options: PatchOptions,
    mean: Sequence[float],
    std: Sequence[float],
    seed: int = 0,
    echo: Callable[[str], None] | None = None,
) -> PatchClassifier:
    """Train a :class:`PatchCNN` on windows of the train split (see the module docstring)."""
    index = read_index(shard_dir)
    num_classes = int(index["num_classes"])
    weights = centre_weights(index["splits"]["train"]["class_pixels"], options.class_balance)
    reader = ShardReader(split_files(shard_dir, "train"))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = PatchCNN(num_classes, options.patch, options.width)
    classifier = PatchClassifier(model, mean, std, options.stride, options.eval_batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, options.steps)
    per_image = max(1, options.batch_size // min(options.images_per_step, len(reader)))
    started = time.perf_counter()
    model.train()
    for step in range(options.steps):
        picked = rng.choice(
            len(reader), size=min(options.images_per_step, len(reader)), replace=False
        )
        windows, labels = [], []
        for i in picked:
            image, mask = reader.decoded(int(i))
            sample = sample_windows(classifier, image, mask, weights, per_image, rng)
            if sample is not None:
                windows.append(sample[0])
                labels.append(sample[1])
        if not windows:
            continue
        loss = F.cross_entropy(model(torch.cat(windows)), torch.cat(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if echo is not None and (step + 1) % max(1, options.steps // 10) == 0:
            echo(
                f"patch_classifier: step {step + 1}/{options.steps} loss {loss.item():.3f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    model.eval()
    return classifier
