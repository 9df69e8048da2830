"""PSPNet (Zhao et al. 2017): a pyramid pooling module on a dilated ResNet.

The last backbone features are average-pooled to 1x1, 2x2, 3x3 and 6x6 grids; each grid goes
through a 1x1 conv to a quarter of the channels, is upsampled back and concatenated with the
features, so every position sees context at four scales. A 3x3 conv (512) + BN + ReLU, dropout
and a 1x1 classifier follow; logits are upsampled bilinearly to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.aux import AuxHead, aux_output, check_aux_weight
from segflow.models.backbones import build_backbone
from segflow.models.registry import check_options, register_model


class PyramidPooling(nn.Module):
    """Pool to each bin size, 1x1 conv to ``out`` channels, upsample, concat with the input.

    ``out`` defaults to PSPNet's ``inp // len(bins)``; UPerNet fixes it (512 published).

    The 1x1-bin branch has no BatchNorm: it holds one value per channel per image, so BN's
    training statistics would come from the batch alone (undefined at batch size 1, noise at
    the small batches segmentation trains with). It uses a conv bias + ReLU instead; the larger
    bins keep the paper's BN, which sees ``bin * bin`` values per image.
    """

    def __init__(self, inp: int, bins: Sequence[int], out: int | None = None) -> None:
        super().__init__()
        out = out or inp // len(bins)
        self.stages = nn.ModuleList()
        for b in bins:
            if b == 1:
                layers = [nn.Conv2d(inp, out, 1), nn.ReLU(inplace=True)]
            else:
                layers = [nn.Conv2d(inp, out, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
            self.stages.append(nn.Sequential(nn.AdaptiveAvgPool2d(b), *layers))
        self.out_channels = inp + out * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


def check_bins(model: str, bins: Sequence[int]) -> tuple[int, ...]:
    """``bins`` as a tuple; none, or a size below 1, is a user error naming the model."""
    bins = tuple(bins)
    if not bins or any(b < 1 for b in bins):
        raise SegflowError(f"model {model!r}: option bins must be positive sizes (got {bins})")
    return bins


class PSPNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        head_channels: int = 512,
        dropout: float = 0.1,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # The paper's deep supervision: a head on layer3 (the backbone's s16 output), weight 0.4.
        self.aux_weight = aux_weight
        self.aux_head = AuxHead(backbone.channels["s16"], num_classes) if aux_weight > 0 else None
        self.ppm = PyramidPooling(backbone.channels["s32"], bins)
        self.head = nn.Sequential(
            nn.Conv2d(self.ppm.out_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.backbone(x)
        scores = self.classifier(self.head(self.ppm(feats["s32"])))
        size = tuple(x.shape[-2:])
        out = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        return aux_output(self, out, feats["s16"], size)


@register_model("pspnet")
def pspnet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    bins: Sequence[int] = (1, 2, 3, 6),
    head_channels: int = 512,
    dropout: float = 0.1,
    aux_weight: float = 0.0,
    backbone_options: dict | None = None,
    **unknown,
) -> PSPNet:
    """PSPNet; defaults: ResNet-50 at output stride 8, bins (1, 2, 3, 6), 512 head channels.

    ``aux_weight`` > 0 adds the paper's auxiliary head on layer3 with that loss weight (0.4 in
    the paper), trained only; 0 (default) builds none.

    ``backbone_options`` go to the backbone constructor (e.g. ``{"width": 16}`` for VGG).
    """
    check_options("pspnet", pspnet, unknown)
    bins = check_bins("pspnet", bins)
    if head_channels < 1:
        raise SegflowError(
            f"model 'pspnet': option head_channels must be > 0 (got {head_channels})"
        )
    if not 0 <= dropout < 1:
        raise SegflowError(f"model 'pspnet': option dropout must be in [0, 1) (got {dropout})")
    check_aux_weight("pspnet", aux_weight)
    options = backbone_options or {}
    body = build_backbone(backbone or "resnet50", output_stride or 8, pretrained, **options)
    return PSPNet(body, num_classes, bins, head_channels, dropout, aux_weight)
