"""Named up- and down-sampling modules that decoders take as a parameter.

Every upsampling module has the same call, ``up(x, indices=None, output_size=None)``, so a
decoder can swap max-unpooling for nearest-neighbour unpooling or a learned transposed conv
without changing its forward. ``indices`` are the ones ``MaxPool2d(return_indices=True)``
returned (only :class:`MaxUnpool` uses them); ``output_size`` is the (H, W) before pooling, so
an odd size that the pool floored can be restored (the extra rows/columns are filled as
``max_unpool2d`` fills them: left at the border value or zero).

Downsampling modules are plain ``down(x)``; :class:`MaxPoolDown` can also return indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Size = tuple[int, int] | None


def _pad_to(x: Tensor, output_size: Size, mode: str) -> Tensor:
    """Pad ``x`` at the bottom/right to ``output_size`` (the rows a floored pool dropped)."""
    if output_size is None:
        return x
    dh, dw = output_size[0] - x.shape[-2], output_size[1] - x.shape[-1]
    if dh < 0 or dw < 0:
        raise ValueError(f"output_size {tuple(output_size)} is smaller than {tuple(x.shape[-2:])}")
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (0, dw, 0, dh), mode=mode)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad ``x`` at the bottom/right so H and W are multiples of ``multiple``.

    Encoder-decoders pad their input this way and crop the logits back, so every pooled map
    is exactly 1/stride of the padded input and any H x W works.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class NearestUnpool(nn.Module):
    """Nearest-neighbour unpooling: each value is copied into a ``scale`` x ``scale`` block."""

    needs_indices = False

    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Size = None) -> Tensor:
        out = x.repeat_interleave(self.scale, dim=-2).repeat_interleave(self.scale, dim=-1)
        return _pad_to(out, output_size, "replicate")


class BedOfNails(nn.Module):
    """Bed-of-nails unpooling: each value at the top-left of its block, zeros elsewhere."""

    needs_indices = False

    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Size = None) -> Tensor:
        n, c, h, w = x.shape
        s = self.scale
        out = x.new_zeros(n, c, h * s, w * s)
        out[..., ::s, ::s] = x
        return _pad_to(out, output_size, "constant")


class MaxUnpool(nn.Module):
    """Max-unpooling (SegNet): each value goes back to the argmax position its pool recorded."""

    needs_indices = True

    def __init__(self, kernel_size: int = 2, stride: int | None = None):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride or kernel_size

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Size = None) -> Tensor:
        if indices is None:
            raise ValueError("MaxUnpool needs the indices of MaxPool2d(return_indices=True)")
        return F.max_unpool2d(x, indices, self.kernel_size, self.stride, output_size=output_size)


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """ConvTranspose2d weight (channels, channels, k, k) that upsamples each channel bilinearly.

    The kernel of Long et al.'s ``surgery.upsample_filt``; with stride ``s``, kernel ``2s`` and
    padding ``s/2`` it reproduces ``F.interpolate(mode="bilinear", align_corners=False)`` away
    from the borders (there the transposed conv sees zeros where interpolate clamps).
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = torch.outer(filt1d, filt1d).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    idx = torch.arange(channels)
    weight[idx, idx] = filt  # channel i feeds only channel i
    return weight


class TransposedConv(nn.Module):
    """Learnable ``scale``x upsampling by ConvTranspose2d (FCN "deconvolution", U-Net up-conv).

    ``kernel_size`` defaults to ``2 * scale`` with padding ``(k - scale) / 2`` so the output is
    exactly ``scale`` times the input. ``bilinear_init`` starts it as bilinear interpolation
    (needs ``in_channels == out_channels``); ``fixed`` freezes it (``requires_grad=False``, the
    Caffe FCN models' ``lr_mult: 0``), so it stays bilinear.
    """

    needs_indices = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        scale: int = 2,
        kernel_size: int | None = None,
        bilinear_init: bool = True,
        fixed: bool = False,
        bias: bool = False,
    ):
        super().__init__()
        out_channels = out_channels or in_channels
        kernel_size = kernel_size or 2 * scale
        if (kernel_size - scale) % 2 or kernel_size < scale:
            raise ValueError(f"kernel_size {kernel_size} must be scale {scale} + an even number")
        if bilinear_init and in_channels != out_channels:
            raise ValueError("bilinear_init needs in_channels == out_channels")
        self.scale = scale
        self.conv = nn.ConvTranspose2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=scale,
            padding=(kernel_size - scale) // 2,
            bias=bias,
        )
        if bilinear_init:
            with torch.no_grad():
                self.conv.weight.copy_(bilinear_kernel(in_channels, kernel_size))
                if self.conv.bias is not None:
                    self.conv.bias.zero_()
        if fixed:
            self.conv.requires_grad_(False)

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Size = None) -> Tensor:
        return _pad_to(self.conv(x), output_size, "replicate")


