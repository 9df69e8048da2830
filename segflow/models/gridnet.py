"""GridNet (Fourure, Emonet, Fromont, Muselet, Tremeau and Wolf, BMVC 2017): a 2-D grid of streams.

An encoder-decoder is one path down and back up. GridNet is a grid of them: each *row* is a
stream of feature maps at one resolution (full, 1/2, 1/4, 1/8, 1/16), each *column* moves
information between the rows, down (strided 3x3 convolutions) in the first half of the grid
and up (stride-2 3x3 transposed convolutions) in the second. Along a row, consecutive columns
are joined by residual blocks, so every node sums three things: the node to its left, the
residual block of it, and the down- or up-sampled node above or below it. Every path through
the grid is a network of its own: the top row alone is a full-resolution residual network,
the left and right edges together a conv-deconv network, and everything between mixes them.

*Total dropout*, the paper's regulariser, keeps all those paths in use: in training, each lateral
residual block is dropped entirely (its output zeroed) with probability ``total_dropout`` (0.1,
as in the released training code), so the network cannot come to rely on a single path. Here
the drop is drawn per sample (the released Lua code draws one per batch; the two coincide at
batch size 1) and, as there, nothing is rescaled and evaluation keeps every block.

The layout follows the authors' released implementation (Fourure/GridNet, ``GridNet.lua``): a
batch norm on the input; the first column starts the top row with conv + BN + ReLU twice and
fills the rows below by sub-sampling blocks (BN, ReLU, stride-2 conv to the next row's width,
BN, ReLU, conv); each further down-column adds a lateral residual block (BN, ReLU, conv, BN,
ReLU, conv) on every row; the up-columns mirror it with up-sampling blocks and lateral blocks
of transposed convolutions; the grid's middle column holds one lateral block per row before the
first up-sampling. The output is a stride-1 transposed conv to the classes, BN, ReLU, another
transposed conv and BN (its raw output is the logits). With ``columns`` = 3 (the paper's: 3
down-sampling and 3 up-sampling columns) the grid is 5 rows by 6 columns.

Published size: **9.86 M parameters** (the count the GridNet paper gives for its network with
its Cityscapes results, 19 classes). Stream widths: 32, 64, 96, 128, 160 (``channels``) is
segflow's reading of the paper; with this layout they give 9.65 M with 19 classes (2 % under
the published count), whereas the 16-32-64-128-256 in the released training script gives 13.2 M
(34 % over), so that script's widths are not the ones the count describes. The grid of Niklaus
and Liu (CVPR 2018) that builds on this paper uses the same first three widths, 32-64-96.

Any input size: the input is zero-padded at the bottom/right to a multiple of the deepest
stride (16 with five rows) and the logits cropped back, so every up-sampled map matches its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.registry import check_options, register_model
from segflow.models.upsample import pad_to_multiple

PAPER_CHANNELS = (32, 64, 96, 128, 160)


def _bn_relu(channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


class TotalDropout(nn.Module):
    """Zero a whole block's output per sample with probability ``p`` in training (no rescaling)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.p
        return x * keep.to(x.dtype)


def lateral(channels: int, p: float, transposed: bool) -> nn.Sequential:
    """A lateral residual block's branch: BN, ReLU, 3x3, BN, ReLU, 3x3, total dropout."""
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return nn.Sequential(
        *_bn_relu(channels),
        conv(channels, channels, 3, padding=1),
        *_bn_relu(channels),
        conv(channels, channels, 3, padding=1),
        TotalDropout(p),
    )


def down(in_ch: int, out_ch: int) -> nn.Sequential:
    """Sub-sampling block: BN, ReLU, 3x3 stride-2 conv, BN, ReLU, 3x3 conv."""
    return nn.Sequential(
        *_bn_relu(in_ch),
        nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1),
        *_bn_relu(out_ch),
        nn.Conv2d(out_ch, out_ch, 3, padding=1),
    )


def up(in_ch: int, out_ch: int) -> nn.Sequential:
    """Up-sampling block: BN, ReLU, 3x3 stride-2 transposed conv (exactly 2x), BN, ReLU, 3x3."""
    return nn.Sequential(
        *_bn_relu(in_ch),
        nn.ConvTranspose2d(in_ch, out_ch, 3, stride=2, padding=1, output_padding=1),
        *_bn_relu(out_ch),
        nn.ConvTranspose2d(out_ch, out_ch, 3, padding=1),
    )


