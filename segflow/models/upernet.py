"""UPerNet (Xiao et al., ECCV 2018): PSPNet's pyramid pooling on the last stage, FPN over all.

PSPNet gets context from pyramid pooling but keeps one feature map, so it needs a dilated
trunk (output stride 8) for detail. UPerNet leaves the ResNet strided (output stride 32) and
recovers detail the FPN way: the pyramid pooling module (PSPNet's :class:`PyramidPooling`,
bins 1, 2, 3, 6, each to 512 channels, then a 3x3 conv to 512) tops a feature pyramid; a
top-down path adds each upsampled level to a 1x1 lateral conv of the stage below (s16, s8, s4),
a 3x3 conv smooths each sum, and the four levels, upsampled to 1/4 of the input, are
concatenated and fused by a 3x3 conv before the 1x1 classifier. Logits are upsampled
bilinearly to the input size.

Widths are the reference implementations' (CSAILVision's ``UPerNet`` with ``fpn_dim=512``,
mmsegmentation's ``UPerHead`` with ``channels=512``): every conv of the head has 512 channels,
with BN and ReLU. The paper gives no parameter count; :mod:`segflow.models.summary` holds the
count of mmsegmentation's head on ResNet-50 (no auxiliary head, 150 classes), layer by layer:
the ResNet-50 trunk 23.51 M; the pyramid pooling 4 x 2048 x 512 = 4.19 M and its 3x3 conv
(2048 + 4 x 512 -> 512) 18.87 M; the laterals (256 + 512 + 1024) x 512 = 0.92 M; three 3x3
512 -> 512 smoothing convs 7.08 M; the 3x3 fusion 2048 -> 512 9.44 M; the classifier 0.08 M;
BN 0.01 M: 64.1 M. This build has 64.10 M (its 1x1-bin branch has a bias instead of BN).
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
from segflow.models.deeplab import conv_bn_relu
from segflow.models.pspnet import PyramidPooling, check_bins
from segflow.models.registry import check_options, register_model

#: The backbone levels the FPN's lateral convs read, finest first; the PPM reads "s32".
LATERAL_LEVELS = ("s4", "s8", "s16")


def _resize(x: Tensor, size: tuple[int, ...]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UPerNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        channels: int = 512,
        dropout: float = 0.1,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        c = backbone.channels
        # As in PSPNet and mmsegmentation's UPerNet configs: an FCN head on layer3, train only.
        self.aux_weight = aux_weight
        self.aux_head = AuxHead(c["s16"], num_classes) if aux_weight > 0 else None
        self.ppm = PyramidPooling(c["s32"], bins, channels)
        self.ppm_out = conv_bn_relu(self.ppm.out_channels, channels, 3)
        self.lateral = nn.ModuleList(conv_bn_relu(c[k], channels, 1) for k in LATERAL_LEVELS)
        self.smooth = nn.ModuleList(conv_bn_relu(channels, channels, 3) for _ in LATERAL_LEVELS)
        self.fuse = conv_bn_relu(channels * (len(LATERAL_LEVELS) + 1), channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def decode(self, feats: dict[str, Tensor]) -> Tensor:
        """Class scores at 1/4 of the input from the backbone's feature dict."""
        top = self.ppm_out(self.ppm(feats["s32"]))
        levels = [top]
        steps = zip(LATERAL_LEVELS, self.lateral, self.smooth, strict=True)
        for key, lateral, smooth in reversed(list(steps)):  # top-down: s16, s8, s4
            top = lateral(feats[key]) + _resize(top, tuple(feats[key].shape[-2:]))
            levels.insert(0, smooth(top))
        size = tuple(levels[0].shape[-2:])
        fused = self.fuse(torch.cat([levels[0], *(_resize(f, size) for f in levels[1:])], 1))
        return self.classifier(self.dropout(fused))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        feats = self.backbone(x)
        size = tuple(x.shape[-2:])
        return aux_output(self, _resize(self.decode(feats), size), feats["s16"], size)


@register_model("upernet")
def upernet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    bins: Sequence[int] = (1, 2, 3, 6),
    channels: int = 512,
    dropout: float = 0.1,
    aux_weight: float = 0.0,
    backbone_options: dict | None = None,
    **unknown,
) -> UPerNet:
    """UPerNet; defaults: ResNet-50 at output stride 32, bins (1, 2, 3, 6), 512 channels.

    ``aux_weight`` > 0 adds an auxiliary head on layer3 with that loss weight (0.4 in
    mmsegmentation's configs), trained only. ``backbone_options`` go to the backbone
    constructor (e.g. ``{"width": 16}``).
    """
    check_options("upernet", upernet, unknown)
    bins = check_bins("upernet", bins)
    if channels < 1:
        raise SegflowError(f"model 'upernet': option channels must be > 0 (got {channels})")
    if not 0 <= dropout < 1:
        raise SegflowError(f"model 'upernet': option dropout must be in [0, 1) (got {dropout})")
    check_aux_weight("upernet", aux_weight)
    body = build_backbone(
        backbone or "resnet50", output_stride or 32, pretrained, **(backbone_options or {})
    )
    return UPerNet(body, num_classes, bins, channels, dropout, aux_weight)
