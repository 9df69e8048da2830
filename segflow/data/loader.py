"""Reading shards for training and evaluation: memory-mapped Arrow IPC -> decode -> transform.

Each DataLoader worker memory-maps the shard files itself (lazily, after the fork) and slices
the encoded PNG/JPEG bytes straight out of the mapping, so the only per-sample work is the
decode and the augmentation.

How samples are split (the contract distributed training relies on): one epoch is a global
order of all N samples, a permutation seeded by (seed, epoch) when shuffling, so every rank
computes the same order without talking to the others. Rank r takes positions r, r+W, r+2W...
of that order; within a rank, DataLoader worker k takes whole batches k, k+K, k+2K... so that
the DataLoader's round-robin over workers hands the batches back in the rank's order, and the
sample order does not depend on the number of workers. When W does not divide N:

* ``even=True`` (training): the order is padded by repeating its first samples until every
  rank has ceil(N/W), as torch's DistributedSampler does; DDP needs equal step counts per rank
  or the gradient all-reduce hangs. With ``full_batches=True`` as well (the training loader),
  each rank's share is padded on to a whole number of batches the same way, so the epoch's
  last, incomplete batch is filled rather than dropped: every sample is seen every epoch
  (20 images at batch 8: 3 steps of 8, 4 images repeated, where dropping the last batch would
  skip 4 images each epoch). The repeats are the first samples of that epoch's shuffled order,
  so they change from epoch to epoch, and every rank still gets the same number of steps.
* ``drop_last=True``: the order is cut to floor(N/W) per rank instead.
* neither (evaluation): every sample exactly once; ranks differ by at most one sample, which is
  fine because evaluation sums confusion matrices once at the end rather than per step.

Augmentation is reseeded per sample from (seed, epoch, position), so an epoch is reproducible
bit for bit whatever the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from segflow.config import LoaderParams
from segflow.data.shards import INDEX_NAME, read_index
from segflow.data.store import is_remote, local_shards
from segflow.data.transforms import eval_transform, reseed, train_transform
from segflow.errors import SegflowError

Transform = Callable[..., dict]

# OpenCV >= 4.11 decodes straight to RGB, saving a full-image cvtColor per sample.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def decode_image(buf: np.ndarray) -> np.ndarray | None:
    """Encoded PNG/JPEG bytes -> H x W x 3 uint8 RGB (None when not decodable)."""
    if _IMREAD_RGB is not None:
        return cv2.imdecode(buf, _IMREAD_RGB)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_mask(buf: np.ndarray) -> np.ndarray | None:
    """Encoded PNG bytes -> H x W uint8 train ids, exactly as stored."""
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def split_files(shard_dir: str | Path, split: str) -> list[tuple[Path, int]]:
    """(shard file, rows) of one split, in index order; an unknown split names the index.

    ``shard_dir`` may be an object-store URI: the files are then this node's cached copies
    (:func:`segflow.data.store.local_shards`), so everything below memory-maps local files.
    """
    shard_dir = local_shards(shard_dir, split)
    index = read_index(shard_dir)
    splits = index["splits"]
    if split not in splits:
        raise SegflowError(
            f"{Path(shard_dir) / INDEX_NAME}: no split {split!r} (has {sorted(splits)})"
        )
    return [(Path(shard_dir) / f["path"], int(f["rows"])) for f in splits[split]["files"]]


class ShardReader:
    """Random access to the encoded rows of a list of shard files through memory maps.

    ``encoded(i)`` returns numpy views into the mapped files: no copy is made until the decode.
    """

    def __init__(self, files: list[tuple[Path, int]]) -> None:
        self._ids: list[str] = []
        self._images: list[_BinaryColumn] = []
        self._masks: list[_BinaryColumn] = []
        # Original-resolution copies (shards resized to a training scale); None: not kept.
        self._native: list[tuple[_BinaryColumn, _BinaryColumn] | None] = []
        self._paths: list[Path] = []  # shard file of each record batch, for error messages
        batch_of, row_of = [], []
        for path, expected_rows in files:
            if not path.is_file():
                raise SegflowError(
                    f"{path}: shard file listed in the index is missing; rerun dvc repro shard"
                )
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            rows = 0
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                batch_of.append(np.full(batch.num_rows, len(self._images)))
                row_of.append(np.arange(batch.num_rows))
                self._ids.extend(batch.column("id").to_pylist())
                self._images.append(_BinaryColumn(batch.column("image")))
                self._masks.append(_BinaryColumn(batch.column("mask")))
                native = batch.schema.get_field_index("native_image") >= 0
                if native and batch.column("native_image").null_count == 0:
                    cols = (batch.column("native_image"), batch.column("native_mask"))
                    self._native.append((_BinaryColumn(cols[0]), _BinaryColumn(cols[1])))
                else:
                    self._native.append(None)
                self._paths.append(path)
                rows += batch.num_rows
            if rows != expected_rows:
                raise SegflowError(
                    f"{path}: has {rows} rows but the index says {expected_rows}; "
                    "the shards changed after the index was written (rerun dvc repro shard)"
                )
        self._batch_of = np.concatenate(batch_of) if batch_of else np.zeros(0, np.int64)
        self._row_of = np.concatenate(row_of) if row_of else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def sample_id(self, i: int) -> str:
        return self._ids[i]

    def encoded(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        b, r = self._batch_of[i], self._row_of[i]
        return self._images[b][r], self._masks[b][r]

    def decoded(self, i: int, native: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(RGB image, mask) of row ``i``; an undecodable row names its shard and sample id.

        ``native``: at the original resolution when the shards keep it (a split of resized
        shards other than train), else as stored (which then is the original).
        """
        b, r = self._batch_of[i], self._row_of[i]
        columns = self._native[b] if native else None
        if columns is not None:
            image_buf, mask_buf = columns[0][r], columns[1][r]
        else:
            image_buf, mask_buf = self.encoded(i)
        image, mask = decode_image(image_buf), decode_mask(mask_buf)
        if image is None or mask is None:
            what = "image" if image is None else "mask"
            raise SegflowError(
                f"{self._paths[self._batch_of[i]]}: {what} of sample {self._ids[i]!r} is not "
                "decodable; rerun dvc repro shard"
            )
        return image, mask


