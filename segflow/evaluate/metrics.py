"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Accumulating counts (not per-image scores) is how the literature reports PA, mIoU and FWIoU:
an image with few pixels of a class weighs in proportion to those pixels. Label 255 is excluded.

The rule for a class absent from both ground truth and prediction: its IoU (and accuracy) is
undefined (NaN) and it is left out of the means, so a test split without bicyclists neither
rewards nor punishes a model for them. A class present in the ground truth but never predicted
has IoU 0; a class predicted but absent from the ground truth also has IoU 0.

Dice and F-score (mmsegmentation's ``mDice``, ``mFscore``): per class ``2 TP / (GT + predicted)``
and the harmonic mean of precision ``TP / predicted`` and recall ``TP / GT``. Over pixel counts
the F1 score *is* the Dice coefficient (``2PR / (P + R)`` simplifies to the same fraction), so
the two columns agree; both are written because users look for either name. Dice is undefined
exactly where IoU is; precision is undefined for a class never predicted, recall for a class
absent from the ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from segflow.data.datasets.base import IGNORE_INDEX


class ConfusionMatrix:
    """``mat[t, p]`` counts pixels of true class t predicted as p (int64, on the inputs' device)."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, target: Tensor, pred: Tensor) -> None:
        """Add a batch; ``target``/``pred`` are integer label maps of the same shape."""
        target = target.flatten()
        pred = pred.flatten().to(target.device)
        keep = (target != IGNORE_INDEX) & (target >= 0) & (target < self.num_classes)
        idx = target[keep].long() * self.num_classes + pred[keep].long()
        counts = torch.bincount(idx, minlength=self.num_classes**2)
        self.mat += counts.reshape(self.num_classes, self.num_classes).to(self.mat.device)

    def reset(self) -> None:
        self.mat.zero_()

    def all_reduce(self) -> None:
        """Sum the matrix over the ranks of a torch.distributed group (DDP validation)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self) -> dict:
        return metrics_from_confusion(self.mat.cpu().numpy())


def metrics_from_confusion(mat: np.ndarray) -> dict:
    """PA, MPA, per-class IoU, mIoU and FWIoU of a confusion matrix (rows = truth).

    Also ``class_accuracy`` (per-class recall, the terms MPA averages) and ``pixel_share`` (each
    class's share of the scored ground-truth pixels, the FWIoU weights), which reports print.
    Per-class lists hold NaN where the value is undefined (see the module rule).
    """
    mat = mat.astype(np.float64)
    tp = np.diag(mat)
    gt = mat.sum(axis=1)
    pred = mat.sum(axis=0)
    total = mat.sum()
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(gt > 0, tp / gt, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2 * tp / (gt + pred), np.nan)
        precision = np.where(pred > 0, tp / pred, np.nan)
    freq = gt / total if total > 0 else np.zeros_like(gt)
    seen = ~np.isnan(iou)
    return {
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": float(np.nanmean(acc)) if (gt > 0).any() else float("nan"),
        "iou": [float(x) for x in iou],
        "class_accuracy": [float(x) for x in acc],
        "pixel_share": [float(x) for x in freq],
        "miou": float(np.nanmean(iou)) if seen.any() else float("nan"),
        "fwiou": float((freq[seen] * iou[seen]).sum()) if total > 0 else float("nan"),
        "dice": [float(x) for x in dice],
        "precision": [float(x) for x in precision],
        "mdice": _nanmean(dice),
        "mfscore": _nanmean(dice),  # F1 over pixel counts = Dice (module doc)
        "mprecision": _nanmean(precision),
        "mrecall": _nanmean(acc),
    }


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")


def format_table(metrics: dict, class_names: list[str]) -> str:
    """Plain-text per-class table (IoU, accuracy, pixel share) and the summary, for logs."""
    width = max([len("class"), *(len(n) for n in class_names)])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}  {'share':>7}"]
    per_class = (metrics["iou"], metrics["class_accuracy"], metrics["pixel_share"])
    rows = zip(class_names, *per_class, strict=True)
    for name, iou, acc, share in rows:
        lines.append(f"{name:<{width}}  {_pct(iou):>7}  {_pct(acc):>7}  {_pct(share):>7}")
    lines.append(
        f"PA {_pct(metrics['pixel_accuracy'])}  MPA {_pct(metrics['mean_accuracy'])}  "
        f"mIoU {_pct(metrics['miou'])}  FWIoU {_pct(metrics['fwiou'])}"
    )
    return "\n".join(lines)


def _pct(x: float) -> str:
    """A fraction as a percentage with two decimals; NaN (undefined) as a dash."""
    return "-" if x != x else f"{100 * x:.2f}"
