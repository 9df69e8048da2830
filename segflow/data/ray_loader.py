"""The Ray Data training loader (``loader.backend: ray_data``): decode and augment in Ray tasks.

With ``mmap`` every training worker decodes and augments its own batches (in its process or
its DataLoader processes), so a GPU node needs the CPUs to keep its GPU fed. With ``ray_data``
the same work runs as Ray Data tasks wherever the cluster has free CPUs (CPU-only nodes
included) and the finished uint8 batches stream to the training workers through the object
store: a heterogeneous cluster decodes on its CPU nodes and trains on its GPU nodes.

What is read and how it is augmented is the mmap loader's, not a copy of it: each epoch is
the :class:`~segflow.data.loader.ShardDataset` of the training split (same index, same padded
epoch order seeded by (seed, epoch), same per-position augmentation seed), and a Ray task
turns a block of epoch positions into samples with :meth:`ShardDataset.samples_at`. Only who
gets which batch differs: ``Dataset.streaming_split(world_size, equal=True)`` hands blocks to
whichever training worker asks first, so with several workers the epoch holds the same
samples but their split across ranks is not fixed. With one worker the batches are the mmap
loader's, in the same order (``preserve_order``): the same run on the same seed.

Why not ``TorchTrainer(datasets=...)`` and ``ray.train.get_dataset_shard``: Ray Train splits a
dataset once, when the run starts, and re-executes the same plan every epoch, so the plan
cannot know the epoch: the order and the augmentation would have to be unseeded (a run no
longer reproducible from its params) and a resumed run could not pick up at its epoch. Here
rank 0 plans each epoch when the loop starts it (after ``set_epoch``), splits it with
``streaming_split`` and sends every rank its iterator over torch.distributed, the way Ray
Train would have sent the iterators of its own split.

Validation stays on the mmap loader: it visits every image once, unaugmented and at full size
(images of a split may differ in size), split across ranks by the fixed rank contract of
:mod:`segflow.data.loader` that the summed confusion matrices rely on; ``streaming_split``'s
equal split would drop or repeat images instead, and validation's decode is a small share of
an epoch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from segflow.config import LoaderParams
from segflow.data.loader import ShardDataset, ShardReader, make_dataloader
from segflow.errors import SegflowError

#: Batches a training worker has Ray fetch ahead of the one it trains on.
PREFETCH_BATCHES = 2


def epoch_dataset(dataset: ShardDataset, world_size: int):
    """The epoch ``dataset.epoch`` of ``dataset``'s split as a Ray Data dataset of uint8 rows
    ``{"image": 3xHxW, "mask": HxW}``: positions ``0 .. len(dataset) x world_size - 1`` of the
    padded epoch order, one block (one Ray task) per batch.

    ``dataset`` is the training ShardDataset of any rank (the epoch's positions are the same for
    all); it travels to the tasks pickled, without its memory maps, and each Ray worker process
    maps the shard files once (:meth:`ShardDataset.samples_at`).
    """
    import ray.data  # heavy; only the ray_data backend needs it

    total = len(dataset) * world_size
    ds = ray.data.range(total, override_num_blocks=max(1, math.ceil(total / dataset.batch_size)))
    ds.context.execution_options.preserve_order = True
    # Progress as log lines (INFO: shown with -v), not as bars that Ray relays from the training
    # worker to the driver's output between the loop's own progress lines.
    ds.context.use_ray_tqdm = False
    return ds.map_batches(
        _decode_positions, batch_size=None, batch_format="numpy", fn_kwargs={"dataset": dataset}
    )


def _decode_positions(batch: dict[str, np.ndarray], dataset: ShardDataset) -> dict:
    # One Ray task, one CPU: OpenCV's and torch's own thread pools would oversubscribe it.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    samples = list(dataset.samples_at(batch["id"]))
    return {
        "image": np.stack([s["image"].numpy() for s in samples]),
        "mask": np.stack([s["mask"].numpy() for s in samples]),
    }


class RayDataLoader:
    """A training worker's batches from Ray Data, shaped like the mmap training DataLoader:
    ``dataset.set_epoch(e)`` picks the epoch, ``len()`` is the batches per worker per epoch
    (ceil(ceil(N / workers) / batch) from the shard index, as for mmap), and each batch is a
    dict of uint8 ``image`` (N x 3 x H x W) and ``mask`` (N x H x W) tensors.

    Iterating is collective: every rank must start the epoch's iteration, as DDP's steps
    require anyway (rank 0 plans and splits the epoch and broadcasts the iterators).
    """

    def __init__(self, dataset: ShardDataset, batch_size: int) -> None:
        # A shard file missing or unlike the index fails here, in one line naming it, rather
        # than inside a Ray task.
        ShardReader(dataset.files)
        self.dataset = dataset
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        world_size = self.dataset.world_size
        iterators = None
        if world_size == 1:  # nothing to split: no coordinator actor to start every epoch
            iterators = [epoch_dataset(self.dataset, 1)]
        elif self.dataset.rank == 0:
            # Kept until the epoch ends: the split's coordinator actor lives while rank 0 holds
            # its iterators.
            iterators = epoch_dataset(self.dataset, world_size).streaming_split(
                world_size, equal=True
            )
        mine = _scatter_from_rank0(iterators, self.dataset.rank, world_size)
        try:
            yield from mine.iter_torch_batches(
                batch_size=self.batch_size, drop_last=True, prefetch_batches=PREFETCH_BATCHES
            )
        except Exception as exc:
            message = segflow_message(exc)
            if message is None:
                raise
            raise SegflowError(message) from None


#: The last line of a SegflowError's traceback, as Ray quotes it in a failed task's error.
_SEGFLOW_LINE = re.compile(
    rf"^{re.escape(SegflowError.__module__)}\.{SegflowError.__qualname__}: (.+)$", re.MULTILINE
)


def segflow_message(exc: Exception) -> str | None:
    """The message of the SegflowError that failed a Ray Data task, or None if none did.

    Ray hands the consumer a RayTaskError(UserCodeException) that keeps the task's error only
    as traceback text (the exception itself does not cross the process boundary), so a shard
    error would reach the user as a traceback instead of the one line naming the file.
    """
    found = _SEGFLOW_LINE.findall(str(exc))
    return found[-1] if found else None


def _scatter_from_rank0(items: list | None, rank: int, world_size: int):
    """Rank r's item of rank 0's ``items`` (one per rank), sent over torch.distributed."""
    if world_size == 1:
        assert items is not None
        return items[0]
    box = [items]
    dist.broadcast_object_list(box, src=0)
    return box[0][rank]


def training_loader(
    shard_dir: str | Path,
    params: LoaderParams,
    batch_size: int,
    rank: int,
    world_size: int,
    seed: int,
) -> DataLoader | RayDataLoader:
    """The training loader of one rank for ``params.backend``: the uint8 training DataLoader
    of :func:`~segflow.data.loader.make_dataloader` (``mmap``), or a :class:`RayDataLoader`
    over its ShardDataset (``ray_data``): the same epochs, decoded in Ray tasks."""
    loader = make_dataloader(
        shard_dir, "train", params, True, batch_size, rank, world_size, seed, uint8=True
    )
    if params.backend == "ray_data":
        return RayDataLoader(loader.dataset, batch_size)
    return loader