class _BinaryColumn:
    """Zero-copy row access to an Arrow binary column: offsets + data buffer as numpy views."""

    def __init__(self, array: pa.Array) -> None:
        _, offsets, data = array.buffers()
        dtype = np.int64 if pa.types.is_large_binary(array.type) else np.int32
        self.offsets = np.frombuffer(offsets, dtype=dtype)[
            array.offset : array.offset + len(array) + 1
        ]
        self.data = (
            np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        )

    def __getitem__(self, row: int) -> np.ndarray:
        return self.data[self.offsets[row] : self.offsets[row + 1]]


def to_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """HWC image -> contiguous CHW tensor; a normalised (float) image becomes float32 and its
    mask int64 (what cross-entropy wants), a uint8 image stays uint8 and so does its mask."""
    chw, mask = to_arrays(image, mask)
    return torch.from_numpy(chw), torch.from_numpy(mask)


def to_arrays(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The numpy side of :func:`to_tensors`.

    The transposing copy is made here because collating permuted views costs ~4x more
    (torch.stack over strided inputs: ~1 ms per 360x480 float image against ~0.3 ms here).
    """
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image.transpose(2, 0, 1)), np.ascontiguousarray(mask)
    chw = np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1))
    return chw, mask.astype(np.int64)


def normalize_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 (or 0..255 float) N x 3 x H x W -> ``(pixel / 255 - mean) / std`` per channel, the
    arithmetic of albumentations' ``Normalize`` in training, on whatever device holds them."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - m) / s


def normalize_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 N x 3 x H x W images and uint8 masks -> what the float loader gives: normalised
    float32 images and int64 masks, computed wherever the tensors are (normally the GPU).

    The uint8 loader (``make_dataloader(..., uint8=True)``) moves a quarter of the image bytes
    and an eighth of the mask bytes between worker processes and to the device, and leaves the
    per-pixel float work to the device (benchmarks/RESULTS.md, "a8").
    """
    return normalize_images(images, mean, std), masks.long()


class ShardDataset(IterableDataset):
    """The samples of one split, split across ranks and DataLoader workers (see module doc).

    Yields ``{"id": str, "image": float32 3xHxW, "mask": int64 HxW}`` when the transform
    normalises; when it leaves the image uint8 (or there is none) the image is uint8 3xHxW and
    the mask uint8 HxW, for :func:`normalize_batch` on the device. ``batch_size`` only sets the
    granularity of the worker split; pass the DataLoader's batch size so batches come back in
    rank order.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        split: str,
        transform: Transform | None = None,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: bool = False,
        drop_last: bool = False,
        batch_size: int = 1,
        full_batches: bool = False,
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise SegflowError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        if batch_size < 1:
            raise SegflowError(f"batch_size must be positive (got {batch_size})")
        # Where the shards are (an object-store URI stays one): a process on another node (a
        # Ray Data task) fetches its own copy from there; files are this node's (cached) copies.
        self.location = shard_dir
        self.shard_dir = local_shards(shard_dir, split)
        self.split = split
        self.files = split_files(self.shard_dir, split)
        self.num_samples = sum(rows for _, rows in self.files)
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.even = even
        self.drop_last = drop_last
        self.batch_size = batch_size
        self.full_batches = full_batches
        self.epoch = 0
        self._reader: ShardReader | None = None
        self._reader_pid: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Pick the epoch's order; call before creating the epoch's DataLoader iterator."""
        self.epoch = epoch

    def _per_rank(self) -> int:
        n, w = self.num_samples, self.world_size
        if self.drop_last:
            return n // w
        if self.even:
            if self.full_batches:  # whole batches: nothing left over for drop_last to drop
                return math.ceil(math.ceil(n / w) / self.batch_size) * self.batch_size
            return math.ceil(n / w)
        return len(range(self.rank, n, w))

    def __len__(self) -> int:
        """Samples this rank yields per epoch (over all of its workers)."""
        return self._per_rank()

    def epoch_order(self) -> np.ndarray:
        """The global sample order of the current epoch, before splitting across ranks."""
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)

    def rank_positions(self) -> np.ndarray:
        """Positions in the (padded or cut) epoch order that this rank reads, in order."""
        total = (
            self._per_rank() * self.world_size
            if (self.even or self.drop_last)
            else self.num_samples
        )
        return np.arange(self.rank, total, self.world_size)

    def worker_positions(self, worker: int, num_workers: int) -> np.ndarray:
        """Positions this DataLoader worker reads: whole batches worker, worker+K, ..."""
        positions = self.rank_positions()
        batch_number = np.arange(len(positions)) // self.batch_size
        return positions[batch_number % num_workers == worker]

    def _open(self) -> ShardReader:
        # Opened in the process that iterates (a worker, after fork), never shared across a fork.
        if self._reader is None or self._reader_pid != os.getpid():
            if is_remote(self.location) and not all(path.is_file() for path, _ in self.files):
                self.files = split_files(self.location, self.split)  # unpickled on another node
            self._reader = ShardReader(self.files)
            self._reader_pid = os.getpid()
        return self._reader

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_reader"] = state["_reader_pid"] = None  # memory maps do not pickle; reopen
        return state

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        yield from self.samples_at(self.worker_positions(worker, num_workers))

    def samples_at(self, positions: Sequence[int]) -> Iterator[dict]:
        """The samples at ``positions`` of the current epoch's order, decoded and augmented."""
        reader = self._open()
        order = self.epoch_order()
        for position in positions:
            # Positions past N are the padding of even=True: they wrap to the order's start.
            index = int(order[position % self.num_samples])
            yield self.load(reader, index, int(position))

    def load(self, reader: ShardReader, index: int, position: int) -> dict:
        image, mask = reader.decoded(index)
        if self.transform is not None:
            reseed(self.transform, (self.seed, self.epoch, position))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image_t, mask_t = to_tensors(image, mask)
        return {"id": reader.sample_id(index), "image": image_t, "mask": mask_t}


