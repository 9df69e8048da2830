"""Losses for dense prediction; every one ignores label 255.

* :func:`median_frequency_weights` is SegNet's class balancing (Eigen & Fergus): a class's
  weight is median(freq) / freq(c), so rare classes (poles, pedestrians) count as much as roads.
* :class:`OhemCrossEntropy` trains on the hard pixels only (online hard example mining).
* :func:`dice_loss` optimises region overlap directly, useful for small structures.
* :func:`frequency_weights` are gentler balancings that do not wreck the large classes:
  ENet's inverse log (1 / ln(1.02 + freq)) or 1 / sqrt(freq), normalised to mean 1, clipped.
* :func:`focal_loss` (Lin et al. 2017) scales each pixel's CE by (1 - p_true)^gamma, so the
  many easy road pixels stop dominating the gradient.
* :func:`lovasz_softmax` (Berman et al. 2018) is a convex surrogate of 1 - IoU per class: it
  optimises the metric the field reports instead of per-pixel accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.data.datasets.base import IGNORE_INDEX


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


def frequency_weights(class_pixels: Sequence[int], kind: str, max_weight: float = 0.0) -> Tensor:
    """``inverse_log`` (ENet: 1 / ln(1.02 + freq)) or ``sqrt`` (1 / sqrt(freq)) class weights.

    freq is a class's share of the labelled pixels. The weights are scaled to mean 1 over the
    classes present, so the loss keeps its size and the LR its meaning, then clipped at
    ``max_weight`` (0: no clip) so a class seen in a handful of pixels cannot dominate a batch.
    Absent classes get 0, as in :func:`median_frequency_weights`.
    """
    counts = torch.as_tensor(class_pixels, dtype=torch.float64)
    present = counts > 0
    weights = torch.zeros_like(counts)
    if not present.any():
        return weights.float()
    freq = counts[present] / counts.sum()
    raw = 1.0 / torch.log(1.02 + freq) if kind == "inverse_log" else 1.0 / freq.sqrt()
    weights[present] = raw / raw.mean()
    return clip_weights(weights, max_weight).float()


def clip_weights(weights: Tensor, max_weight: float) -> Tensor:
    return weights.clamp(max=max_weight) if max_weight > 0 else weights


def focal_loss(
    logits: Tensor, target: Tensor, gamma: float = 2.0, weight: Tensor | None = None
) -> Tensor:
    """Mean over labelled pixels of (1 - p_true)^gamma x CE; gamma 0 is plain cross-entropy."""
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="none")
    valid = target != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    # p_true from the unweighted CE, so class weights scale the loss but not the focusing.
    plain = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    p_true = torch.exp(-plain)
    return ((1.0 - p_true) ** gamma * ce)[valid].mean()


def lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Alg. 1)."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(logits: Tensor, target: Tensor) -> Tensor:
    """Lovasz-softmax over the batch's pixels, averaged over the classes present in ``target``.

    For each class c the errors |[y = c] - p_c| are sorted in decreasing order and dotted with
    the Lovasz gradient of the Jaccard index: the tight convex extension of 1 - IoU_c (Berman
    et al. 2018, "per_image=False, classes='present'", the setting of their Pascal VOC runs).
    """
    num_classes = logits.shape[1]
    prob = F.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = target.reshape(-1)
    valid = labels != IGNORE_INDEX
    prob, labels = prob[valid], labels[valid]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    losses = []
    for c in range(num_classes):
        fg = (labels == c).to(prob.dtype)
        if fg.sum() == 0:
            continue
        errors = (fg - prob[:, c]).abs()
        errors_sorted, order = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, lovasz_grad(fg[order])))
    return torch.stack(losses).mean()


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
    """The training loss named in params: ``ce`` | ``ohem`` | ``focal`` | ``lovasz``, plus
    ``dice_weight`` x Dice.

    A model with an auxiliary head returns ``(out, aux)`` in training; the loss is then
    loss(out) + ``aux_weight`` x loss(aux), the weight being the model's own (PSPNet: 0.4).
    """

    def __init__(
        self,
        kind: str = "ce",
        weight: Tensor | None = None,
        dice_weight: float = 0.0,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100_000,
        focal_gamma: float = 2.0,
        aux_weight: float = 0.0,
    ):
        super().__init__()
        self.kind, self.dice_weight = kind, dice_weight
        self.focal_gamma, self.aux_weight = focal_gamma, aux_weight
        self.register_buffer("weight", weight if weight is not None else None)
        self.ohem = OhemCrossEntropy(ohem_thresh, ohem_min_kept, weight) if kind == "ohem" else None

    def forward(self, logits: Tensor | tuple[Tensor, Tensor], target: Tensor) -> Tensor:
        if isinstance(logits, tuple):
            out, aux = logits
            return self.single(out, target) + self.aux_weight * self.single(aux, target)
        return self.single(logits, target)

    def single(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()  # losses in fp32 even under bf16 autocast
        if self.ohem is not None:
            loss = self.ohem(logits, target)
        elif self.kind == "focal":
            loss = focal_loss(logits, target, self.focal_gamma, self.weight)
        elif self.kind == "lovasz":
            loss = lovasz_softmax(logits, target)
        else:
            loss = cross_entropy(logits, target, self.weight)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * dice_loss(logits, target)
        return loss
