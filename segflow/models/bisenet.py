"""BiSeNet V2 (Yu et al. 2021): real-time segmentation from two branches, no ImageNet needed.

A wide, shallow *detail* branch keeps spatial detail at 1/8 of the input; a narrow, deep
*semantic* branch (a stem, gather-and-expand layers with depth-wise convs, a global context
embedding) reaches 1/32 for context. The bilateral guided aggregation layer lets each branch
gate the other with a sigmoid at both resolutions, then a small head classifies at 1/8 and the
logits are upsampled bilinearly. About 3.4 M parameters at the published width: the zoo's
fast network for small compute (CPU training, edge inference).

``width`` is the detail branch's first-stage channel count (64 published); every other width
scales with it (semantic branch 16-32-64-128 at 64). Spatial sizes are matched by
interpolation, so any input size works. ``aux_weight`` > 0 adds one booster head (the paper
has four, weight 1) on the semantic branch's 1/16 stage, trained only.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.aux import AuxHead, aux_output, check_aux_weight
from segflow.models.registry import check_options, register_model


def conv_bn(inp: int, out: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [
        nn.Conv2d(inp, out, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def resize(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class DetailBranch(nn.Module):
    """Three stages of plain 3x3 convs (the first of each strided): 1/8, ``2 * w`` channels."""

    def __init__(self, w: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv_bn(3, w, stride=2), conv_bn(w, w),
            conv_bn(w, w, stride=2), conv_bn(w, w), conv_bn(w, w),
            conv_bn(w, 2 * w, stride=2), conv_bn(2 * w, 2 * w), conv_bn(2 * w, 2 * w),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class StemBlock(nn.Module):
    """1/4 in two steps; a strided conv path and a max-pool path, concatenated and fused."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.first = conv_bn(3, out, stride=2)
        half = out // 2
        self.conv_path = nn.Sequential(conv_bn(out, half, k=1), conv_bn(half, out, stride=2))
        self.pool_path = nn.MaxPool2d(3, 2, 1)
        self.fuse = conv_bn(2 * out, out)

    def forward(self, x: Tensor) -> Tensor:
        x = self.first(x)
        return self.fuse(torch.cat([self.conv_path(x), self.pool_path(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-expand layer: 3x3 conv, depth-wise 3x3 expanding 6x, 1x1 projection, residual.

    The strided version has a second depth-wise conv and a depth-wise + 1x1 shortcut.
    """

    def __init__(self, inp: int, out: int, stride: int = 1, expand: int = 6) -> None:
        super().__init__()
        mid = inp * expand
        layers = [conv_bn(inp, inp), conv_bn(inp, mid, stride=stride, groups=inp, relu=False)]
        if stride == 2:
            layers.append(conv_bn(mid, mid, groups=mid, relu=False))
        layers.append(conv_bn(mid, out, k=1, relu=False))
        self.body = nn.Sequential(*layers)
        self.shortcut = (
            nn.Sequential(
                conv_bn(inp, inp, stride=stride, groups=inp, relu=False),
                conv_bn(inp, out, k=1, relu=False),
            )
            if stride != 1 or inp != out
            else nn.Identity()
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pooling (BN, 1x1 conv) added back to every position, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(channels))
        # No BatchNorm after the pooled 1x1 conv: one value per image (see PyramidPooling).
        self.squeeze = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True))
        self.out = conv_bn(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(x + self.squeeze(self.pool(x)))


class SemanticBranch(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        c = [w // 4, w // 2, w, 2 * w]
        self.stem = StemBlock(c[0])
        self.s3 = nn.Sequential(GatherExpand(c[0], c[1], 2), GatherExpand(c[1], c[1]))
        self.s4 = nn.Sequential(GatherExpand(c[1], c[2], 2), GatherExpand(c[2], c[2]))
        self.s5 = nn.Sequential(
            GatherExpand(c[2], c[3], 2), *(GatherExpand(c[3], c[3]) for _ in range(3))
        )
        self.context = ContextEmbedding(c[3])
        self.channels = {"s16": c[2], "s32": c[3]}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        s16 = self.s4(self.s3(self.stem(x)))
        return {"s16": s16, "s32": self.context(self.s5(s16))}


class BilateralGuidedAggregation(nn.Module):
    """Each branch gates the other: detail x sigmoid(semantic) at 1/8, and the reverse at 1/32."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.detail_keep = nn.Sequential(conv_bn(c, c, groups=c, relu=False), nn.Conv2d(c, c, 1))
        self.detail_down = nn.Sequential(conv_bn(c, c, stride=2, relu=False), nn.AvgPool2d(3, 2, 1))
        self.semantic_up = conv_bn(c, c, relu=False)
        self.semantic_keep = nn.Sequential(conv_bn(c, c, groups=c, relu=False), nn.Conv2d(c, c, 1))
        self.fuse = conv_bn(c, c)

    def forward(self, detail: Tensor, semantic: Tensor) -> Tensor:
        low = self.detail_down(detail)
        high = self.detail_keep(detail) * torch.sigmoid(resize(self.semantic_up(semantic), detail))
        low = low * torch.sigmoid(resize(self.semantic_keep(semantic), low))
        return self.fuse(high + resize(low, high))


class BiSeNetV2(nn.Module):
    def __init__(
        self,
        num_classes: int,
        width: int = 64,
        head_channels: int = 1024,
        dropout: float = 0.1,
        aux_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.detail = DetailBranch(width)
        self.semantic = SemanticBranch(width)
        self.aggregate = BilateralGuidedAggregation(2 * width)
        self.head = nn.Sequential(
            conv_bn(2 * width, head_channels),
            nn.Dropout(dropout),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        self.aux_weight = aux_weight
        aux_in = self.semantic.channels["s16"]
        self.aux_head = AuxHead(aux_in, num_classes) if aux_weight > 0 else None

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        semantic = self.semantic(x)
        scores = self.head(self.aggregate(self.detail(x), semantic["s32"]))
        size = tuple(x.shape[-2:])
        out = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        return aux_output(self, out, semantic["s16"], size)


@register_model("bisenetv2")
def bisenetv2(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    width: int = 64,
    head_channels: int = 1024,
    dropout: float = 0.1,
    aux_weight: float = 0.0,
    **unknown,
) -> BiSeNetV2:
    """BiSeNet V2 at the published widths (detail 64-64-128, semantic 16-32-64-128, head 1024).

    It has its own two branches and trains from scratch: no ``backbone`` or ``pretrained``;
    it classifies at 1/8 (``output_stride`` 8 or null).
    """
    check_options("bisenetv2", bisenetv2, unknown)
    if backbone is not None or pretrained is not None:
        raise SegflowError("model 'bisenetv2' has its own branches: no backbone or pretrained")
    if output_stride not in (None, 8):
        raise SegflowError(f"model 'bisenetv2' classifies at output_stride 8 (got {output_stride})")
    if width < 4 or width % 4:
        raise SegflowError(f"model 'bisenetv2': option width must be a multiple of 4 (got {width})")
    if head_channels < 1:
        raise SegflowError(
            f"model 'bisenetv2': option head_channels must be > 0 (got {head_channels})"
        )
    if not 0 <= dropout < 1:
        raise SegflowError(f"model 'bisenetv2': option dropout must be in [0, 1) (got {dropout})")
    check_aux_weight("bisenetv2", aux_weight)
    return BiSeNetV2(num_classes, width, head_channels, dropout, aux_weight)
