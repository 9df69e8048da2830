"""The served path's network part as one ``nn.Module``: what an exported model computes.

:class:`ServedGraph` takes what a camera or a file gives, uint8 RGB images N x H x W x 3 of any
size, and returns what :class:`segflow.evaluate.serving.Predictor` computes before its CRF, with
the same arithmetic in the same order:

1. the image to the training scale (:func:`segflow.deploy.resize.resize_to`, OpenCV's filter),
2. normalised as training normalised it (``(pixel - 255 mean) / (255 std)``),
3. the serving spec's inference mode: one pass, multi-scale + flip (the softmax of every
   rescaled and flipped copy, averaged), or sliding windows (the softmax of overlapping
   training-crop windows, averaged per pixel),
4. logits (or probabilities) resized back to the image's own H x W,
5. ``argmax`` to a uint8 label map, or the probabilities N x C x H x W for a CRF outside.

Everything that depends on the image's size is computed from the tensor's shape, without a
Python branch on it, so one graph serves every size; everything the serving spec decides
(mode, scales, windows) is fixed when the graph is built. The same code is exported through
``torch.export`` (ONNX) and compiled by TorchScript, whose subset of Python it keeps to.

With argmax and single-scale inference the softmax is skipped: it does not change which class
is largest, and on a 4000x3000 image it is 130 M exponentials.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segflow.deploy.resize import resize_to
from segflow.errors import SegflowError
from segflow.evaluate.inference import MODES, window_starts
from segflow.evaluate.serving import ServingSpec

#: What the exported graph's input and outputs are called.
INPUT, LABELS, PROBS = "image", "labels", "probs"


class ServedGraph(nn.Module):
    """uint8 N x H x W x 3 RGB -> uint8 N x H x W labels (``argmax``) or float32 N x C x H x W
    probabilities, by the serving spec's path (see the module docstring)."""

    has_size: bool
    height: int
    width: int
    mode: str
    scales: list[float]
    flip: bool
    windows: list[tuple[int, int]]
    crop_h: int
    crop_w: int
    pad_h: int
    pad_w: int
    argmax: bool

    def __init__(self, network: nn.Module, spec: ServingSpec, argmax: bool):
        super().__init__()
        if spec.mode not in MODES:
            raise SegflowError(f"serving spec: inference mode {spec.mode!r} is not one of {MODES}")
        network = network.eval()
        # Built as normalize_images builds them (float32, then x 255): the same numbers.
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.has_size = spec.input_size is not None
        self.height, self.width = spec.input_size or (0, 0)
        self.mode = spec.mode
        self.argmax = argmax
        options = dict(spec.options)
        self.scales = [float(s) for s in options.get("scales", [1.0])]
        self.flip = bool(options.get("flip", False))
        if self.mode == "multiscale":
            _check_multiscale(self.scales, options)
        self.windows, self.crop_h, self.crop_w, self.pad_h, self.pad_w = [], 0, 0, 0, 0
        self.register_buffer("count", torch.ones(1, 1, 1, 1))
        if self.mode == "sliding":
            self._plan_windows(options)
        # One entry per scale, all the same module here; TorchScript export replaces each with
        # the network traced at that scale's size (segflow.deploy.export).
        copies = len(self.scales) if self.mode == "multiscale" else 1
        self.networks = nn.ModuleList([network] * copies)

    def network_sizes(self) -> list[tuple[int, int]] | None:
        """The (height, width) each entry of ``networks`` runs at; None when it depends on the
        image (no training scale in the spec)."""
        if not self.has_size:
            return None
        if self.mode == "sliding":
            return [(self.crop_h, self.crop_w)]
        if self.mode == "multiscale":
            return [
                (math.floor(self.height * s + 0.5), math.floor(self.width * s + 0.5))
                for s in self.scales
            ]
        return [(self.height, self.width)]

    def _plan_windows(self, options: dict) -> None:
        """The sliding windows over the training-scale image: fixed once its size is."""
        if not self.has_size:
            raise SegflowError(
                "sliding-window inference at the image's own size (the serving spec has no "
                "input_size: shards not resized) runs a number of windows that depends on each "
                "image, which a fixed graph cannot; export needs shard.resize_height/width"
            )
        crop = options["crop"]
        crop_h, crop_w = (crop, crop) if isinstance(crop, int) else (int(crop[0]), int(crop[1]))
        stride = options.get("stride")
        if stride is None:
            overlap = float(options.get("overlap", 1 / 3))
            stride = (math.ceil(crop_h * (1 - overlap)), math.ceil(crop_w * (1 - overlap)))
        stride_h, stride_w = (stride, stride) if isinstance(stride, int) else stride
        self.crop_h, self.crop_w = crop_h, crop_w
        self.pad_h, self.pad_w = max(crop_h - self.height, 0), max(crop_w - self.width, 0)
        full_h, full_w = self.height + self.pad_h, self.width + self.pad_w
        self.windows = [
            (y, x)
            for y in window_starts(full_h, crop_h, int(stride_h))
            for x in window_starts(full_w, crop_w, int(stride_w))
        ]
        count = torch.zeros(1, 1, full_h, full_w)
        for y, x in self.windows:
            count[:, :, y : y + crop_h, x : x + crop_w] += 1
        self.count = count

    def forward(self, image: Tensor) -> Tensor:
        out_h, out_w = image.shape[1], image.shape[2]
        x = image.permute(0, 3, 1, 2).float()
        if self.has_size:
            x = resize_to(x, self.height, self.width)
        x = (x - self.mean) / self.std
        if self.mode == "multiscale":
            scores = self._multiscale(x, out_h, out_w)
        elif self.mode == "sliding":
            scores = self._sliding(x, out_h, out_w)
        else:
            logits = torch.zeros(0)
            for network in self.networks:
                logits = self._resized(network(x), out_h, out_w)
            scores = logits if self.argmax else logits.softmax(dim=1)
        if self.argmax:
            return scores.argmax(dim=1).to(torch.uint8)
        return scores

    def _resized(self, logits: Tensor, height: int, width: int) -> Tensor:
        """Logits at (height, width); bilinear at the same size is the identity, so there is no
        branch on the size (the served path skips the call then: same numbers)."""
        return F.interpolate(
            logits.float(), size=[height, width], mode="bilinear", align_corners=False
        )

    def _multiscale(self, x: Tensor, out_h: int, out_w: int) -> Tensor:
        """predict_multiscale: each copy resized by the scale (rounded to the nearest pixel),
        flipped, its logits resized to the output size, softmaxed, flipped back, averaged."""
        height, width = x.shape[2], x.shape[3]
        total = torch.zeros(0)
        count = 0
        for i, network in enumerate(self.networks):
            scale = self.scales[i]
            size = [math.floor(height * scale + 0.5), math.floor(width * scale + 0.5)]
            scaled = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flipped in [False, True] if self.flip else [False]:
                copy = scaled.flip(-1) if flipped else scaled
                p = self._resized(network(copy), out_h, out_w).softmax(dim=1)
                p = p.flip(-1) if flipped else p
                total = p if count == 0 else total + p
                count += 1
        return total / count

    def _sliding(self, x: Tensor, out_h: int, out_w: int) -> Tensor:
        """predict_sliding over the training-scale image, then resized to the output size."""
        if self.pad_h > 0 or self.pad_w > 0:
            x = F.pad(x, [0, self.pad_w, 0, self.pad_h], value=0.0)
        full_h, full_w = self.height + self.pad_h, self.width + self.pad_w
        total = torch.zeros(0)
        first = True
        network = self.networks[0]
        for y, x0 in self.windows:
            window = x[:, :, y : y + self.crop_h, x0 : x0 + self.crop_w]
            p = self._resized(network(window), self.crop_h, self.crop_w).softmax(dim=1)
            # Placed by padding, not by writing into a slice: the same sums (zeros elsewhere).
            placed = F.pad(p, [x0, full_w - x0 - self.crop_w, y, full_h - y - self.crop_h])
            total = placed if first else total + placed
            first = False
        probs = (total / self.count)[:, :, : self.height, : self.width]
        return F.interpolate(probs, size=[out_h, out_w], mode="bilinear", align_corners=False)


def _check_multiscale(scales: list[float], options: dict) -> None:
    if options.get("sliding"):
        raise SegflowError(
            "serving spec: multi-scale inference with sliding windows per scale is not "
            "exportable yet (the windows of each scale would have to be planned in the graph)"
        )
    if not scales or any(s <= 0 for s in scales):
        raise SegflowError(f"serving spec: multiscale scales {scales} must be positive")
