"""Loader: memory-mapped reads, the rank x worker split, per-epoch order, DataLoader settings."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from segflow.config import LoaderParams
from segflow.data.datasets.base import ClassInfo, DatasetAdapter, SampleRef
from segflow.data.loader import (
    ShardDataset,
    ShardReader,
    make_dataloader,
    normalize_batch,
    split_files,
)
from segflow.data.manifest import build_manifest
from segflow.data.ray_loader import RayDataLoader, training_loader
from segflow.data.shards import write_shards
from segflow.data.transforms import eval_transform, train_transform
from segflow.errors import SegflowError

N_TRAIN = 11  # prime: no world size or batch size divides it


class TinyAdapter(DatasetAdapter):
    """Random PNG pairs; sample i's image is filled with value i so a row can be traced."""

    name = "tiny"

    def __init__(self, root: Path, sizes: dict[str, list[tuple[int, int]]]):
        self.refs = []
        rng = np.random.default_rng(0)
        root.mkdir(parents=True, exist_ok=True)
        for split, shapes in sizes.items():
            for i, shape in enumerate(shapes):
                sid = f"{split}_{i:03d}"
                mask = rng.integers(0, 3, shape, dtype=np.uint8)
                mask[0, 0] = 255
                cv2.imwrite(str(root / f"{sid}.png"), np.full((*shape, 3), i, np.uint8))
                cv2.imwrite(str(root / f"{sid}_mask.png"), mask)
                self.refs.append(
                    SampleRef(sid, split, root / f"{sid}.png", root / f"{sid}_mask.png")
                )

    def classes(self) -> list[ClassInfo]:
        return [ClassInfo(i, f"class{i}", (0, 0, 80 * i)) for i in range(3)]

    def samples(self) -> Iterator[SampleRef]:
        return iter(self.refs)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, TinyAdapter]:
    root = tmp_path_factory.mktemp("loader")
    adapter = TinyAdapter(
        root / "raw",
        {
            "train": [(24, 32)] * N_TRAIN,
            "val": [(24, 32), (24, 32), (20, 28)],
            "same": [(16, 16)] * 4,
        },
    )
    write_shards(build_manifest(adapter), adapter, root / "shards", rows_per_shard=4)
    return root / "shards", adapter


def ids(loader) -> list[str]:
    return [i for batch in loader for i in batch["id"]]


def test_reader_gives_exactly_the_written_masks_and_images(shards):
    shard_dir, adapter = shards
    reader = ShardReader(split_files(shard_dir, "train"))
    refs = [r for r in adapter.refs if r.split == "train"]
    assert len(reader) == N_TRAIN
    for i, ref in enumerate(refs):
        image, mask = reader.decoded(i)
        assert reader.sample_id(i) == ref.id
        np.testing.assert_array_equal(mask, adapter.read_mask(ref.mask))
        np.testing.assert_array_equal(image, adapter.read_image(ref.image))