class GridNet(nn.Module):
    """``len(channels)`` rows by ``2 * columns`` columns (see the module docstring)."""

    def __init__(
        self,
        num_classes: int,
        channels: Sequence[int] = PAPER_CHANNELS,
        columns: int = 3,
        total_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        ch = list(channels)
        rows = len(ch)
        self.stride = 2 ** (rows - 1)
        self.input_bn = nn.BatchNorm2d(3)
        self.first = nn.Sequential(
            nn.Conv2d(3, ch[0], 3, padding=1),
            *_bn_relu(ch[0]),
            nn.Conv2d(ch[0], ch[0], 3, padding=1),
            *_bn_relu(ch[0]),
        )
        # downs[c][r]: column c, from row r to row r + 1; ups[c][r]: from row r + 1 to row r.
        self.downs = nn.ModuleList(
            nn.ModuleList(down(ch[r], ch[r + 1]) for r in range(rows - 1)) for _ in range(columns)
        )
        self.ups = nn.ModuleList(
            nn.ModuleList(up(ch[r + 1], ch[r]) for r in range(rows - 1)) for _ in range(columns)
        )
        # Lateral blocks entering each down-column after the first, and each up-column (the
        # first of which is the grid's middle); the up part's are transposed convs as released.
        self.lateral_down = nn.ModuleList(
            nn.ModuleList(lateral(c, total_dropout, False) for c in ch) for _ in range(columns - 1)
        )
        self.lateral_up = nn.ModuleList(
            nn.ModuleList(lateral(c, total_dropout, i > 0) for c in ch) for i in range(columns)
        )
        self.last = nn.Sequential(
            nn.ConvTranspose2d(ch[0], num_classes, 3, padding=1),
            *_bn_relu(num_classes),
            nn.ConvTranspose2d(num_classes, num_classes, 3, padding=1),
            nn.BatchNorm2d(num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        nodes = [self.first(self.input_bn(pad_to_multiple(x, self.stride)))]
        for d in self.downs[0]:
            nodes.append(d(nodes[-1]))
        for downs, laterals in zip(self.downs[1:], self.lateral_down, strict=True):
            new = [nodes[0] + laterals[0](nodes[0])]
            for r, d in enumerate(downs, start=1):
                new.append(nodes[r] + laterals[r](nodes[r]) + d(new[-1]))
            nodes = new
        last_row = len(nodes) - 1
        for ups, laterals in zip(self.ups, self.lateral_up, strict=True):
            new = [nodes[last_row] + laterals[last_row](nodes[last_row])]
            for r in reversed(range(last_row)):
                new.append(nodes[r] + laterals[r](nodes[r]) + ups[r](new[-1]))
            nodes = new[::-1]
        return self.last(nodes[0])[..., :h, :w]


@register_model("gridnet")
def gridnet(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    channels: Sequence[int] = PAPER_CHANNELS,
    columns: int = 3,
    total_dropout: float = 0.1,
    **unknown,
) -> GridNet:
    """GridNet, trained from scratch as in the paper; ``channels`` are the rows' widths."""
    check_options("gridnet", gridnet, unknown)
    if backbone is not None or pretrained is not None:
        raise SegflowError("model 'gridnet' is its own grid of streams: no backbone or pretrained")
    channels = tuple(channels)
    if len(channels) < 2 or any(not isinstance(c, int) or c < 1 for c in channels):
        raise SegflowError(
            f"model 'gridnet': option channels must be 2 or more positive widths (got {channels})"
        )
    deepest = 2 ** (len(channels) - 1)
    if output_stride not in (None, deepest):
        raise SegflowError(
            f"model 'gridnet': its deepest row is at stride {deepest}; output_stride must be "
            f"null or {deepest} (got {output_stride})"
        )
    if columns < 1:
        raise SegflowError(f"model 'gridnet': option columns must be >= 1 (got {columns})")
    if not 0 <= total_dropout < 1:
        raise SegflowError(
            f"model 'gridnet': option total_dropout must be in [0, 1) (got {total_dropout})"
        )
    return GridNet(num_classes, channels, columns, total_dropout)
