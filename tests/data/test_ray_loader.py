"""loader.backend: ray_data: the mmap loader's samples, decoded in Ray tasks, split by Ray Data."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from segflow.config import LoaderParams
from segflow.data.loader import make_dataloader
from segflow.data.ray_loader import RayDataLoader, epoch_dataset
from tests.train.conftest import SIZE, make_shards

pytestmark = pytest.mark.integration  # starts a local Ray

N_TRAIN = 11  # prime: the epoch is padded for any batch size and number of workers
BATCH = 2


@pytest.fixture(scope="module")
def ray_shards(tmp_path_factory) -> Path:
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield make_shards(tmp_path_factory.mktemp("ray_shards"), train=N_TRAIN, val=2)
    ray.shutdown()


def loader_params(backend: str) -> LoaderParams:
    # A crop smaller than the images: scale, crop position and flip all vary per sample.
    return LoaderParams(crop_height=SIZE[0] // 2, crop_width=SIZE[1] // 2, backend=backend)


def train_loader(shard_dir: Path, backend: str, rank: int = 0, world_size: int = 1):
    return make_dataloader(
        shard_dir, "train", loader_params(backend), True, BATCH, rank, world_size, 7, uint8=True
    )


def digest(image: torch.Tensor, mask: torch.Tensor) -> str:
    return hashlib.sha256(image.numpy().tobytes() + mask.numpy().tobytes()).hexdigest()


def test_one_worker_gets_the_mmap_loaders_augmented_batches_in_its_order(ray_shards):
    mmap, ray_data = train_loader(ray_shards, "mmap"), train_loader(ray_shards, "ray_data")
    assert isinstance(ray_data, RayDataLoader)
    assert len(ray_data) == len(mmap) == 6  # ceil(11 / 2): the last batch filled with a repeat
    # epoch 1: the order and the augmentation of the epoch set, not of the first
    mmap.dataset.set_epoch(1)
    ray_data.dataset.set_epoch(1)
    expected, got = list(mmap), list(ray_data)
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert b["image"].dtype == a["image"].dtype == torch.uint8
        assert b["image"].shape == a["image"].shape == (BATCH, 3, SIZE[0] // 2, SIZE[1] // 2)
        torch.testing.assert_close(b["image"], a["image"], rtol=0, atol=0)
        torch.testing.assert_close(b["mask"], a["mask"], rtol=0, atol=0)


def test_two_splits_cover_the_padded_epoch_once_each_with_equal_shares(ray_shards):
    world = 2
    loaders = [train_loader(ray_shards, "ray_data", rank, world) for rank in range(world)]
    per_rank = len(loaders[0].dataset)
    assert per_rank == 6  # ceil(ceil(11 / 2) / 2) x 2: whole batches on every rank
    dataset = loaders[0].dataset
    dataset.set_epoch(1)
    expected = sorted(
        digest(s["image"], s["mask"]) for s in dataset.samples_at(range(per_rank * world))
    )
    splits = epoch_dataset(dataset, world).streaming_split(world, equal=True)

    def rows(split) -> list[str]:
        return [
            digest(image, mask)
            for batch in split.iter_torch_batches(batch_size=BATCH, drop_last=True)
            for image, mask in zip(batch["image"], batch["mask"], strict=True)
        ]

    with ThreadPoolExecutor(world) as pool:  # streaming_split starts when all splits ask
        shares = list(pool.map(rows, splits))
    assert [len(share) for share in shares] == [per_rank] * world
    assert sorted(shares[0] + shares[1]) == expected  # padded epoch: 11 images + 1 repeat
