"""Losses for dense prediction; every one ignores label 255.

* :func:`median_frequency_weights` is SegNet's class balancing (Eigen & Fergus): a class's
  weight is median(freq) / freq(c), so rare classes (poles, pedestrians) count as much as roads.
* :class:`OhemCrossEntropy` trains on the hard pixels only (online hard example mining).
* :func:`dice_loss` optimises region overlap directly, useful for small structures.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = 255


def median_frequency_weights(
    class_pixels: Sequence[int], image_pixels: Sequence[int] | None = None
) -> Tensor:
    """SegNet's weights: freq(c) = pixels of c / pixels of the images where c appears.

    ``image_pixels[c]`` is the total pixel count of the images that contain class c; when it is
    not known the total labelled pixels are used (the common approximation). A class that never
    appears gets weight 0 rather than infinity: it has nothing to learn from.
    """
    counts = torch.as_tensor(class_pixels, dtype=torch.float64)
    denom = (
        torch.as_tensor(image_pixels, dtype=torch.float64)
        if image_pixels is not None
        else counts.sum().expand_as(counts)
    )
    present = counts > 0
    freq = torch.zeros_like(counts)
    freq[present] = counts[present] / denom[present]
    weights = torch.zeros_like(counts)
    weights[present] = freq[present].median() / freq[present]
    return weights.float()


def cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the pixels whose true-class probability is below ``thresh``.

    At least ``min_kept`` pixels are always kept (the lowest-probability ones), so the loss
    never collapses to nothing on an easy batch. Same definition as PSPNet/mmsegmentation.
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 100_000, weight: Tensor | None = None):
        super().__init__()
        self.thresh, self.min_kept = thresh, min_kept
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        pixel_loss = F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=IGNORE_INDEX, reduction="none"
        )
        valid = target != IGNORE_INDEX
        if not valid.any():
            return logits.sum() * 0.0
        with torch.no_grad():
            prob = F.softmax(logits, dim=1)
            safe = target.clone()
            safe[~valid] = 0
            true_prob = prob.gather(1, safe.unsqueeze(1)).squeeze(1)
            true_prob[~valid] = 1.0
            kept = min(self.min_kept, int(valid.sum()))
            thresh = self.thresh
            if kept > 0:
                kth = true_prob.flatten().kthvalue(kept).values.item()
                thresh = max(thresh, kth)
            hard = valid & (true_prob <= thresh)
        return pixel_loss[hard].mean()


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """1 - mean soft Dice over the classes present in the batch; ignored pixels do not count."""
    num_classes = logits.shape[1]
    valid = (target != IGNORE_INDEX).unsqueeze(1)
    prob = F.softmax(logits, dim=1) * valid
    onehot = F.one_hot(target.clamp(max=num_classes - 1), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.to(prob.dtype) * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    union = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (union + eps)
    present = onehot.sum(dims) > 0
    return 1.0 - (dice[present].mean() if present.any() else dice.mean())


class SegmentationLoss(nn.Module):
    """The training loss named in params: ``ce`` | ``ohem``, plus ``dice_weight`` x Dice."""

    def __init__(
        self,
        kind: str = "ce",
        weight: Tensor | None = None,
        dice_weight: float = 0.0,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100_000,
    ):
        super().__init__()
        self.kind, self.dice_weight = kind, dice_weight
        self.register_buffer("weight", weight if weight is not None else None)
        self.ohem = OhemCrossEntropy(ohem_thresh, ohem_min_kept, weight) if kind == "ohem" else None

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()  # losses in fp32 even under bf16 autocast
        if self.ohem is not None:
            loss = self.ohem(logits, target)
        else:
            loss = cross_entropy(logits, target, self.weight)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * dice_loss(logits, target)
        return loss