class Bilinear(nn.Module):
    """Parameter-free bilinear upsampling (``align_corners=False``), by ``scale`` or to a size."""

    needs_indices = False

    def __init__(self, scale: int = 2):
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor, indices: Tensor | None = None, output_size: Size = None) -> Tensor:
        if output_size is not None:
            return F.interpolate(x, size=tuple(output_size), mode="bilinear", align_corners=False)
        return F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class MaxPoolDown(nn.Module):
    """2x2/2 max pooling; with ``return_indices`` it returns ``(x, indices)`` for MaxUnpool."""

    def __init__(self, kernel_size: int = 2, stride: int | None = None, return_indices=False):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size, stride or kernel_size, return_indices=return_indices)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return self.pool(x)


class StridedConvDown(nn.Module):
    """Learned 2x downsampling: a 3x3 stride-2 conv (+ BN + ReLU), the all-convolutional way."""

    def __init__(self, in_channels: int, out_channels: int | None = None, batch_norm: bool = True):
        super().__init__()
        out_channels = out_channels or in_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=not batch_norm)
        ]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


UPSAMPLE_KINDS = ("nearest", "bed_of_nails", "max_unpool", "transposed", "bilinear")
DOWNSAMPLE_KINDS = ("max_pool", "strided_conv")


def make_upsample(
    kind: str,
    in_channels: int | None = None,
    out_channels: int | None = None,
    scale: int = 2,
    **kwargs,
) -> nn.Module:
    """Build upsampling ``kind`` (one of :data:`UPSAMPLE_KINDS`); channels matter for "transposed".

    Parameter-free kinds keep the channel count; asking them for a different one is an error.
    """
    if kind == "transposed":
        if in_channels is None:
            raise ValueError("transposed upsampling needs in_channels")
        return TransposedConv(in_channels, out_channels, scale=scale, **kwargs)
    if kind not in UPSAMPLE_KINDS:
        raise ValueError(f"upsample {kind!r} is unknown; known: {', '.join(UPSAMPLE_KINDS)}")
    if out_channels is not None and in_channels is not None and out_channels != in_channels:
        raise ValueError(
            f"upsample {kind!r} cannot change channels ({in_channels}->{out_channels})"
        )
    if kind == "max_unpool":
        return MaxUnpool(scale, **kwargs)
    return {"nearest": NearestUnpool, "bed_of_nails": BedOfNails, "bilinear": Bilinear}[kind](
        scale, **kwargs
    )


def make_downsample(
    kind: str, in_channels: int | None = None, out_channels: int | None = None, **kwargs
) -> nn.Module:
    """Build 2x downsampling ``kind`` (one of :data:`DOWNSAMPLE_KINDS`)."""
    if kind == "max_pool":
        if out_channels is not None and in_channels is not None and out_channels != in_channels:
            raise ValueError(f"max_pool cannot change channels ({in_channels}->{out_channels})")
        return MaxPoolDown(**kwargs)
    if kind == "strided_conv":
        if in_channels is None:
            raise ValueError("strided_conv downsampling needs in_channels")
        return StridedConvDown(in_channels, out_channels, **kwargs)
    raise ValueError(f"downsample {kind!r} is unknown; known: {', '.join(DOWNSAMPLE_KINDS)}")
