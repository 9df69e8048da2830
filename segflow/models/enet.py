"""ENet (Paszke et al. 2016): a real-time encoder-decoder whose decoder is deliberately small.

SegNet's decoder mirrors its encoder layer for layer; ENet argues the decoder only has to
upsample what the encoder found and refine details, so nearly all of its 0.37 M parameters sit
in the encoder. The layout is the paper's Table 1 (the authors' Torch code for what the table
leaves open):

* initial block: a 3x3 stride-2 conv with 13 filters beside a 2x2 max pool of the 3 input
  channels, concatenated to 16 channels (1/2);
* stage 1: bottleneck 1.0 downsamples to 64 channels, four regular bottlenecks follow (1/4);
* stage 2: bottleneck 2.0 downsamples to 128 channels, then regular, dilated 2, asymmetric 5,
  dilated 4, regular, dilated 8, asymmetric 5, dilated 16 (1/8); stage 3 repeats those eight;
* stage 4: an upsampling bottleneck to 64 channels and two regular ones (1/4); stage 5: one
  upsampling bottleneck to 16 channels and one regular (1/2);
* a 2x2 stride-2 transposed conv to the class scores (1/1).

A bottleneck projects to a quarter of its output channels with a 1x1 conv (a 2x2 stride-2 conv
when it downsamples), applies its main conv (3x3, 3x3 dilated, or a 5x1 then a 1x1 5
"asymmetric" pair), expands back with a 1x1 conv and adds the shortcut. A downsampling
bottleneck's shortcut max-pools, keeping the indices, and zero-pads the new channels; the
matching upsampling bottleneck's shortcut (1x1 conv + BN) max-unpools by those indices, as in
SegNet, while its main branch upsamples with a 3x3 transposed conv. The encoder uses PReLU and
spatial dropout (0.01 in stage 1, 0.1 after); the decoder ReLU and no dropout, as the authors'
code does. Convs are followed by BN, so they carry no bias.

Any input size: the input is zero-padded at the bottom/right to a multiple of 8 (the three
pools' stride) and the logits are cropped back, so every unpool restores its pool's size.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.registry import check_options, register_model
from segflow.models.upsample import MaxUnpool, pad_to_multiple

#: Stage 2's bottlenecks after 2.0 (stage 3 repeats them): (main conv, dilation or kernel).
STAGE2_LAYOUT: tuple[tuple[str, int], ...] = (
    ("regular", 1),
    ("dilated", 2),
    ("asymmetric", 5),
    ("dilated", 4),
    ("regular", 1),
    ("dilated", 8),
    ("asymmetric", 5),
    ("dilated", 16),
)


def _bn_act(channels: int, prelu: bool) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.PReLU(channels) if prelu else nn.ReLU(inplace=True)]


def _main_conv(channels: int, kind: str, value: int) -> nn.Module:
    """The bottleneck's middle conv: 3x3, 3x3 dilated ``value``, or ``value``x1 then 1x``value``."""
    if kind == "asymmetric":
        return nn.Sequential(
            nn.Conv2d(channels, channels, (value, 1), padding=(value // 2, 0), bias=False),
            nn.Conv2d(channels, channels, (1, value), padding=(0, value // 2), bias=False),
        )
    dilation = value if kind == "dilated" else 1
    return nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation, bias=False)


class InitialBlock(nn.Module):
    """A 3x3 stride-2 conv (13 filters) beside a 2x2 max pool of the input: 16 channels at 1/2."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels - 3, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn_act = nn.Sequential(*_bn_act(out_channels, prelu=True))

    def forward(self, x: Tensor) -> Tensor:
        return self.bn_act(torch.cat([self.conv(x), self.pool(x)], dim=1))


class Bottleneck(nn.Module):
    """1x1 projection to ``channels // 4``, the main conv, 1x1 expansion, dropout; + the input."""

    def __init__(
        self,
        channels: int,
        kind: str = "regular",
        value: int = 1,
        dropout: float = 0.0,
        prelu: bool = True,
    ) -> None:
        super().__init__()
        internal = channels // 4
        self.kind = kind
        self.branch = nn.Sequential(
            nn.Conv2d(channels, internal, 1, bias=False),
            *_bn_act(internal, prelu),
            _main_conv(internal, kind, value),
            *_bn_act(internal, prelu),
            nn.Conv2d(internal, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(channels) if prelu else nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.branch(x))


class DownsamplingBottleneck(nn.Module):
    """A 2x2 stride-2 projection on the main branch; the shortcut max-pools (indices kept) and
    zero-pads the channels. Returns ``(features, pool indices)``."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        internal = out_channels // 4
        self.extra_channels = out_channels - in_channels
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, internal, 2, stride=2, bias=False),
            *_bn_act(internal, prelu=True),
            _main_conv(internal, "regular", 1),
            *_bn_act(internal, prelu=True),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shortcut, indices = self.pool(x)
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra_channels))
        return self.act(shortcut + self.branch(x)), indices


class UpsamplingBottleneck(nn.Module):
    """The main branch upsamples by a 3x3 stride-2 transposed conv; the shortcut (1x1 conv + BN)
    max-unpools by the indices of the encoder's matching downsampling bottleneck."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        internal = out_channels // 4
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.unpool = MaxUnpool(2)
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, internal, 1, bias=False),
            *_bn_act(internal, prelu=False),
            nn.ConvTranspose2d(
                internal, internal, 3, stride=2, padding=1, output_padding=1, bias=False
            ),
            *_bn_act(internal, prelu=False),
            nn.Conv2d(internal, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, indices: Tensor) -> Tensor:
        shortcut = self.unpool(self.shortcut(x), indices)
        return self.act(shortcut + self.branch(x))


class ENetEncoder(nn.Module):
    """Initial block and stages 1-3 (1/8); returns the features and both pools' indices."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.initial = InitialBlock(16)
        self.down1 = DownsamplingBottleneck(16, 64, dropout / 10)
        self.stage1 = nn.Sequential(*(Bottleneck(64, dropout=dropout / 10) for _ in range(4)))
        self.down2 = DownsamplingBottleneck(64, 128, dropout)
        self.stage2 = nn.Sequential(*(Bottleneck(128, k, v, dropout) for k, v in STAGE2_LAYOUT))
        self.stage3 = nn.Sequential(*(Bottleneck(128, k, v, dropout) for k, v in STAGE2_LAYOUT))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x, indices1 = self.down1(self.initial(x))
        x, indices2 = self.down2(self.stage1(x))
        return self.stage3(self.stage2(x)), indices1, indices2


class ENetDecoder(nn.Module):
    """Stages 4 and 5 (unpooling by the encoder's indices) and the transposed-conv classifier."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.up4 = UpsamplingBottleneck(128, 64)
        self.stage4 = nn.Sequential(*(Bottleneck(64, prelu=False) for _ in range(2)))
        self.up5 = UpsamplingBottleneck(64, 16)
        self.stage5 = Bottleneck(16, prelu=False)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)

    def forward(self, x: Tensor, indices1: Tensor, indices2: Tensor) -> Tensor:
        x = self.stage4(self.up4(x, indices2))
        return self.fullconv(self.stage5(self.up5(x, indices1)))


class ENet(nn.Module):
    def __init__(self, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = ENetEncoder(dropout)
        self.decoder = ENetDecoder(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        logits = self.decoder(*self.encoder(pad_to_multiple(x, 8)))
        return logits[..., :h, :w]


@register_model("enet")
def enet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    dropout: float = 0.1,
    **unknown,
) -> ENet:
    """ENet as published (0.37 M parameters), trained from scratch.

    ``dropout`` is the spatial dropout of stages 2-3 (0.1 published); stage 1 uses a tenth of
    it (0.01 published).
    """
    check_options("enet", enet, unknown)
    if backbone is not None or pretrained is not None:
        raise SegflowError("model 'enet' has its own encoder: no backbone or pretrained")
    if output_stride not in (None, 8):
        raise SegflowError(f"model 'enet' runs at output_stride 8 (got {output_stride})")
    if not 0 <= dropout < 1:
        raise SegflowError(f"model 'enet': option dropout must be in [0, 1) (got {dropout})")
    return ENet(num_classes, dropout)
