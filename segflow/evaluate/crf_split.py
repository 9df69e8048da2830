"""The dense CRF over a whole split of saved probabilities, scored as confusion counts.

A split is refined image by image: :func:`crf_over_split_serial` in this process, or
:func:`crf_over_split` as Ray tasks (one task per few images). A task may run on a node that
cannot see the driver's disk (a cluster shares none), so it gets the saved files' bytes
(:class:`SavedProbs`, ~1-2 MB compressed each, through Ray's object store), not their paths nor
the decoded arrays, and returns only the C x C confusion counts. The bytes are decoded exactly as
the file is, and counts are int64, so the Ray sum equals the serial sum exactly, whatever node
ran a task and whatever order the tasks finish in. ``params=None`` scores the plain argmax: the
"without CRF" figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import SplitCounts
from segflow.evaluate.metrics import ConfusionMatrix, metrics_from_confusion
from segflow.postprocess.crf import dense_crf
from segflow.postprocess.crf_params import CRFParams
from segflow.postprocess.probs import list_ids, prob_path, read_prob_bytes
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


@dataclass(frozen=True)
class SavedProbs:
    """One saved-probabilities file's bytes, with its path (to name it in messages)."""

    path: str
    data: bytes

    @classmethod
    def read(cls, path: str | Path) -> SavedProbs:
        if not Path(path).is_file():
            raise SegflowError(f"{path}: saved probabilities not found")
        return cls(str(path), Path(path).read_bytes())


def read_split(prob_dir: str | Path, ids: list[str] | None = None) -> list[SavedProbs]:
    """The saved files of ``ids`` (default: all) in ``prob_dir``, in that order, as bytes: what
    the driver hands to Ray tasks and trials that may run on other nodes."""
    return [SavedProbs.read(path) for path in _split_paths(prob_dir, ids)]


def confusion_of_files(
    files: list[SavedProbs], params: CRFParams | None, num_classes: int
) -> np.ndarray:
    """Confusion counts of each saved-probability file (N x C x C int64); ``params=None``: no CRF.

    This is the unit of work of a Ray task: only the compressed files go in and only the small
    matrices come back.
    """
    out = np.zeros((len(files), num_classes, num_classes), dtype=np.int64)
    for i, saved in enumerate(files):
        label, pred = labels_of_file(saved, params, num_classes)
        cm = ConfusionMatrix(num_classes)
        cm.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(pred))
        out[i] = cm.mat.numpy()
    return out


def labels_of_file(
    saved: SavedProbs, params: CRFParams | None, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) of one saved-probability file: the argmax of its
    probabilities, after the CRF unless ``params`` is None. What the evaluate stage scores."""
    record = read_prob_bytes(saved.data, saved.path)
    if record.probs.shape[0] != num_classes:
        raise SegflowError(
            f"{saved.path}: probs have {record.probs.shape[0]} classes, expected {num_classes}"
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
    """The CRF over every image of ``prob_dir`` in this process (no Ray), one file in memory at
    a time; ``params=None`` scores the raw argmax, the "without CRF" figure."""
    paths = _split_paths(prob_dir, ids)
    return crf_over_files((SavedProbs.read(p) for p in paths), len(paths), params, num_classes)


def crf_over_files(
    files: Iterable[SavedProbs], count: int, params: CRFParams | None, num_classes: int
) -> SplitResult:
    """The same as :func:`crf_over_split_serial` over ``count`` files already read (a Tune
    trial's, handed over by the driver)."""
    counts = SplitCounts(count, num_classes)
    for i, saved in enumerate(files):
        counts.add(i, confusion_of_files([saved], params, num_classes)[0])
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
    task overhead, and small tasks balance best over few cores. ``prob_dir`` is read here, by
    the driver: the tasks get the files' bytes, so they run on any node. ``num_cpus`` sizes a
    local Ray started here; it is ignored when Ray is already running or $RAY_ADDRESS is set.
    """
    import ray

    if images_per_task < 1:
        raise SegflowError(f"crf.images_per_task: {images_per_task} must be >= 1")
    files = read_split(prob_dir, ids)
    connect_ray(num_cpus)
    task = ray.remote(num_cpus=1)(confusion_of_files)
    starts = range(0, len(files), images_per_task)
    refs = {task.remote(files[i : i + images_per_task], params, num_classes): i for i in starts}
    counts = SplitCounts(len(files), num_classes)
    # ray.wait hands back results as tasks finish; each lands at its files' positions.
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for offset, mat in enumerate(ray.get(done[0])):
            counts.add(refs[done[0]] + offset, mat)
    return _result(counts)