def test_reader_slices_bytes_out_of_the_memory_map_without_copying(shards):
    shard_dir, _ = shards
    image_bytes, _ = ShardReader(split_files(shard_dir, "train")).encoded(5)
    assert image_bytes.base is not None and not image_bytes.flags.owndata
    assert bytes(image_bytes[:8]) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_every_sample_is_read_once_across_ranks_and_workers(shards, world_size, workers, shuffle):
    shard_dir, _ = shards
    seen = []
    for rank in range(world_size):
        ds = ShardDataset(
            shard_dir,
            "train",
            shuffle=shuffle,
            seed=3,
            rank=rank,
            world_size=world_size,
            batch_size=2,
        )
        got = ids(DataLoader(ds, batch_size=2, num_workers=workers))
        assert len(got) == len(ds)
        seen += got
    assert sorted(seen) == [f"train_{i:03d}" for i in range(N_TRAIN)]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_even_split_pads_ranks_to_equal_length_by_repeating_samples(shards, world_size):
    shard_dir, _ = shards
    per_rank = -(-N_TRAIN // world_size)
    seen = []
    for rank in range(world_size):
        ds = ShardDataset(
            shard_dir,
            "train",
            shuffle=True,
            rank=rank,
            world_size=world_size,
            even=True,
            batch_size=2,
        )
        got = ids(DataLoader(ds, batch_size=2, num_workers=2))
        assert len(got) == len(ds) == per_rank
        seen += got
    counts = Counter(seen)
    assert set(counts) == {f"train_{i:03d}" for i in range(N_TRAIN)}
    assert sum(counts.values()) - N_TRAIN == per_rank * world_size - N_TRAIN  # only the padding
    assert max(counts.values()) <= 2


def test_drop_last_cuts_ranks_to_equal_length_without_repeats(shards):
    shard_dir, _ = shards
    seen = []
    for rank in range(3):
        ds = ShardDataset(shard_dir, "train", rank=rank, world_size=3, drop_last=True)
        got = ids(DataLoader(ds, batch_size=1))
        assert len(got) == len(ds) == N_TRAIN // 3
        seen += got
    assert len(set(seen)) == len(seen) == 3 * (N_TRAIN // 3)


def test_shuffled_order_is_fixed_per_epoch_and_changes_between_epochs(shards):
    shard_dir, _ = shards

    def order(epoch: int, seed: int = 7) -> list[str]:
        ds = ShardDataset(shard_dir, "train", shuffle=True, seed=seed)
        ds.set_epoch(epoch)
        return ids(DataLoader(ds, batch_size=3))

    assert order(0) == order(0)
    assert order(1) == order(1)
    assert order(0) != order(1)
    assert order(0) != order(0, seed=8)
    assert sorted(order(0)) == sorted(order(1))


def test_batches_come_back_in_the_same_order_whatever_the_number_of_workers(shards):
    shard_dir, _ = shards
    orders = []
    for workers in (0, 1, 2):
        ds = ShardDataset(
            shard_dir, "train", shuffle=True, seed=1, rank=1, world_size=2, batch_size=2
        )
        orders.append(ids(DataLoader(ds, batch_size=2, num_workers=workers)))
    assert orders[0] == orders[1] == orders[2]


def test_augmented_epoch_is_identical_with_zero_and_two_workers(shards):
    shard_dir, _ = shards
    params = LoaderParams(crop_height=16, crop_width=16)
    batches = []
    for workers in (0, 2):
        ds = ShardDataset(shard_dir, "train", train_transform(params), shuffle=True, batch_size=4)
        ds.set_epoch(2)
        batches.append(list(DataLoader(ds, batch_size=4, num_workers=workers)))
    for a, b in zip(*batches, strict=True):
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        torch.testing.assert_close(a["mask"], b["mask"], rtol=0, atol=0)


def test_normalised_samples_are_float_chw_images_and_int64_masks(shards):
    shard_dir, adapter = shards
    sample = next(iter(ShardDataset(shard_dir, "train", eval_transform(LoaderParams()))))
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 24, 32)
    assert sample["image"].is_contiguous()
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (24, 32)
    # sample 0's image is all zeros: normalised, each channel holds -mean/std
    expected = -torch.tensor(LoaderParams().mean) / torch.tensor(LoaderParams().std)
    torch.testing.assert_close(sample["image"][:, 0, 0], expected)
    np.testing.assert_array_equal(sample["mask"].numpy(), adapter.read_mask(adapter.refs[0].mask))


def test_without_normalisation_samples_stay_uint8(shards):
    shard_dir, adapter = shards
    sample = list(ShardDataset(shard_dir, "train"))[3]
    assert sample["image"].dtype == torch.uint8 and sample["mask"].dtype == torch.uint8
    image = adapter.read_image(adapter.refs[3].image)
    np.testing.assert_array_equal(sample["image"].numpy(), image.transpose(2, 0, 1))


def test_uint8_loader_normalised_on_device_equals_the_float_loader(shards):
    shard_dir, _ = shards
    params = LoaderParams(crop_height=16, crop_width=20)
    as_float = list(make_dataloader(shard_dir, "train", params, train=True, batch_size=4))
    as_uint8 = list(
        make_dataloader(shard_dir, "train", params, train=True, batch_size=4, uint8=True)
    )
    assert len(as_float) == len(as_uint8) == 3  # ceil(11 / 4): the last batch filled
    for f, u in zip(as_float, as_uint8, strict=True):
        assert u["image"].dtype == torch.uint8 and u["mask"].dtype == torch.uint8
        image, mask = normalize_batch(u["image"], u["mask"], params.mean, params.std)
        torch.testing.assert_close(image, f["image"], rtol=0, atol=1e-5)
        assert mask.dtype == torch.int64 and torch.equal(mask, f["mask"])


def test_train_dataloader_gives_full_shuffled_batches_of_crops(shards):
    shard_dir, _ = shards
    params = LoaderParams(crop_height=16, crop_width=20, num_workers=2)
    loader = make_dataloader(
        shard_dir, "train", params, train=True, batch_size=2, rank=0, world_size=2, seed=0
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 3  # ceil(11 / 2) = 6 per rank, 3 full batches
    for batch in batches:
        assert batch["image"].shape == (2, 3, 16, 20) and batch["mask"].shape == (2, 16, 20)
    loader.dataset.set_epoch(1)
    assert ids(loader) != [i for b in batches for i in b["id"]]


@pytest.mark.parametrize(("world_size", "batch_size", "steps"), [(1, 4, 3), (2, 4, 2), (3, 2, 2)])
def test_a_training_epoch_sees_every_image_in_whole_batches(shards, world_size, batch_size, steps):
    """No image is dropped with an incomplete last batch: a small dataset's epoch covers all
    of it, in ceil(ceil(N / ranks) / batch) steps per rank, the gap filled with repeats."""
    shard_dir, _ = shards
    params = LoaderParams(crop_height=16, crop_width=20)
    seen = []
    for rank in range(world_size):
        loader = make_dataloader(
            shard_dir,
            "train",
            params,
            train=True,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            seed=0,
        )
        batches = list(loader)
        assert len(batches) == len(loader) == steps
        assert all(len(b["id"]) == batch_size for b in batches)
        seen += ids(loader)
    assert set(seen) == {f"train_{i:03d}" for i in range(N_TRAIN)}


def test_eval_dataloader_gives_full_images_and_batches_only_same_sizes(shards):
    shard_dir, _ = shards
    params = LoaderParams(crop_height=8, crop_width=8)
    mixed = list(make_dataloader(shard_dir, "val", params, train=False, batch_size=4))
    assert [tuple(b["image"].shape) for b in mixed] == [
        (1, 3, 24, 32),
        (1, 3, 24, 32),
        (1, 3, 20, 28),
    ]
    same = list(make_dataloader(shard_dir, "same", params, train=False, batch_size=4))
    assert [tuple(b["mask"].shape) for b in same] == [(4, 16, 16)]


def test_train_loader_with_fewer_samples_than_a_batch_is_an_error(shards):
    shard_dir, _ = shards
    with pytest.raises(SegflowError, match="fewer than the batch size 8"):
        make_dataloader(shard_dir, "same", LoaderParams(), train=True, batch_size=8)


def test_unknown_split_and_bad_rank_name_the_problem(shards):
    shard_dir, _ = shards
    with pytest.raises(SegflowError, match=r"index.json: no split 'test'"):
        ShardDataset(shard_dir, "test")
    with pytest.raises(SegflowError, match="rank 2"):
        ShardDataset(shard_dir, "train", rank=2, world_size=2)


def test_shard_file_that_disagrees_with_the_index_is_an_error(shards, tmp_path):
    shard_dir, _ = shards
    files = split_files(shard_dir, "train")
    with pytest.raises(SegflowError, match="has 4 rows but the index says 5"):
        ShardReader([(files[0][0], 5)])
    with pytest.raises(SegflowError, match="missing"):
        ShardReader([(tmp_path / "gone.arrow", 1)])


def test_the_ray_data_loader_has_the_mmap_loaders_steps_per_epoch_without_starting_ray(shards):
    # len() drives the LR schedule and the step counts: computed from the index, as for mmap.
    shard_dir, _ = shards
    for world_size in (1, 2, 3):
        for batch_size in (1, 2, 3):
            loaders = [
                training_loader(
                    shard_dir, LoaderParams(backend=backend), batch_size, 0, world_size, 0
                )
                for backend in ("mmap", "ray_data")
            ]
            assert isinstance(loaders[1], RayDataLoader)
            assert (
                len(loaders[1])
                == len(loaders[0])
                == math.ceil(math.ceil(N_TRAIN / world_size) / batch_size)
            )
