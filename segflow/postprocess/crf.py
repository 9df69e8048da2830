"""Fully connected CRF (Krähenbühl & Koltun 2011) on softmax outputs, as in DeepLab v1/v2.

The energy has a unary term -log p(class) from the network and two Potts pairwise kernels
between every pair of pixels i, j (DeepLab's names):

    bilateral  w_bilateral * exp(-|p_i - p_j|^2 / 2 sigma_alpha^2 - |I_i - I_j|^2 / 2 sigma_beta^2)
    Gaussian   w_gauss     * exp(-|p_i - p_j|^2 / 2 sigma_gamma^2)

The bilateral kernel pulls pixels of similar colour nearby towards the same label, which is what
snaps a network's blurry, down-sampled boundaries onto image edges; the Gaussian kernel only
removes small isolated blobs. Mean-field inference (pydensecrf, the authors' C++ code) runs
``iterations`` steps and returns the approximate marginals.

This module is the maths of one image; the settings are :mod:`.crf_params`'s, and running the
CRF over a whole split (and scoring it) is :mod:`segflow.evaluate.crf_split`'s job.
"""

from __future__ import annotations

import numpy as np

from segflow.errors import SegflowError
from segflow.postprocess.crf_params import CRFParams

#: Probabilities are clipped to this before -log so a confident 0 does not become +inf energy.
PROB_FLOOR = 1e-8


def _check_inputs(image: np.ndarray, probs: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegflowError(
            f"dense_crf: image must be an HxWx3 uint8 RGB array, got {image.shape} {image.dtype}"
        )
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise SegflowError(
            f"dense_crf: probs must be CxHxW with H, W of the image {image.shape[:2]}, "
            f"got {probs.shape}"
        )
    if probs.shape[0] < 2:
        raise SegflowError(f"dense_crf: probs has {probs.shape[0]} class(es); need at least 2")


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None) -> np.ndarray:
    """Refine softmax ``probs`` (CxHxW) of an RGB ``image`` (HxWx3 uint8); CxHxW float32 out.

    Deterministic: the same inputs give bit-identical output (pydensecrf is single-threaded).
    """
    import pydensecrf.densecrf as dcrf

    params = params or CRFParams()
    _check_inputs(image, probs)
    num_classes, height, width = probs.shape
    unary = -np.log(np.clip(probs.reshape(num_classes, -1), PROB_FLOOR, 1.0))
    crf = dcrf.DenseCRF2D(width, height, num_classes)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    # A zero weight is a valid point of a sweep ("no such kernel"): skip it instead of
    # adding a kernel that costs a lattice pass and contributes nothing.
    if params.w_gauss > 0:
        crf.addPairwiseGaussian(sxy=float(params.sigma_gamma), compat=float(params.w_gauss))
    if params.w_bilateral > 0:
        crf.addPairwiseBilateral(
            sxy=float(params.sigma_alpha),
            srgb=float(params.sigma_beta),
            rgbim=np.ascontiguousarray(image),
            compat=float(params.w_bilateral),
        )
    q = crf.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(num_classes, height, width)


def refine_labels(
    image: np.ndarray, probs: np.ndarray, params: CRFParams | None = None
) -> np.ndarray:
    """The CRF's label map (HxW uint8 for <= 256 classes, else int64)."""
    labels = dense_crf(image, probs, params).argmax(axis=0)
    return labels.astype(np.uint8) if probs.shape[0] <= 256 else labels
