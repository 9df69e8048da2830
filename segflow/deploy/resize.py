"""The training-scale resize as tensor operations, so that it can live inside an exported graph.

The served path takes an image to the scale the network trained at with OpenCV
(:func:`segflow.data.shards.resize_image`): ``INTER_AREA`` when the image shrinks, ``INTER_LINEAR``
when it grows, on uint8 pixels. An exported model takes images of any size, so that resize has
to be part of the graph, and it has to give the network the same pixels: a different filter
(``F.interpolate(mode="area")`` pools whole pixels, OpenCV weighs the pixels a cell edge cuts)
moves edges by a pixel and changes labels along every boundary.

What OpenCV computes, and what this module computes with the same arithmetic:

* **area** (both sides shrink): each output pixel is the mean of the input over its cell
  ``[i * scale, (i + 1) * scale)``, a pixel the cell edge cuts counting with the part inside.
  That is a difference of the running sum of the row (or column) at the two edges, read
  between samples: a cumulative sum and two gathers per axis, linear in the image's size
  (a dense resampling matrix would cost ``H x W x h`` multiply-adds: 17 GFLOP for a 4000x3000
  photo). Rounded to uint8 as OpenCV rounds: half up for its exact 2x2 fast path, half to even
  elsewhere.
* **linear** (the image grows): two taps at ``(i + 0.5) * scale - 0.5`` per axis, clamped at
  the border (what ``F.interpolate(..., align_corners=False)`` does too).
* **area, growing on one side**: OpenCV's ``INTER_AREA`` then samples two taps with its own
  weights (``fx = (i + 1) - (floor(i * scale) + 1) / scale``, wrapped to [0, 1)).

Which one applies depends on the input's size, which an exported graph only knows at run time,
so all three are computed and one is selected with ``where``: the two-tap paths cost as much
as the output, the area path one pass over the input. OpenCV's uint8 linear resize uses 11-bit
fixed-point weights, so the linear paths may differ from it by one grey level on some pixels;
the area paths match it (tests/deploy/test_resize.py measures both).

Every function here is TorchScript- and ``torch.export``-compatible: sizes come from the
tensor's shape, there is no branch on them, and float arithmetic on sizes happens on tensors.
"""

import torch
from torch import Tensor


def resize_to(image: Tensor, height: int, width: int) -> Tensor:
    """N x C x H x W float (integer values 0..255) -> N x C x height x width, OpenCV's uint8
    result as floats: ``resize_image``'s choice of filter and rounding, for any H, W."""
    src_h = _length(image, 2)
    src_w = _length(image, 3)
    shrink = src_h * src_w > height * width
    both = (src_h >= height) & (src_w >= width)
    use_area = shrink & both

    area = _area(image, height, width, src_h, src_w)
    # 2x2 integer downscale: OpenCV's fast path rounds (sum + 2) >> 2, i.e. half up.
    fast2 = (src_h == 2 * height) & (src_w == 2 * width)
    area = torch.where(fast2, torch.floor(area + 0.5), torch.round(area))

    rows = _taps(src_h, height, shrink & ~both)
    cols = _taps(src_w, width, shrink & ~both)
    linear = _two_tap(_two_tap(image, 2, *rows), 3, *cols)
    linear = torch.round(linear)
    return torch.where(use_area, area, linear).clamp(0.0, 255.0)


def _length(image: Tensor, dim: int) -> Tensor:
    """The size of ``dim`` as a float64 0-dim tensor (arithmetic on sizes stays in the graph)."""
    return torch.ones_like(image[0, 0].select(1 - (dim - 2), 0), dtype=torch.float64).sum()


def _area(image: Tensor, height: int, width: int, src_h: Tensor, src_w: Tensor) -> Tensor:
    """Area-weighted mean over each output cell (meaningful when both sides shrink)."""
    rows = _cell_sums(image, 2, height, src_h)
    sums = _cell_sums(rows, 3, width, src_w)
    return sums / ((src_h / height) * (src_w / width)).float()


def _cell_sums(x: Tensor, dim: int, out_len: int, src_len: Tensor) -> Tensor:
    """Sum of ``x`` along ``dim`` over the cells ``[i * s, (i + 1) * s)``, s = src_len / out_len.

    ``C(t) = S[floor t] + frac(t) * x[floor t]`` is the integral of the pixels up to ``t`` (S the
    running sum before each pixel); a cell's sum is ``C(end) - C(start)``. C is continuous, so
    an edge that float rounding puts a hair before an integer gives the same sum.
    """
    scale = src_len / out_len
    edges = torch.arange(out_len + 1, dtype=torch.float64, device=x.device) * scale
    edges = torch.minimum(edges, src_len)
    start = torch.floor(edges)
    frac = (edges - start).float()
    index = start.long()
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    running = torch.cat([zero, x.cumsum(dim)], dim)
    padded = torch.cat([x, zero], dim)
    shape = [1, 1, 1, 1]
    shape[dim] = out_len + 1
    integral = running.index_select(dim, index) + frac.view(shape) * padded.index_select(dim, index)
    return integral.narrow(dim, 1, out_len) - integral.narrow(dim, 0, out_len)


def _taps(src_len: Tensor, out_len: int, area_mode: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(first source index, second source index, weight of the second) per output index:
    OpenCV's linear sampling, or its INTER_AREA sampling where the image grows on this side
    but shrinks overall."""
    dst = torch.arange(out_len, dtype=torch.float64, device=src_len.device)
    scale = src_len / out_len
    centre = (dst + 0.5) * scale - 0.5
    lin_x = torch.floor(centre)
    lin_f = centre - lin_x
    area_x = torch.floor(dst * scale)
    area_f = (dst + 1) - (area_x + 1) / scale
    area_f = torch.where(area_f <= 0, torch.zeros_like(area_f), area_f - torch.floor(area_f))
    sx = torch.where(area_mode, area_x, lin_x)
    fx = torch.where(area_mode, area_f, lin_f)
    fx = torch.where(sx < 0, torch.zeros_like(fx), fx)
    sx = sx.clamp(min=0.0)
    last = src_len - 1
    fx = torch.where(sx >= last, torch.zeros_like(fx), fx)
    sx = torch.minimum(sx, last)
    return sx.long(), torch.minimum(sx + 1, last).long(), fx.float()


def _two_tap(x: Tensor, dim: int, first: Tensor, second: Tensor, weight: Tensor) -> Tensor:
    """``x[first] * (1 - w) + x[second] * w`` along ``dim``."""
    shape = [1, 1, 1, 1]
    shape[dim] = -1
    w = weight.view(shape)
    return x.index_select(dim, first) * (1 - w) + x.index_select(dim, second) * w
