"""``loader.backend: ray_data``: the mmap loader's samples, decoded in Ray Data tasks, split by
Ray Data across the training workers, and trained on through the real Ray launcher."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from segflow.config import LoaderParams, Params
from segflow.data.ray_loader import RayDataLoader, epoch_dataset, training_loader
from segflow.errors import SegflowError
from segflow.train.distributed import check_cluster
from segflow.train.loop import fit
from segflow.train.run import train_distributed
from segflow.train.state import LAST
from tests.train.conftest import SIZE, make_shards, tiny_params

pytestmark = pytest.mark.integration

#: Two training workers of one CPU each, and one CPU left for Ray Data's decoding tasks.
CPUS = 3


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory):
    import ray

    saved = os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=CPUS, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


N_TRAIN = 11  # prime: the epoch is padded for any batch size and number of workers
BATCH = 2


@pytest.fixture(scope="module")
def ray_shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("ray_shards"), train=N_TRAIN, val=2)


def loader_params(backend: str) -> LoaderParams:
    # A crop smaller than the images: scale, crop position and flip all vary per sample.
    return LoaderParams(crop_height=SIZE[0] // 2, crop_width=SIZE[1] // 2, backend=backend)


def train_loader(shard_dir: Path, backend: str, rank: int = 0, world_size: int = 1):
    return training_loader(shard_dir, loader_params(backend), BATCH, rank, world_size, 7)


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


def test_a_shard_file_gone_while_ray_data_reads_is_a_one_line_error_naming_it(tmp_path):
    shard_dir = make_shards(tmp_path, train=4, val=2)
    loader = train_loader(shard_dir, "ray_data")  # the files are checked here: all present
    gone = sorted((shard_dir / "train").glob("*.arrow"))[0]
    gone.unlink()  # e.g. a `dvc repro shard` replacing the shards under a running training
    with pytest.raises(SegflowError) as caught:
        list(loader)
    assert str(caught.value) == (
        f"{gone}: shard file listed in the index is missing; rerun dvc repro shard"
    )


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


def with_ray_data(params: Params) -> Params:
    loader = params.loader.model_copy(update={"backend": "ray_data"})
    return params.model_copy(update={"loader": loader})


def test_two_workers_fed_by_ray_data_step_like_one_mmap_process_with_the_doubled_batch(
    shards, tmp_path
):
    # 4 training images, 2 workers x batch 2: one step, whose two half-batches are the whole
    # epoch whichever worker streaming_split gives which block, so it must equal one process's
    # step over the same 4 (identically augmented) images read by the mmap loader.
    params = with_ray_data(tiny_params(tmp_path, epochs=1, batch_size=2, num_workers=2))
    out = train_distributed(params, shards, tmp_path / "ray_data")
    fit(tiny_params(epochs=1, batch_size=4), shards, tmp_path / "mmap", "cpu", echo=None)

    assert [r["epoch"] for r in out.history] == [1]
    assert out.history[0]["val_miou"] > 0
    ray_data = torch.load(out.best_checkpoint, weights_only=True)["model"]
    mmap = torch.load(tmp_path / "mmap" / LAST, weights_only=True)["model"]
    assert ray_data.keys() == mmap.keys()
    for name in mmap:
        torch.testing.assert_close(ray_data[name], mmap[name], rtol=0, atol=1e-5, msg=name)


def test_one_process_fed_by_ray_data_trains_the_mmap_run_of_the_same_seed(shards, tmp_path):
    # launcher: local (no Ray Train): the loop alone, its two epochs each from Ray Data
    mmap = fit(tiny_params(epochs=2), shards, tmp_path / "mmap", "cpu", echo=None)
    ray_data = fit(with_ray_data(tiny_params(epochs=2)), shards, tmp_path / "rd", "cpu", echo=None)

    assert [r["train_loss"] for r in ray_data.history] == [r["train_loss"] for r in mmap.history]
    a = torch.load(tmp_path / "mmap" / LAST, weights_only=True)["model"]
    b = torch.load(tmp_path / "rd" / LAST, weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


def test_workers_that_leave_no_cpu_for_ray_data_are_an_error_naming_the_backend():
    p = tiny_params(num_workers=CPUS).train
    check_cluster(p, "train")  # the mmap backend fits
    with pytest.raises(SegflowError, match="loader.backend: ray_data decodes in Ray tasks"):
        check_cluster(p, "train", data_cpus=1)
