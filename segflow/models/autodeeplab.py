"""Auto-DeepLab (Liu et al., CVPR 2019): a searched cell on a searched path of strides.

The retraining network of the paper: a 3-conv stem (64, 64, 128 channels; stride 2 on the first
and third) brings the image to stride 4; then one cell per layer of the genotype's path, each
at its layer's stride s with ``filter_multiplier * s / 4`` channels per block and the B block
outputs concatenated; a DeepLab v3 ASPP on the last cell and the DeepLab v3+ decoder on the
stride-4 features (the last stride-4 cell of the path, or the stem when the path never stays at
4). Auto-DeepLab-S/M/L are ``filter_multiplier`` 20/32/48.

A cell reads the previous cell and the one before it. Each is brought to the cell's stride and
width by ReLU, 1x1 conv and BN, with a bilinear resize where the strides differ (the authors'
TensorFlow code resizes the same way when upsampling; when downsampling it runs the ops at
stride 2 instead, which is one reason the counts differ a little from the paper's). The ops
(:func:`make_op`) are shared with the search's supernet, so a searched op is the op retrained.

Scheduled drop-path (as in NASNet and the authors' code): each branch output is zeroed per
sample with probability ``drop_path * (layer + 1) / L * min(1, step / drop_path_steps)``, so
deeper cells drop more and the rate ramps up over training; the step counter is a buffer, so a
resumed run continues the ramp.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.errors import SegflowError
from segflow.models.deeplab import ASPP, conv_bn_relu, scaled_rates
from segflow.models.genotype import PAPER_GENOTYPE, Genotype, load_genotype, parse_genotype
from segflow.models.registry import check_options, register_model

# --------------------------------------------------------------------------- operations


class ReLUConvBN(nn.Sequential):
    def __init__(
        self, inp: int, out: int, kernel: int = 1, dilation: int = 1, affine: bool = True
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(inp, out, kernel, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Depthwise-separable conv applied twice (ReLU, depthwise, pointwise, BN; x2), as NASNet."""

    def __init__(self, c: int, kernel: int, affine: bool) -> None:
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [
                nn.ReLU(inplace=False),
                nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c, bias=False),
                nn.Conv2d(c, c, 1, bias=False),
                nn.BatchNorm2d(c, affine=affine),
            ]
        super().__init__(*layers)


class Zero(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mul(0.0)


def make_op(name: str, c: int, affine: bool = True) -> nn.Module:
    """One candidate operation on ``c`` channels at stride 1 (names: genotype.OPS).

    Atrous convs are full convs at rate 2 (as in the authors' code), separable convs depthwise
    + pointwise twice; the search builds them with ``affine=False`` BN, as DARTS does, so the
    mixed op's weights alone scale each candidate.
    """
    if name == "sep_conv_3x3":
        return SepConv(c, 3, affine)
    if name == "sep_conv_5x5":
        return SepConv(c, 5, affine)
    if name == "atrous_3x3":
        return ReLUConvBN(c, c, 3, 2, affine)
    if name == "atrous_5x5":
        return ReLUConvBN(c, c, 5, 2, affine)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=1, padding=1)
    if name == "skip":
        return nn.Identity()
    if name == "zero":
        return Zero()
    raise ValueError(f"unknown op {name!r}")


