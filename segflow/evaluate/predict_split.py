"""Predict a whole split of the shards and keep what the CRF and the report need.

The crf_tune and evaluate stages both run the served path's network part
(:class:`segflow.evaluate.serving.Predictor`) over every image of a split *at its original
resolution*: the image is resized to the training scale for the network and the logits back to
the original size, and the original mask is what is scored (the shards keep both when they were
resized). Each image's softmax goes to a compact ``<id>.npz`` (original image, original label,
quantised probabilities; see :mod:`segflow.postprocess.probs`) so that the CRF can run later,
in other processes, one image at a time, on the original image. The confusion counts of the
plain argmax are summed on the way, from the full-precision probabilities, so "without CRF"
needs no second pass; each image's own counts (TP, GT, predicted pixels per class) are kept for
the paired bootstrap of the promotion gate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segflow.data.loader import ShardReader, split_files
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import SplitCounts
from segflow.evaluate.metrics import ConfusionMatrix
from segflow.evaluate.serving import Predictor
from segflow.io import atomic_dir
from segflow.postprocess.probs import save_probs


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
    (C x C int64, rows = truth), per-image counts (N x 3 x C, see evaluate.bootstrap), and the
    distinct sizes (height, width) the network ran at and the labels were scored at."""

    sample_ids: list[str]
    file_ids: list[str]
    confusion: np.ndarray
    image_counts: np.ndarray
    network_sizes: list[tuple[int, int]]
    label_sizes: list[tuple[int, int]]


def predict_split(
    predictor: Predictor,
    shard_dir: str | Path,
    split: str,
    out_dir: str | Path,
    num_classes: int,
    max_images: int | None = None,
) -> SplitPrediction:
    """Predict the first ``max_images`` (default: all) images of ``split`` in shard order at
    their original resolution and save one probability file per image in ``out_dir``, which is
    replaced as a whole (atomically: a failure leaves the previous directory in place)."""
    reader = ShardReader(split_files(shard_dir, split))
    count = len(reader) if max_images is None else min(max_images, len(reader))
    sample_ids = [reader.sample_id(i) for i in range(count)]
    names = file_ids(sample_ids)
    counts = SplitCounts(len(names), num_classes)
    network_sizes: set[tuple[int, int]] = set()
    label_sizes: set[tuple[int, int]] = set()
    dtype = predictor.spec.prob_dtype
    with atomic_dir(out_dir) as tmp:
        for i, name in enumerate(names):
            image, label = reader.decoded(i, native=True)
            probs = predictor.probs(image)
            if probs.shape[0] != num_classes:
                raise SegflowError(
                    f"{shard_dir}: the model predicts {probs.shape[0]} classes, the {split} "
                    f"split has {num_classes}; it was trained on another class table"
                )
            network_sizes.add(tuple(predictor.network_input(image).shape[:2]))
            label_sizes.add(tuple(label.shape))
            cm = ConfusionMatrix(num_classes)
            cm.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(probs.argmax(0)))
            counts.add(i, cm.mat.numpy())
            save_probs(tmp, name, image, label, probs, dtype)
    return SplitPrediction(
        sample_ids, names, counts.confusion, counts.image_counts,
        sorted(network_sizes), sorted(label_sizes),
    )  # fmt: skip
