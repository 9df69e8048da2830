"""Training with ``loader.backend: ray_data`` through the real Ray launcher (a local Ray)."""

from __future__ import annotations

import os

import pytest
import torch

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.train.distributed import check_cluster
from segflow.train.loop import fit
from segflow.train.run import train_distributed
from segflow.train.state import LAST
from tests.train.conftest import tiny_params

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


def test_workers_that_leave_no_cpu_for_ray_data_are_an_error_naming_the_backend():
    p = tiny_params(num_workers=CPUS).train
    check_cluster(p, "train")  # the mmap backend fits
    with pytest.raises(SegflowError, match="loader.backend: ray_data decodes in Ray tasks"):
        check_cluster(p, "train", data_cpus=1)
