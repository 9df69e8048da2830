"""Compact storage of a split's softmax probabilities, with each image and its label map.

The CRF needs, per image, the RGB image, the network's class probabilities and (to score it)
the label map. Kept as float32 for CamVid val that is 101 x 11 x 360 x 480 x 4 B = 768 MB, too
much to hold or to pass around; stored here it is ~1-2 MB per image on disk, and a reader holds
one image at a time.

Layout: one ``<id>.npz`` per image in a directory, holding ``image`` (HxWx3 uint8), ``label``
(HxW uint8, 255 = ignore) and ``probs`` (CxHxW). A file per image rather than one Arrow file
per split because (a) inference writes images one by one, each file atomically, without a
writer held open over the split, (b) a Ray task opens exactly the files of its images by path,
with no shared reader or offsets, and (c) zlib (``savez_compressed``) shrinks the mostly
saturated probability planes 5-10x, where Arrow would need its own compression settings.

Quantisation, ``dtype="uint8"`` (default): q = round(255 p). On load p' = max(q / 255, eps),
renormalised to sum 1. Each stored value is within 0.5/255 of p, and the argmax is kept
whenever the top two probabilities differ by more than 1/255 (rounding moves each by at most
0.5/255); closer near-ties may swap, which changes nothing the CRF or a metric can see. The
floor eps keeps -log p' finite where q = 0. ``dtype="float16"`` keeps ~3 significant digits at
twice the size, for when near-ties matter.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.errors import SegflowError
from segflow.io import atomic_path

#: Floor for dequantised probabilities (a stored 0 becomes this before renormalising).
EPS = 1e-6
DTYPES = ("uint8", "float16")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass
class ProbRecord:
    """One image: RGB (HxWx3 uint8), label map (HxW uint8) and probabilities (CxHxW float32)."""

    image: np.ndarray
    label: np.ndarray
    probs: np.ndarray


def prob_path(directory: str | Path, sample_id: str) -> Path:
    if not _SAFE_ID.match(sample_id) or sample_id.startswith("."):
        raise SegflowError(
            f"sample id {sample_id!r}: must be letters, digits, '_', '-', '.' (used as a file name)"
        )
    return Path(directory) / f"{sample_id}.npz"


def quantize(probs: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    """Probabilities (CxHxW, summing to 1 over C) to their stored form."""
    if dtype == "uint8":
        return np.rint(np.clip(probs, 0.0, 1.0) * 255.0).astype(np.uint8)
    if dtype == "float16":
        return probs.astype(np.float16)
    raise SegflowError(f"probs dtype: {dtype!r} must be one of {DTYPES}")


def dequantize(stored: np.ndarray) -> np.ndarray:
    """Stored probabilities back to float32 that sum to 1 over axis 0, none below ``EPS``."""
    p = stored.astype(np.float32)
    if stored.dtype == np.uint8:
        p /= 255.0
    np.maximum(p, EPS, out=p)
    p /= p.sum(axis=0, keepdims=True)
    return p


def save_probs(
    directory: str | Path,
    sample_id: str,
    image: np.ndarray,
    label: np.ndarray,
    probs: np.ndarray,
    dtype: str = "uint8",
) -> Path:
    """Write one image's record to ``directory/<sample_id>.npz`` atomically; returns the path."""
    path = prob_path(directory, sample_id)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegflowError(f"{path}: image must be HxWx3 uint8, got {image.shape} {image.dtype}")
    if label.shape != image.shape[:2]:
        raise SegflowError(f"{path}: label {label.shape} must match image {image.shape[:2]}")
    if label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise SegflowError(f"{path}: label values must be 0-255 (255 = ignore)")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise SegflowError(f"{path}: probs must be CxHxW with H, W = {image.shape[:2]}")
    stored = quantize(probs, dtype)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # A file object, because np.savez appends ".npz" to a name that lacks it.
        np.savez_compressed(f, image=image, label=label.astype(np.uint8), probs=stored)
    return path


def read_prob_file(path: str | Path) -> ProbRecord:
    """Read one ``.npz`` written by :func:`save_probs`."""
    path = Path(path)
    if not path.is_file():
        raise SegflowError(f"{path}: saved probabilities not found")
    return read_prob_bytes(path.read_bytes(), path)


def read_prob_bytes(data: bytes, name: str | Path) -> ProbRecord:
    """The same as :func:`read_prob_file`, from the file's bytes (``name`` for messages): how a
    Ray task on a node that cannot open the file reads it."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            return ProbRecord(arrays["image"], arrays["label"], dequantize(arrays["probs"]))
    except (KeyError, ValueError, OSError) as err:
        raise SegflowError(f"{name}: not a saved-probabilities file ({err})") from err


def load_probs(directory: str | Path, sample_id: str | None = None) -> ProbRecord:
    """``load_probs(dir, id)``; ``load_probs(path)`` reads a file path directly."""
    if sample_id is None:
        return read_prob_file(directory)
    return read_prob_file(prob_path(directory, sample_id))


def list_ids(directory: str | Path) -> list[str]:
    """Sample ids saved in ``directory``, sorted (so every pass visits them in one order)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SegflowError(f"{directory}: probability directory not found")
    return sorted(p.stem for p in directory.glob("*.npz") if not p.name.startswith("."))
