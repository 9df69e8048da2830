"""Inference modes: whole image, multi-scale + flip ("aug test"), sliding window.

Every mode takes a model that maps a normalised N x 3 x H x W float image to N x C x h x w
logits and returns softmax probabilities N x C x H x W (float32) at the input size, so the
modes are interchangeable and the CRF (which wants probabilities) can follow any of them.
Logits smaller than the input (a stride-8 head without its own upsampling) are resized
bilinearly before the softmax, as DeepLab and mmsegmentation do. ``out_size`` asks for the
probabilities at another size than the input's: a model that runs at the training scale is
scored at the labels' original size by resizing its logits straight to that size (mmsegmentation
resizes to ``ori_shape`` the same way), not by upsampling a label map.

The model is run in eval mode and put back into the mode it had: inference with batch-norm in
training mode would both give wrong numbers and change the model's running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.config import LoaderParams
from segflow.data.datasets.base import read_rgb
from segflow.data.loader import normalize_images
from segflow.errors import SegflowError

MODES = ("single", "multiscale", "sliding")
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def normalize(
    image: np.ndarray,
    mean: Sequence[float] = LoaderParams().mean,
    std: Sequence[float] = LoaderParams().std,
    device: torch.device | str = "cpu",
) -> Tensor:
    """uint8 RGB H x W x 3 (or N x H x W x 3) -> float32 N x 3 x H x W, normalised.

    The same arithmetic as training (albumentations ``Normalize`` in data/transforms.py and
    ``normalize_batch`` in data/loader.py): ``(pixel / 255 - mean) / std`` per channel.
    """
    if image.dtype != np.uint8 or image.shape[-1] != 3 or image.ndim not in (3, 4):
        raise SegflowError(
            f"image of shape {image.shape} and dtype {image.dtype}: expected uint8 RGB "
            "H x W x 3 or N x H x W x 3"
        )
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    x = x.unsqueeze(0) if x.ndim == 3 else x
    return normalize_images(x.permute(0, 3, 1, 2), mean, std)


def load_image_tensor(
    path: str | Path, loader: LoaderParams, device: torch.device | str = "cpu"
) -> Tensor:
    """Read an image file and normalise it with the loader params: 1 x 3 x H x W float32."""
    return normalize(read_rgb(Path(path)), loader.mean, loader.std, device)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode without gradients, then restore its previous mode.

    ``no_grad`` rather than ``inference_mode``: inference tensors cannot be modified in place
    outside inference mode, and callers (the CRF, the report) post-process the probabilities.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _probs(model: nn.Module, image: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Softmax of the model's logits, resized to ``size`` (default: the input's size)."""
    logits = model(image)
    size = size or tuple(image.shape[-2:])
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
    return logits.float().softmax(dim=1)


def _check_image(image: Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 3:
        raise SegflowError(f"image tensor of shape {tuple(image.shape)}: expected N x 3 x H x W")


def predict_single(
    model: nn.Module, image: Tensor, out_size: tuple[int, int] | None = None
) -> Tensor:
    """One forward pass of the whole image: N x C x H x W probabilities (or at ``out_size``)."""
    _check_image(image)
    with eval_mode(model):
        return _probs(model, image, out_size)


def predict_multiscale(
    model: nn.Module,
    image: Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    sliding: dict | None = None,
    out_size: tuple[int, int] | None = None,
) -> Tensor:
    """Average of the softmax over rescaled (and horizontally flipped) copies of the image.

    Each copy is resized bilinearly by the scale (size rounded to the nearest pixel, as
    mmsegmentation's aug test does), its logits resized back to the input size, softmaxed, a
    flipped copy flipped back, and the probabilities averaged. ``sliding`` (keyword arguments
    of :func:`predict_sliding`, e.g. ``{"crop": (512, 1024)}``) runs each copy through the
    sliding window instead of one forward pass, for images larger than the training crop.
    """
    _check_image(image)
    if not scales:
        raise SegflowError("multiscale inference: scales must name at least one scale")
    height, width = image.shape[-2:]
    target = tuple(out_size) if out_size else (height, width)
    total: Tensor | None = None
    count = 0
    with eval_mode(model):
        for scale in scales:
            if scale <= 0:
                raise SegflowError(f"multiscale inference: scale {scale} must be positive")
            size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
            scaled = image
            if size != (height, width):
                scaled = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True) if flip else (False,):
                x = scaled.flip(-1) if flipped else scaled
                if sliding:
                    # The windows' softmax is already averaged: resize probabilities.
                    p = predict_sliding(model, x, **sliding)  # eval_mode nests
                    if tuple(p.shape[-2:]) != target:
                        p = F.interpolate(p, target, mode="bilinear", align_corners=False)
                else:  # logits resized to the output size, then softmax (as mmsegmentation)
                    p = _probs(model, x, size=target)
                p = p.flip(-1) if flipped else p
                total = p if total is None else total + p
                count += 1
    assert total is not None
    return total / count


