"""Predict a whole split of the shards and keep what the CRF and the report need.

The crf_tune and evaluate stages both run the trained model over every image of a split at
its stored size (the eval transform: normalise only), in the inference mode of
``params.evaluate``. Each image's softmax goes to a compact ``<id>.npz`` (image, label,
quantised probabilities; see :mod:`segflow.postprocess.probs`) so that the CRF can run later,
in other processes, one image at a time. The confusion counts of the plain argmax are summed
on the way, from the full-precision probabilities, so "without CRF" needs no second pass; each
image's own counts (TP, GT, predicted pixels per class) are kept for the paired bootstrap of the
promotion gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segflow.config import EvaluateParams, LoaderParams
from segflow.data.loader import ShardReader, split_files
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import SplitCounts
from segflow.evaluate.inference import normalize, predict
from segflow.evaluate.metrics import ConfusionMatrix
from segflow.io import atomic_dir
from segflow.postprocess.probs import save_probs


def inference_options(evaluate: EvaluateParams, loader: LoaderParams) -> dict:
    """Keyword options of :func:`segflow.evaluate.inference.predict` for ``evaluate.mode``."""
    if evaluate.mode == "multiscale":
        return {"scales": tuple(evaluate.scales), "flip": evaluate.flip}
    if evaluate.mode == "sliding":
        # The training crop by default: the model has only ever seen windows of that size.
        crop = (
            evaluate.crop_height or loader.crop_height,
            evaluate.crop_width or loader.crop_width,
        )
        return {"crop": crop, "overlap": evaluate.overlap}
    return {}


def file_ids(sample_ids: list[str]) -> list[str]:
    """Sample ids as file names of probability files: odd characters (Cityscapes'
    ``city/frame``) become ``_``, and a name taken twice gets the row number appended."""
    out: list[str] = []
    seen: set[str] = set()
    for row, sample_id in enumerate(sample_ids):
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", sample_id).lstrip(".") or "sample"
        if name in seen:
            name = f"{name}_{row}"
        seen.add(name)
        out.append(name)
    return out


@dataclass
class SplitPrediction:
    """Files written (``file_ids[i]`` is the file of ``sample_ids[i]``), argmax confusion counts
    (C x C int64, rows = truth), per-image counts (N x 3 x C, see evaluate.bootstrap) and the size
    of the first image (for the speed measurement)."""

    sample_ids: list[str]
    file_ids: list[str]
    confusion: np.ndarray
    image_counts: np.ndarray
    image_size: tuple[int, int]


def predict_split(
    model: nn.Module,
    shard_dir: str | Path,
    split: str,
    out_dir: str | Path,
    num_classes: int,
    evaluate: EvaluateParams,
    loader: LoaderParams,
    dtype: str = "uint8",
    max_images: int | None = None,
    device: torch.device | str = "cpu",
) -> SplitPrediction:
    """Predict the first ``max_images`` (default: all) images of ``split`` in shard order and
    save one probability file per image in ``out_dir``, which is replaced as a whole
    (atomically: a failure leaves the previous directory in place)."""
    reader = ShardReader(split_files(Path(shard_dir), split))
    count = len(reader) if max_images is None else min(max_images, len(reader))
    sample_ids = [reader.sample_id(i) for i in range(count)]
    names = file_ids(sample_ids)
    options = inference_options(evaluate, loader)
    model = model.to(device)
    counts = SplitCounts(len(names), num_classes)
    image_size = (0, 0)
    with atomic_dir(out_dir) as tmp:
        for i, name in enumerate(names):
            image, label = reader.decoded(i)
            if i == 0:
                image_size = (int(image.shape[0]), int(image.shape[1]))
            x = normalize(image, loader.mean, loader.std, device)
            probs = predict(model, x, evaluate.mode, **options)[0].cpu()
            if probs.shape[0] != num_classes:
                raise SegflowError(
                    f"{shard_dir}: the model predicts {probs.shape[0]} classes, the {split} "
                    f"split has {num_classes}; it was trained on another class table"
                )
            cm = ConfusionMatrix(num_classes)
            cm.update(torch.from_numpy(label.astype(np.int64)), probs.argmax(dim=0))
            counts.add(i, cm.mat.numpy())
            save_probs(tmp, name, image, label, probs.numpy(), dtype)
    return SplitPrediction(sample_ids, names, counts.confusion, counts.image_counts, image_size)
