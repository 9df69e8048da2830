"""Score any image -> label-map function on a split of the shards, as the evaluate stage does.

The same protocol as segflow's evaluation (:mod:`segflow.evaluate.predict_split`): every image
of the split at its *original* resolution (the shards keep it beside the resized copy), one
confusion matrix accumulated over the split with label 255 excluded, and the metrics of
:func:`segflow.evaluate.metrics.metrics_from_confusion` (PA, MPA, per-class IoU, mIoU, FWIoU).
A method that works at the training scale (every baseline here, and the networks) runs there and
its label map is brought back to the original size by nearest neighbour
(:func:`at_training_scale`), inside the timed call, so ``ms_per_image`` is the whole path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from segflow.data.loader import ShardReader, split_files
from segflow.data.shards import resize_image
from segflow.errors import SegflowError
from segflow.evaluate.metrics import ConfusionMatrix, metrics_from_confusion

LabelFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class SplitScore:
    """Metrics of one split (``metrics_from_confusion``'s dict), the confusion matrix, the
    median and mean wall milliseconds per image of the scored call, and the image count."""

    metrics: dict
    confusion: np.ndarray
    ms_per_image: float
    ms_mean: float
    num_images: int


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map at (height, width) by nearest neighbour at pixel centres (as the shards'
    masks were resized), so every pixel keeps a real class."""
    if tuple(labels.shape) == tuple(size):
        return labels
    h, w = size
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def at_training_scale(label_map: LabelFn, input_size: tuple[int, int] | list | None) -> LabelFn:
    """``label_map`` (which works at the training scale) as a function of an original image:
    resize the image to ``input_size`` (the shards' ``resize``; None: as it is), label it,
    bring the labels back to the image's size."""
    if not input_size:
        return label_map
    size = (int(input_size[0]), int(input_size[1]))

    def native(image: np.ndarray) -> np.ndarray:
        return resize_labels(label_map(resize_image(image, size)), image.shape[:2])

    return native


def score_split(
    label_map: LabelFn,
    shard_dir: str | Path,
    split: str,
    num_classes: int,
    max_images: int | None = None,
) -> SplitScore:
    """Label every image of ``split`` (the first ``max_images``) at its original resolution and
    score the labels against the original masks."""
    reader = ShardReader(split_files(shard_dir, split))
    count = len(reader) if max_images is None else min(max_images, len(reader))
    if count == 0:
        raise SegflowError(f"{shard_dir}: split {split!r} has no images to score")
    cm = ConfusionMatrix(num_classes)
    times = []
    for i in range(count):
        image, mask = reader.decoded(i, native=True)
        start = time.perf_counter()
        labels = label_map(image)
        times.append(1000 * (time.perf_counter() - start))
        if labels.shape != mask.shape:
            raise SegflowError(
                f"label map of {reader.sample_id(i)!r} is {labels.shape}, its mask {mask.shape}"
            )
        cm.update(
            torch.from_numpy(mask.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))
        )
    mat = cm.mat.numpy()
    return SplitScore(
        metrics_from_confusion(mat), mat, float(np.median(times)), float(np.mean(times)), count
    )
