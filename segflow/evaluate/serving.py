"""The served path: what the registered model does to an image, and what evaluate scores.

One :class:`ServingSpec` holds every choice between an RGB image and its label map: the inference
mode and its options, the normalisation, the scale the network runs at (the training scale of
resized shards), the CRF decision and setting, and the quantisation of the probabilities the CRF
reads. :class:`Predictor` applies it. The evaluate stage scores the test split through a
Predictor built from the spec it then writes into reports/metrics.json, and the registered
model rebuilds the same Predictor from that spec, so the served model does exactly what was
scored, pixel for pixel:

1. resize the image to ``input_size`` (:func:`segflow.data.shards.resize_image`, the same
   function that made the training shards),
2. normalise and run ``mode`` (single, multiscale + flip, sliding window), resizing the logits
   to the *image's* size (not the training scale): scores and served maps are at the size the
   user gave,
3. with the CRF on: quantise the probabilities as evaluate's saved files do (``prob_dtype``),
   run the dense CRF on the original image,
4. argmax.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segflow.config import EvaluateParams, LoaderParams, Params
from segflow.data.shards import resize_image
from segflow.errors import SegflowError
from segflow.evaluate.inference import normalize, predict
from segflow.postprocess.crf import dense_crf
from segflow.postprocess.crf_params import CRFParams
from segflow.postprocess.probs import dequantize, quantize


def inference_options(evaluate: EvaluateParams, loader: LoaderParams) -> dict:
    """Keyword options of :func:`segflow.evaluate.inference.predict` for ``evaluate.mode``."""
    if evaluate.mode == "multiscale":
        return {"scales": [float(s) for s in evaluate.scales], "flip": evaluate.flip}
    if evaluate.mode == "sliding":
        # The training crop by default: the model has only ever seen windows of that size.
        crop = [
            evaluate.crop_height or loader.crop_height,
            evaluate.crop_width or loader.crop_width,
        ]
        return {"crop": crop, "overlap": evaluate.overlap}
    return {}


@dataclass(frozen=True)
class ServingSpec:
    """Everything the served model does besides the network weights (JSON round-trip)."""

    mode: str = "single"
    options: dict = field(default_factory=dict)
    mean: tuple[float, float, float] = LoaderParams().mean
    std: tuple[float, float, float] = LoaderParams().std
    #: (height, width) the network runs at; None: the image's own size.
    input_size: tuple[int, int] | None = None
    crf: CRFParams | None = None
    prob_dtype: str = "uint8"

    @classmethod
    def from_params(
        cls, params: Params, input_size: list | tuple | None, crf: CRFParams | None
    ) -> ServingSpec:
        """The spec of params.yaml's evaluate/loader sections, the shards' training scale
        (``index["resize"]``) and the CRF that crf_tune chose on val (None: off)."""
        return cls(
            mode=params.evaluate.mode,
            options=inference_options(params.evaluate, params.loader),
            mean=tuple(float(v) for v in params.loader.mean),
            std=tuple(float(v) for v in params.loader.std),
            input_size=(int(input_size[0]), int(input_size[1])) if input_size else None,
            crf=crf,
            prob_dtype=params.crf.prob_dtype,
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["input_size"] = list(self.input_size) if self.input_size else None
        out["crf"] = self.crf.to_dict() if self.crf is not None else None
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "serving spec") -> ServingSpec:
        try:
            size = data.get("input_size")
            crf = data.get("crf")
            return cls(
                mode=str(data["mode"]),
                options=dict(data.get("options") or {}),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                input_size=(int(size[0]), int(size[1])) if size else None,
                crf=CRFParams.from_dict(crf) if crf is not None else None,
                prob_dtype=str(data.get("prob_dtype", "uint8")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise SegflowError(
                f"{source}: not a serving spec ({type(err).__name__}: {err})"
            ) from None

    def describe(self) -> str:
        """One line for logs and reports: mode, scale, CRF."""
        scale = "x".join(map(str, self.input_size)) if self.input_size else "the image's size"
        crf = "CRF on" if self.crf is not None else "no CRF"
        return f"{self.mode} inference at {scale}, {crf}"


class Predictor:
    """A network with its :class:`ServingSpec`: image in, probabilities or label map out."""

    def __init__(self, network: nn.Module, spec: ServingSpec, device: torch.device | str = "cpu"):
        self.network = network.to(device).eval()
        self.spec = spec
        self.device = torch.device(device)
        self.last_timing: dict[str, float] = {}

    def network_input(self, image: np.ndarray) -> np.ndarray:
        """The image at the scale the network runs at."""
        return resize_image(image, self.spec.input_size) if self.spec.input_size else image

    def probs(self, image: np.ndarray) -> np.ndarray:
        """Softmax probabilities (C x H x W float32) at the image's own size, before any CRF."""
        check_image(image)
        s = self.spec
        x = normalize(self.network_input(image), s.mean, s.std, self.device)
        out = predict(self.network, x, s.mode, out_size=tuple(image.shape[:2]), **s.options)
        return out[0].float().cpu().numpy()

    def refine(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """The served CRF on probabilities from :meth:`probs` (as evaluate's saved files hold
        them); the probabilities unchanged when the CRF is off."""
        if self.spec.crf is None:
            return probs
        return dense_crf(image, dequantize(quantize(probs, self.spec.prob_dtype)), self.spec.crf)

    def labels(self, image: np.ndarray) -> np.ndarray:
        """The served label map: H x W uint8 at the image's size. The call's wall time, whole
        and network-only (resize, normalise, inference), is kept in ``last_timing`` (ms)."""
        start = time.perf_counter()
        probs = self.probs(image)
        mid = time.perf_counter()
        probs = self.refine(image, probs)
        if probs.shape[0] > 256:
            raise SegflowError(f"model has {probs.shape[0]} classes; a uint8 label map holds 256")
        labels = probs.argmax(axis=0).astype(np.uint8)
        end = time.perf_counter()
        self.last_timing = {"ms": 1000 * (end - start), "ms_network": 1000 * (mid - start)}
        return labels

    def timed(self, image: np.ndarray, repeats: int, warmup: int = 1) -> dict:
        """Median ms per image of the whole served path and of its network part."""
        served, network = [], []
        for i in range(warmup + repeats):
            self.labels(image)
            if i >= warmup:
                served.append(self.last_timing["ms"])
                network.append(self.last_timing["ms_network"])
        return {
            "ms_per_image": float(np.median(served)),
            "ms_per_image_network": float(np.median(network)),
        }


def check_image(image: np.ndarray) -> None:
    """The served model's input contract, checked before anything runs (short message)."""
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    if (
        not isinstance(image, np.ndarray)
        or image.ndim != 3
        or image.shape[2] != 3
        or image.dtype != np.uint8
    ):
        raise SegflowError(
            f"model input: got {type(image).__name__} of shape {shape} and dtype {dtype}; "
            "expected one H x W x 3 uint8 RGB image (numpy array)"
        )


def load_predictor(checkpoint: str | Path, spec: ServingSpec, device=None) -> Predictor:
    """A Predictor of a checkpoint file (read with weights_only=True)."""
    from segflow.models.checkpoint import default_device, load_model

    device = device or default_device()
    return Predictor(load_model(checkpoint, map_location=str(device)), spec, device)
