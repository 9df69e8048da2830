"""The dense CRF over a whole split of saved probabilities, scored as confusion counts.

A split is refined image by image: :func:`crf_over_split_serial` in this process, or
:func:`crf_over_split` as Ray tasks (one task per few images; tasks get file paths, not arrays,
so the object store carries only the C x C confusion counts each task returns). Counts are
int64, so the Ray sum equals the serial sum exactly, whatever order the tasks finish in.
``params=None`` scores the plain argmax: the "without CRF" figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import SplitCounts
from segflow.evaluate.metrics import ConfusionMatrix, metrics_from_confusion
from segflow.postprocess.crf import dense_crf
from segflow.postprocess.crf_params import CRFParams
from segflow.postprocess.probs import list_ids, prob_path, read_prob_file
from segflow.raycluster import connect_ray


@dataclass
class SplitResult:
    """Confusion counts summed over a split (rows = truth), the metrics they give, and each
    image's counts (N x 3 x C: TP, GT, predicted pixels per class; in the order of the files)
    for the paired bootstrap of the promotion gate."""

    confusion: np.ndarray
    metrics: dict
    num_images: int
    image_counts: np.ndarray


def confusion_of_files(paths: list[str], params: CRFParams | None, num_classes: int) -> np.ndarray:
    """Confusion counts of each saved-probability file (N x C x C int64); ``params=None``: no CRF.

    This is the unit of work of a Ray task; it reads its inputs itself so that only paths go
    into the object store and only the small matrices come back.
    """
    out = np.zeros((len(paths), num_classes, num_classes), dtype=np.int64)
    for i, path in enumerate(paths):
        label, pred = labels_of_file(path, params, num_classes)
        cm = ConfusionMatrix(num_classes)
        cm.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(pred))
        out[i] = cm.mat.numpy()
    return out


def labels_of_file(
    path: str | Path, params: CRFParams | None, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) of one saved-probability file: the argmax of its
    probabilities, after the CRF unless ``params`` is None. What the evaluate stage scores."""
    record = read_prob_file(path)
    if record.probs.shape[0] != num_classes:
        raise SegflowError(
            f"{path}: probs have {record.probs.shape[0]} classes, expected {num_classes}"
        )
    if params is None:
        return record.label, record.probs.argmax(axis=0)
    return record.label, dense_crf(record.image, record.probs, params).argmax(axis=0)


def _split_paths(prob_dir: str | Path, ids: list[str] | None) -> list[str]:
    ids = list_ids(prob_dir) if ids is None else ids
    if not ids:
        raise SegflowError(f"{prob_dir}: no saved probabilities (*.npz) to refine")
    return [str(prob_path(prob_dir, i)) for i in ids]


def _result(counts: SplitCounts) -> SplitResult:
    mat = counts.confusion
    return SplitResult(
        mat, metrics_from_confusion(mat), len(counts.image_counts), counts.image_counts
    )


def crf_over_split_serial(
    prob_dir: str | Path,
    params: CRFParams | None,
    num_classes: int,
    ids: list[str] | None = None,
) -> SplitResult:
    """The CRF over every image of ``prob_dir`` in this process (no Ray); ``params=None``
    scores the raw argmax, the "without CRF" figure."""
    paths = _split_paths(prob_dir, ids)
    counts = SplitCounts(len(paths), num_classes)
    for i, mat in enumerate(confusion_of_files(paths, params, num_classes)):
        counts.add(i, mat)
    return _result(counts)


def crf_over_split(
    prob_dir: str | Path,
    params: CRFParams | None,
    num_classes: int,
    num_cpus: int | None = None,
    images_per_task: int = 1,
    ids: list[str] | None = None,
) -> SplitResult:
    """The same as :func:`crf_over_split_serial`, as Ray tasks of one CPU each.

    One image per task is the default: an image of 360x480 takes ~1 s of CRF against ~1 ms of
    task overhead, and small tasks balance best over few cores. ``prob_dir`` must be readable
    from every node (shared or network storage) when running on a cluster. ``num_cpus`` sizes
    a local Ray started here; it is ignored when Ray is already running or $RAY_ADDRESS is set.
    """
    import ray

    if images_per_task < 1:
        raise SegflowError(f"crf.images_per_task: {images_per_task} must be >= 1")
    paths = _split_paths(prob_dir, ids)
    connect_ray(num_cpus)
    task = ray.remote(num_cpus=1)(confusion_of_files)
    starts = range(0, len(paths), images_per_task)
    refs = {task.remote(paths[i : i + images_per_task], params, num_classes): i for i in starts}
    counts = SplitCounts(len(paths), num_classes)
    # ray.wait hands back results as tasks finish; each lands at its files' positions.
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for offset, mat in enumerate(ray.get(done[0])):
            counts.add(refs[done[0]] + offset, mat)
    return _result(counts)