def predict_sliding(
    model: nn.Module,
    image: Tensor,
    crop: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    overlap: float = 1 / 3,
    num_classes: int | None = None,
    batch_windows: int = 1,
) -> Tensor:
    """Slide a ``crop``-sized window over the image and average the overlapping softmax.

    Windows start every ``stride`` pixels (default: ``crop * (1 - overlap)``, rounded up); the
    last window of a row or column is moved back to end at the image border, so every window
    is a full crop and every pixel is covered (mmsegmentation's slide inference). Each pixel's
    probabilities are divided by the number of windows that saw it (a count map). An image
    smaller than the crop is padded at the bottom/right with zeros, which is the dataset mean
    after normalisation (what training pads with), and the padding is cut off again.
    ``batch_windows`` windows go through the model at once (faster on a GPU).
    """
    _check_image(image)
    with eval_mode(model):
        crop_h, crop_w = _pair(crop, "crop")
        if stride is None:
            if not 0 <= overlap < 1:
                raise SegflowError(f"sliding inference: overlap {overlap} must be in [0, 1)")
            stride = (math.ceil(crop_h * (1 - overlap)), math.ceil(crop_w * (1 - overlap)))
        stride_h, stride_w = _pair(stride, "stride")
        n, _, height, width = image.shape
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        full_h, full_w = height + pad_h, width + pad_w

        boxes = [
            (y, x)
            for y in window_starts(full_h, crop_h, stride_h)
            for x in window_starts(full_w, crop_w, stride_w)
        ]
        total: Tensor | None = None
        if num_classes is not None:
            total = image.new_zeros((n, num_classes, full_h, full_w), dtype=torch.float32)
        count = image.new_zeros((1, 1, full_h, full_w), dtype=torch.float32)
        for i in range(0, len(boxes), max(1, batch_windows)):
            group = boxes[i : i + max(1, batch_windows)]
            windows = torch.cat([image[:, :, y : y + crop_h, x : x + crop_w] for y, x in group])
            probs = _probs(model, windows)
            if total is None:
                total = image.new_zeros((n, probs.shape[1], full_h, full_w), dtype=torch.float32)
            for j, (y, x) in enumerate(group):
                total[:, :, y : y + crop_h, x : x + crop_w] += probs[j * n : (j + 1) * n]
                count[:, :, y : y + crop_h, x : x + crop_w] += 1
        assert total is not None
        return (total / count)[:, :, :height, :width]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) <= 0 for v in pair):
        raise SegflowError(f"sliding inference: {name} {value!r} must be one or two positive ints")
    return int(pair[0]), int(pair[1])


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of the windows along one axis of ``length`` (>= crop) pixels."""
    grids = max(length - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, length - crop) for i in range(grids)]


def predict(
    model: nn.Module,
    image: Tensor,
    mode: str = "single",
    out_size: tuple[int, int] | None = None,
    **options,
) -> Tensor:
    """Dispatch to ``predict_<mode>`` with its keyword options (see :data:`MODES`); the
    probabilities come at ``out_size`` (default: the input's size)."""
    if mode == "single":
        return predict_single(model, image, out_size, **options)
    if mode == "multiscale":
        return predict_multiscale(model, image, **options, out_size=out_size)
    if mode == "sliding":
        probs = predict_sliding(model, image, **options)
        if out_size and tuple(probs.shape[-2:]) != tuple(out_size):
            probs = F.interpolate(probs, tuple(out_size), mode="bilinear", align_corners=False)
        return probs
    raise SegflowError(f"inference mode {mode!r} is not one of {', '.join(MODES)}")
