"""Auxiliary heads: a second classifier on an intermediate feature map, used only in training.

PSPNet (Zhao et al. 2017) adds one on ResNet's layer3 with loss weight 0.4 ("deep
supervision"): it gives the early layers a short gradient path and helped their ResNet-101 by
about a point of mIoU. torchvision's FCN and DeepLab references put the same head on layer3 at
0.5. The head exists only for the loss: in eval mode a model never computes it, and
:func:`without_aux` removes it before a model is exported, so the served model holds exactly the
weights that were scored.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError


class AuxHead(nn.Module):
    """FCN head (3x3 conv to a quarter of the channels, BN, ReLU, dropout, 1x1 classifier)."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        mid = max(in_channels // 4, 1)
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(mid, num_classes, 1),
        )

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(self.block(features), size=size, mode="bilinear", align_corners=False)


def aux_output(model: nn.Module, out: Tensor, features: Tensor, size: tuple[int, int]):
    """``out`` alone, or ``(out, aux logits)`` while training a model that has an aux head."""
    head = getattr(model, "aux_head", None)
    if head is None or not model.training:
        return out
    return out, head(features, size)


def without_aux(model: nn.Module) -> nn.Module:
    """The model without its auxiliary head (in place): what is exported and served. A model
    under a CRF-as-RNN head (segflow.models.crf_rnn) has it on its network, ``model.net``."""
    if getattr(model, "crf", None) is not None and hasattr(model, "net"):
        without_aux(model.net)
    if getattr(model, "aux_head", None) is not None:
        model.aux_head = None
    return model


def check_aux_weight(model: str, weight: float) -> None:
    if weight < 0:
        raise SegflowError(f"model {model!r}: option aux_weight must be >= 0 (got {weight})")
