"""FRRN (Pohlen, Hermans, Mathias and Leibe, CVPR 2017): full-resolution residual networks.

Two streams run side by side. The *residual stream* stays at full image resolution, 32
channels, and is only ever added to; the *pooling stream* goes down by max pooling and back up
by unpooling, like any encoder-decoder, and carries the recognition. They meet in every
*full-resolution residual unit* (FRRU, Fig. 3 of the paper): the residual stream is max-pooled
to the pooling stream's scale and concatenated with it, two 3x3 conv + BN + ReLU layers make
the new pooling-stream map, and a 1x1 conv of that map, unpooled back to full resolution, is
added to the residual stream. Boundaries stay sharp because the full-resolution information
never has to survive a pooling, and gradients reach the first layers along the residual stream.

The layout is Table 1 of the paper. A 5x5 conv (48 channels) and three residual units (RU: two
3x3 conv + BN, plus the input) start; a 1x1 conv splits off the residual stream. Encoder: three
FRRUs at 1/2 with 96 channels, four at 1/4 with 192, two at 1/8 with 384 and two at 1/16 with
384 (FRRN-B: two more at 1/32 with 384). Decoder: two FRRUs at 1/8 with 192 (FRRN-B first two
at 1/16 with 192), two at 1/4 with 192 and two at 1/2 with 96. Then the streams are
concatenated, a 1x1 conv brings them to 48 channels, three RUs and a 1x1 classifier follow.
Unpooling (of the pooling stream, and of each FRRU's residual update) copies each value into its
block: nearest neighbour, the simplest reading of the paper's "unpooling".

Published sizes (the parameter counts the paper lists with its Cityscapes results, 19 classes):
**FRRN-A 17.7 M, FRRN-B 24.8 M parameters**. Built here with 19 classes: 17.71 M and 24.72 M.

``variant`` is "A" or "B" (default: B, the paper's better one). ``width`` is the first
layer's channels (48; the pooling stream has 2x, 4x and 8x it) and ``residual_channels`` the
residual stream's (32); both shrink only for small test models. Any input size: the input is
zero-padded at the bottom/right to a multiple of the deepest stride (16 or 32) and the logits
are cropped back, so every pooled residual map lines up with its pooling-stream map.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.registry import check_options, register_model
from segflow.models.segnet import conv_bn
from segflow.models.upsample import pad_to_multiple

# (FRRUs, channels as a multiple of ``width``) per stage; each encoder stage pools by 2 first,
# each decoder stage unpools by 2 first. Table 1 of the paper, at width 48.
ENCODER = {
    "A": [(3, 2), (4, 4), (2, 8), (2, 8)],
    "B": [(3, 2), (4, 4), (2, 8), (2, 8), (2, 8)],
}
DECODER = {
    "A": [(2, 4), (2, 4), (2, 2)],
    "B": [(2, 4), (2, 4), (2, 4), (2, 2)],
}


class ResidualUnit(nn.Module):
    """RU: conv + BN + ReLU, conv + BN, plus the input (He et al.'s unit, Fig. 3a)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels), conv_bn(channels, channels, relu=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FRRU(nn.Module):
    """Full-resolution residual unit at ``scale`` (the pooling stream's stride), Fig. 3b.

    ``(y, z) -> (y', z')``: ``y`` the pooling stream at 1/scale, ``z`` the residual stream at
    full resolution.
    """

    def __init__(self, in_channels: int, channels: int, residual_channels: int, scale: int):
        super().__init__()
        self.scale = scale
        self.convs = nn.Sequential(
            conv_bn(in_channels + residual_channels, channels), conv_bn(channels, channels)
        )
        self.to_residual = nn.Conv2d(channels, residual_channels, 1)

    def forward(self, y: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        s = self.scale
        y = self.convs(torch.cat([y, F.max_pool2d(z, s, s)], dim=1))
        r = self.to_residual(y)
        return y, z + r.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)


class FRRN(nn.Module):
    """FRRN-A or -B (see the module docstring); logits at the input size."""

    def __init__(
        self, num_classes: int, variant: str = "B", width: int = 48, residual_channels: int = 32
    ) -> None:
        super().__init__()
        self.stride = 2 ** len(ENCODER[variant])
        self.stem = nn.Sequential(conv_bn(3, width, 5), *(ResidualUnit(width) for _ in range(3)))
        self.split = nn.Conv2d(width, residual_channels, 1)
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        channels, scale = width, 1
        for stages, out in ((self.encoder, ENCODER[variant]), (self.decoder, DECODER[variant])):
            for count, mult in out:
                scale = scale * 2 if stages is self.encoder else scale // 2
                units = nn.ModuleList()
                for _ in range(count):
                    units.append(FRRU(channels, mult * width, residual_channels, scale))
                    channels = mult * width
                stages.append(units)
        self.merge = nn.Conv2d(channels + residual_channels, width, 1)
        self.head = nn.Sequential(*(ResidualUnit(width) for _ in range(3)))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        y = self.stem(pad_to_multiple(x, self.stride))
        z = self.split(y)
        for units in self.encoder:
            y = F.max_pool2d(y, 2, 2)
            for unit in units:
                y, z = unit(y, z)
        for units in self.decoder:
            y = y.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
            for unit in units:
                y, z = unit(y, z)
        y = y.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        y = self.head(self.merge(torch.cat([y, z], dim=1)))
        return self.classifier(y)[..., :h, :w]


@register_model("frrn")
def frrn(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    variant: str = "B",
    width: int = 48,
    residual_channels: int = 32,
    **unknown,
) -> FRRN:
    """FRRN-A or FRRN-B (``variant``), trained from scratch as in the paper."""
    check_options("frrn", frrn, unknown)
    if variant not in ENCODER:
        raise SegflowError(f"model 'frrn': option variant must be 'A' or 'B' (got {variant!r})")
    if backbone is not None or pretrained is not None:
        raise SegflowError("model 'frrn' has its own two-stream network: no backbone or pretrained")
    deepest = 2 ** len(ENCODER[variant])
    if output_stride not in (None, deepest):
        raise SegflowError(
            f"model 'frrn': FRRN-{variant}'s pooling stream reaches stride {deepest}; "
            f"output_stride must be null or {deepest} (got {output_stride})"
        )
    if width < 1 or residual_channels < 1:
        raise SegflowError(
            "model 'frrn': width and residual_channels must be >= 1 "
            f"(got {width}, {residual_channels})"
        )
    return FRRN(num_classes, variant, width, residual_channels)