def _init_worker(_: int) -> None:
    # Parallelism comes from the worker processes; OpenCV's and torch's own thread pools inside
    # each worker would only oversubscribe the cores.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_dataloader(
    shard_dir: str | Path,
    split: str,
    params: LoaderParams,
    train: bool,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    uint8: bool = False,
) -> DataLoader:
    """The DataLoader of one rank.

    Training: augmented crops, shuffled per epoch (call ``loader.dataset.set_epoch(e)`` before
    each epoch), padded to equal, whole batches per rank: an epoch is ceil(ceil(N / ranks) /
    batch_size) steps and covers every training image (the last batch is filled with repeats of
    the epoch's first samples, never dropped; see the module docstring). Evaluation: full
    images, normalised only, every sample exactly once; batched only when all images of the
    split have one size, otherwise one image per batch.

    ``uint8=True`` skips normalisation: batches hold uint8 images and masks, to be turned into
    the float/int64 pair by :func:`normalize_batch` after the copy to the device.

    Workers are not persistent: each epoch's iterator starts them afresh, which is how the epoch
    set by ``set_epoch`` reaches them (a persistent worker would keep its first epoch's order).
    They start from a forkserver that has imported this module but run nothing: a plain fork of
    a process whose OpenMP/OpenCV thread pools are live can deadlock in the child (seen here
    after a model had run in the parent), and a forkserver child is still cheap to start.
    """
    index = read_index(local_shards(shard_dir, split))  # the index of this node's copy
    if train:
        pixels = None
        if params.rare_class_crop > 0:
            pixels = index["splits"][split]["class_pixels"]
        dataset = ShardDataset(
            shard_dir,
            split,
            train_transform(params, normalize=not uint8, class_pixels=pixels),
            shuffle=True,
            seed=seed,
            rank=rank,
            world_size=world_size,
            even=True,
            batch_size=batch_size,
            full_batches=True,
        )
        per_rank = math.ceil(dataset.num_samples / world_size)
        if per_rank < batch_size:  # a batch of mostly repeats is not a batch of the data
            raise SegflowError(
                f"split {split!r} gives {per_rank} samples per rank ({world_size} ranks), "
                f"fewer than the batch size {batch_size}: no full training batch"
            )
    else:
        sizes = index["splits"].get(split, {}).get("sizes", [])
        if len(sizes) != 1:
            batch_size = 1
        dataset = ShardDataset(
            shard_dir,
            split,
            eval_transform(params, normalize=not uint8),
            shuffle=False,
            seed=seed,
            rank=rank,
            world_size=world_size,
            batch_size=batch_size,
        )
    return batches_of(dataset, batch_size, params.num_workers, drop_last=train)


def batches_of(
    dataset: ShardDataset, batch_size: int, num_workers: int, drop_last: bool
) -> DataLoader:
    """The DataLoader over any :class:`ShardDataset` (a split, or a subset of one), with the
    worker set-up every segflow loader needs (see :func:`make_dataloader`)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_init_worker,
        multiprocessing_context=_worker_context() if num_workers > 0 else None,
    )


def _worker_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # workers fork with torch, cv2 and this module loaded
    return ctx
