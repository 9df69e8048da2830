"""DeepLab v2, LargeFOV, v3 and v3+ heads on any backbone of the contract.

* ``deeplabv2`` (Chen et al. 2017, ResNet-101 variant): ASPP-L, four parallel 3x3 atrous convs
  (rates 6, 12, 18, 24 at output stride 8) that each predict class scores; the scores are summed.
* ``deeplab_largefov`` (DeepLab v1 LargeFOV, Chen et al. 2015): VGG-16 at output stride 8, fc6 as
  a 3x3 conv at dilation 12 with 1024 channels, fc7 as 1x1 with 1024, a 1x1 score layer.
* ``deeplabv3`` (Chen et al. 2017b): ASPP of a 1x1 conv, three 3x3 atrous convs (6, 12, 18 at
  output stride 16) and image-level pooling, concatenated and fused by a 1x1; then 3x3 + classifier.
* ``deeplabv3plus`` (Chen et al. 2018): the v3 encoder plus a decoder that joins the stride-4
  features (reduced to 48 channels) with the upsampled ASPP output.

Every model returns logits N x C x H x W at the input size (bilinear, ``align_corners=False``).
Atrous rates are given for a reference output stride and scaled with it, so the field of view in
image pixels stays the same when ``output_stride`` changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.backbones import build_backbone
from segflow.models.registry import check_options, register_model


def scaled_rates(
    rates: Sequence[int], reference_stride: int, output_stride: int
) -> tuple[int, ...]:
    """Scale atrous rates set for ``reference_stride`` to ``output_stride`` (never below 1)."""
    return tuple(max(1, r * reference_stride // output_stride) for r in rates)


def conv_bn_relu(inp: int, out: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = (kernel - 1) // 2 * dilation
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


def _positive(model: str, **values: int | float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise SegflowError(f"model {model!r}: option {name} must be > 0 (got {v})")


def _dropout(model: str, p: float) -> float:
    if not 0 <= p < 1:
        raise SegflowError(f"model {model!r}: option dropout must be in [0, 1) (got {p})")
    return p


# --------------------------------------------------------------------------- DeepLab v2


class DeepLabV2(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.backbone = backbone
        c = backbone.channels["s32"]
        self.aspp = nn.ModuleList(
            nn.Conv2d(c, num_classes, 3, padding=r, dilation=r) for r in rates
        )
        for conv in self.aspp:
            # The reference Caffe model starts the score layers at N(0, 0.01), zero bias.
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(x)["s32"]
        scores = torch.stack([branch(f) for branch in self.aspp]).sum(0)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("deeplabv2")
def deeplabv2(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    rates: Sequence[int] | None = None,
    backbone_options: dict | None = None,
    **unknown,
) -> DeepLabV2:
    """DeepLab v2 ASPP-L; defaults: ResNet-101 at output stride 8, rates (6, 12, 18, 24).

    ``backbone_options`` go to the backbone constructor (e.g. ``{"width": 16}`` for VGG).
    """
    check_options("deeplabv2", deeplabv2, unknown)
    output_stride = output_stride or 8
    rates = tuple(rates) if rates else scaled_rates((6, 12, 18, 24), 8, output_stride)
    _positive("deeplabv2", **{f"rates[{i}]": r for i, r in enumerate(rates)})
    body = build_backbone(
        backbone or "resnet101", output_stride, pretrained, **(backbone_options or {})
    )
    return DeepLabV2(body, num_classes, rates)


# --------------------------------------------------------------------------- LargeFOV


class DeepLabLargeFOV(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        fc_channels: int = 1024,
        dilation: int = 12,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        c = backbone.channels["s32"]
        # fc6/fc7 as in the DeepLab-LargeFOV prototxt: ReLU + dropout after each.
        self.fc6 = nn.Conv2d(c, fc_channels, 3, padding=dilation, dilation=dilation)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(dropout)
        self.score = nn.Conv2d(fc_channels, num_classes, 1)
        nn.init.normal_(self.score.weight, std=0.01)
        nn.init.zeros_(self.score.bias)

    def forward(self, x: Tensor) -> Tensor:
        f = self.backbone(x)["s32"]
        f = self.drop(self.relu(self.fc6(f)))
        f = self.drop(self.relu(self.fc7(f)))
        scores = self.score(f)
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("deeplab_largefov")
def deeplab_largefov(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    fc_channels: int = 1024,
    dilation: int | None = None,
    dropout: float = 0.5,
    backbone_options: dict | None = None,
    **unknown,
) -> DeepLabLargeFOV:
    """DeepLab-LargeFOV; defaults: VGG-16 at output stride 8, fc6 dilation 12, 1024 channels.

    ``backbone_options`` go to the backbone constructor (e.g. ``{"width": 16}`` for VGG).
    """
    check_options("deeplab_largefov", deeplab_largefov, unknown)
    output_stride = output_stride or 8
    if dilation is None:
        dilation = scaled_rates((12,), 8, output_stride)[0]
    _positive("deeplab_largefov", fc_channels=fc_channels, dilation=dilation)
    dropout = _dropout("deeplab_largefov", dropout)
    body = build_backbone(
        backbone or "vgg16", output_stride, pretrained, **(backbone_options or {})
    )
    return DeepLabLargeFOV(body, num_classes, fc_channels, dilation, dropout)


# --------------------------------------------------------------------------- DeepLab v3


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of DeepLab v3: 1x1, three atrous 3x3, image pooling.

    The image-pooling branch has no BatchNorm: after global pooling each channel holds one value
    per image, so BN's training statistics come from the batch alone; at batch size 1 that is a
    single value and BN refuses to train (torchvision's ASPP fails there), and at the small
    per-GPU batches of segmentation training it is mostly noise. A 1x1 conv with bias + ReLU
    keeps the branch well defined for any batch; the fusing 1x1 conv + BN after the
    concatenation normalises its contribution together with the other branches.
    """

    def __init__(self, inp: int, out: int, rates: Sequence[int], dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(inp, out, 1)] + [conv_bn_relu(inp, out, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(inp, out, 1), nn.ReLU(inplace=True)
        )
        self.project = nn.Sequential(
            conv_bn_relu(out * (len(rates) + 2), out, 1), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        # Upsampling a 1x1 map bilinearly is a broadcast: every position gets the image vector.
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        aspp_channels: int,
        rates: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.channels["s32"], aspp_channels, rates, dropout)
        self.head = conv_bn_relu(aspp_channels, aspp_channels, 3)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        f = self.aspp(self.backbone(x)["s32"])
        scores = self.classifier(self.head(f))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3Plus(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        aspp_channels: int,
        rates: Sequence[int],
        dropout: float,
        low_level_channels: int = 48,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aspp = ASPP(backbone.channels["s32"], aspp_channels, rates, dropout)
        # Few low-level channels so the encoder's semantics are not drowned out (paper: 48).
        self.reduce = conv_bn_relu(backbone.channels["s4"], low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, aspp_channels, 3),
            conv_bn_relu(aspp_channels, aspp_channels, 3),
        )
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        low = self.reduce(feats["s4"])
        high = self.aspp(feats["s32"])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        scores = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        # x4 from stride 4, straight to the exact input size (odd sizes are not multiples of 4).
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _v3_parts(
    model: str,
    backbone: str | None,
    output_stride: int | None,
    pretrained: str | Path | None,
    aspp_channels: int,
    rates: Sequence[int] | None,
    dropout: float,
    backbone_options: dict | None,
) -> tuple[nn.Module, tuple[int, ...], float]:
    output_stride = output_stride or 16
    rates = tuple(rates) if rates else scaled_rates((6, 12, 18), 16, output_stride)
    _positive(model, aspp_channels=aspp_channels, **{f"rates[{i}]": r for i, r in enumerate(rates)})
    dropout = _dropout(model, dropout)
    options = backbone_options or {}
    body = build_backbone(backbone or "resnet50", output_stride, pretrained, **options)
    return body, rates, dropout


@register_model("deeplabv3")
def deeplabv3(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    aspp_channels: int = 256,
    rates: Sequence[int] | None = None,
    dropout: float = 0.1,
    backbone_options: dict | None = None,
    **unknown,
) -> DeepLabV3:
    """DeepLab v3; defaults: ResNet-50 at output stride 16, rates (6, 12, 18), 256 channels."""
    check_options("deeplabv3", deeplabv3, unknown)
    body, rates, dropout = _v3_parts(
        "deeplabv3",
        backbone,
        output_stride,
        pretrained,
        aspp_channels,
        rates,
        dropout,
        backbone_options,
    )
    return DeepLabV3(body, num_classes, aspp_channels, rates, dropout)


@register_model("deeplabv3plus")
def deeplabv3plus(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    aspp_channels: int = 256,
    rates: Sequence[int] | None = None,
    dropout: float = 0.1,
    low_level_channels: int = 48,
    backbone_options: dict | None = None,
    **unknown,
) -> DeepLabV3Plus:
    """DeepLab v3+; defaults as :func:`deeplabv3` plus a 48-channel stride-4 skip."""
    check_options("deeplabv3plus", deeplabv3plus, unknown)
    body, rates, dropout = _v3_parts(
        "deeplabv3plus",
        backbone,
        output_stride,
        pretrained,
        aspp_channels,
        rates,
        dropout,
        backbone_options,
    )
    _positive("deeplabv3plus", low_level_channels=low_level_channels)
    return DeepLabV3Plus(body, num_classes, aspp_channels, rates, dropout, low_level_channels)