class Preprocess(nn.Module):
    """ReLU-1x1-BN to the cell's width plus a bilinear resize to its size.

    The conv runs on the smaller side of the resize: a 1x1 conv and a bilinear resize are both
    linear, so only the ReLU's place changes, and the multiply-adds shrink by up to 4x.
    """

    def __init__(self, inp: int, out: int, affine: bool = True) -> None:
        super().__init__()
        self.conv = ReLUConvBN(inp, out, 1, affine=affine)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return self.conv(x)
        if x.shape[-2] > size[0]:
            return self.conv(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return F.interpolate(self.conv(x), size=size, mode="bilinear", align_corners=False)


def level_sizes(size: tuple[int, int], levels: int = 4) -> list[tuple[int, int]]:
    """Feature size at stride 4, 8, 16, 32 from the stride-4 size (ceil halving, as a stride-2
    conv with padding 1 does), so every node of one stride has exactly one size."""
    sizes = [tuple(size)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def stem(channels: tuple[int, int, int] = (64, 64, 128)) -> nn.ModuleList:
    """Three 3x3 conv-BN-ReLU; stride 2 on the first and third (stride 4 in all)."""
    a, b, c = channels
    return nn.ModuleList(
        [
            nn.Sequential(
                nn.Conv2d(3, a, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(a),
                nn.ReLU(inplace=True),
            ),
            conv_bn_relu(a, b, 3),
            nn.Sequential(
                nn.Conv2d(b, c, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ),
        ]
    )


# --------------------------------------------------------------------------- retraining net


def drop_path(x: Tensor, p: float) -> Tensor:
    """Zero whole samples of ``x`` with probability ``p``, rescaling the kept ones."""
    if p <= 0:
        return x
    keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) >= p
    return x * keep / (1 - p)


class Cell(nn.Module):
    """A decoded cell: each block sums its two branches; the output concatenates the blocks."""

    def __init__(self, genotype: Genotype, prev_prev: int, prev: int, c: int) -> None:
        super().__init__()
        self.pre0 = Preprocess(prev_prev, c)
        self.pre1 = Preprocess(prev, c)
        self.blocks = genotype.cell
        self.ops = nn.ModuleList(make_op(op, c) for block in genotype.cell for op, _ in block)
        self.out_channels = c * len(genotype.cell)

    def forward(self, s0: Tensor, s1: Tensor, size: tuple[int, int], p: float = 0.0) -> Tensor:
        states = [self.pre0(s0, size), self.pre1(s1, size)]
        for b, block in enumerate(self.blocks):
            h = 0
            for k, (op_name, i) in enumerate(block):
                y = self.ops[2 * b + k](states[i])
                h = h + (y if op_name == "skip" else drop_path(y, p))
            states.append(h)
        return torch.cat(states[2:], dim=1)


class AutoDeepLab(nn.Module):
    def __init__(
        self,
        genotype: Genotype,
        num_classes: int,
        filter_multiplier: int = 20,
        aspp_channels: int = 256,
        low_level_channels: int = 48,
        dropout: float = 0.1,
        drop_path: float = 0.0,
        drop_path_steps: int = 0,
    ) -> None:
        super().__init__()
        self.genotype = genotype
        self.stem = stem()
        self.cells = nn.ModuleList()
        prev_prev, prev = 64, 128
        for s in genotype.path:
            cell = Cell(genotype, prev_prev, prev, filter_multiplier * s // 4)
            self.cells.append(cell)
            prev_prev, prev = prev, cell.out_channels
        self.output_stride = genotype.path[-1]
        # What `segflow models` shows in its backbone column (see models/summary.py).
        self.backbone_name = f"searched cell, F={filter_multiplier}"
        stride4 = [i for i, s in enumerate(genotype.path) if s == 4]
        # The last stride-4 cell before the path first leaves stride 4 (its finest features).
        self.low_level_index = _last_of_first_run(stride4)
        low = self.cells[self.low_level_index].out_channels if stride4 else 128
        rates = scaled_rates((6, 12, 18), 16, self.output_stride)
        self.aspp = ASPP(prev, aspp_channels, rates, dropout)
        self.reduce = conv_bn_relu(low, low_level_channels, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(aspp_channels + low_level_channels, aspp_channels, 3),
            conv_bn_relu(aspp_channels, aspp_channels, 3),
        )
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        self.drop_path = drop_path
        self.drop_path_steps = drop_path_steps
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def _drop_prob(self, layer: int) -> float:
        if not (self.training and self.drop_path > 0):
            return 0.0
        ramp = min(1.0, float(self.steps) / self.drop_path_steps) if self.drop_path_steps else 1.0
        return self.drop_path * (layer + 1) / len(self.cells) * ramp

    def forward(self, x: Tensor) -> Tensor:
        s2 = self.stem[1](self.stem[0](x))
        s4 = self.stem[2](s2)
        sizes = level_sizes(s4.shape[-2:])
        prev_prev, prev, low = s2, s4, s4
        for i, (cell, s) in enumerate(zip(self.cells, self.genotype.path, strict=True)):
            size = sizes[STRIDE_LEVEL[s]]
            prev_prev, prev = prev, cell(prev_prev, prev, size, self._drop_prob(i))
            if i == self.low_level_index:
                low = prev
        if self.training:
            self.steps += 1
        low = self.reduce(low)
        high = F.interpolate(
            self.aspp(prev), size=low.shape[-2:], mode="bilinear", align_corners=False
        )
        scores = self.classifier(self.decoder(torch.cat([high, low], dim=1)))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


STRIDE_LEVEL = {4: 0, 8: 1, 16: 2, 32: 3}


def _last_of_first_run(indices: list[int]) -> int:
    """The end of the first run of consecutive indices (-1 for none)."""
    if not indices:
        return -1
    end = indices[0]
    while end + 1 in indices:
        end += 1
    return end


def resolve_genotype(genotype: str | dict | None) -> Genotype:
    """A genotype file path, an inline mapping (params.yaml), or None for the paper's."""
    if genotype is None:
        return PAPER_GENOTYPE
    if isinstance(genotype, dict):
        return parse_genotype(genotype, "train.model_options.genotype")
    return load_genotype(genotype)


@register_model("autodeeplab")
def autodeeplab(
    num_classes: int,
    backbone: str | None = None,
    output_stride: int | None = None,
    pretrained: str | Path | None = None,
    *,
    genotype: str | dict | None = None,
    filter_multiplier: int = 20,
    aspp_channels: int = 256,
    low_level_channels: int = 48,
    dropout: float = 0.1,
    drop_path: float = 0.0,
    drop_path_steps: int = 0,
    **unknown,
) -> AutoDeepLab:
    """Auto-DeepLab; defaults: the paper's cell and path, F = 20 (Auto-DeepLab-S).

    The architecture comes from ``genotype`` (a JSON file from the search stage, or a mapping);
    it has no backbone and its output stride is the path's last, so ``backbone``,
    ``output_stride`` and ``pretrained`` must be null. ``drop_path`` is the final drop
    probability of the last cell, reached after ``drop_path_steps`` training steps (0: at once).
    """
    check_options("autodeeplab", autodeeplab, unknown)
    for name, value in (
        ("backbone", backbone),
        ("output_stride", output_stride),
        ("pretrained", pretrained),
    ):
        if value is not None:
            raise SegflowError(
                f"model 'autodeeplab': train.{name} must be null (got {value!r}); the "
                "architecture, including its output stride, comes from the genotype"
            )
    for name, value in (
        ("filter_multiplier", filter_multiplier),
        ("aspp_channels", aspp_channels),
        ("low_level_channels", low_level_channels),
    ):
        if not value > 0:
            raise SegflowError(f"model 'autodeeplab': option {name} must be > 0 (got {value})")
    if not 0 <= drop_path < 1 or not 0 <= dropout < 1:
        raise SegflowError("model 'autodeeplab': options drop_path and dropout must be in [0, 1)")
    if drop_path_steps < 0:
        raise SegflowError("model 'autodeeplab': option drop_path_steps must be >= 0")
    return AutoDeepLab(
        resolve_genotype(genotype),
        num_classes,
        filter_multiplier,
        aspp_channels,
        low_level_channels,
        dropout,
        drop_path,
        drop_path_steps,
    )
