"""Ray Train on a real local Ray (one session for the module): DDP, crash recovery, resources."""

from __future__ import annotations

import sys

import pytest
import torch

from segflow.errors import SegflowError
from segflow.train import run
from segflow.train.distributed import check_cluster
from segflow.train.loop import fit
from segflow.train.run import CHECKPOINT_FILE, train_distributed
from segflow.train.state import LAST
from tests.faults import crashing_ray_worker, patched_in_worker, register_by_value
from tests.services import local_ray
from tests.train.conftest import tiny_params

pytestmark = pytest.mark.integration
HEALTH_CHECK_S = 0.5


@pytest.fixture(scope="module", autouse=True)
def ray_here(tmp_path_factory):
    env = {
        "RAY_USAGE_STATS_ENABLED": "0",
        # The controller collects reports every health check; a short interval keeps the
        # crash test's wait (2.5 intervals after the report) short.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(HEALTH_CHECK_S),
    }
    with local_ray(tmp_path_factory.mktemp("ray"), env):
        yield


def model_weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def test_two_ddp_workers_step_like_one_process_with_the_doubled_batch(shards, tmp_path):
    # 4 training images: 2 workers x batch 2 and 1 process x batch 4 both take one step on
    # the same 4 (identically augmented) images; DDP averages the two half-batch gradients.
    ddp = train_distributed(
        tiny_params(tmp_path, epochs=1, batch_size=2, num_workers=2), shards, tmp_path / "ddp"
    )
    fit(tiny_params(epochs=1, batch_size=4), shards, tmp_path / "single", "cpu", echo=None)

    assert [r["epoch"] for r in ddp.history] == [1]
    assert ddp.resumed_from == 0
    assert_same_weights(
        model_weights(ddp.best_checkpoint), model_weights(tmp_path / "single" / LAST), 1e-5
    )


def test_with_sync_bn_two_workers_of_a_batch_norm_model_step_like_one_process(shards, tmp_path):
    # BatchNorm normalises with the batch's statistics: only synchronised across the workers
    # are they those of the doubled batch, in the forward pass and in the running statistics.
    bn = {"model_options": {"width": 4, "batch_norm": True}}
    ddp = train_distributed(
        tiny_params(tmp_path, epochs=1, batch_size=2, num_workers=2, sync_bn=True, **bn),
        shards,
        tmp_path / "ddp",
    )
    fit(tiny_params(epochs=1, batch_size=4, **bn), shards, tmp_path / "single", "cpu", echo=None)
    assert_same_weights(
        model_weights(ddp.best_checkpoint), model_weights(tmp_path / "single" / LAST), 1e-5
    )


def test_a_crashed_worker_resumes_from_the_last_checkpoint_with_its_optimizer_state(
    shards, tmp_path, monkeypatch
):
    register_by_value()
    crashing = crashing_ray_worker(
        run.train_func, "segflow.train.loop", "train_epochs", epoch=1, wait_s=2.5 * HEALTH_CHECK_S
    )
    monkeypatch.setattr(run, "train_func", crashing)
    params = tiny_params(tmp_path, epochs=3, max_failures=1, run_name="crash")
    out = train_distributed(params, shards, tmp_path / "work")

    # The fault kills rank 0 after every epoch-1 report: a restart from scratch would crash
    # again and exhaust max_failures. Finishing means the retry started at epoch 2.
    assert [r["epoch"] for r in out.history] == [1, 2, 3]
    assert out.resumed_from == 1
    run_dir = tmp_path / "ray_results" / "crash"
    latest = torch.load(run_dir / "epoch-0003" / CHECKPOINT_FILE, weights_only=True)
    assert latest["epoch"] == 3
    # Same weights as an uninterrupted run: momentum buffers and the LR schedule survived.
    fit(tiny_params(epochs=3), shards, tmp_path / "straight", "cpu", echo=None)
    assert_same_weights(latest["model"], model_weights(tmp_path / "straight" / LAST), 1e-6)


def clock_ahead_on_rank_1(time_budget):
    """``segflow.train.loop.time_budget`` whose budget on rank 1 reads its clock 2 s ahead (as
    if that worker had started earlier): by its own clock it would stop sooner than rank 0."""

    def wrapped(*args, **kwargs):
        import torch.distributed as dist

        budget = time_budget(*args, **kwargs)
        if budget is not None and dist.get_rank() == 1:
            budget._base += 2.0
        return budget

    return wrapped


def test_ddp_ranks_of_a_budgeted_run_stop_together_by_rank_0s_clock(shards, tmp_path, monkeypatch):
    import ray.cloudpickle

    register_by_value()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    skewed = patched_in_worker(
        run.train_func, "segflow.train.loop", "time_budget", clock_ahead_on_rank_1
    )
    monkeypatch.setattr(run, "train_func", skewed)
    params = tiny_params(
        tmp_path, epochs=2000, batch_size=2, num_workers=2, time_budget_min=0.75, run_name="budget"
    )
    # A rank that stopped (or cut an epoch) on its own clock would leave the other waiting in
    # a collective: the run would hang, not finish.
    out = train_distributed(params, shards, tmp_path / "work")

    assert out.budget["budget_stopped_by"] == "budget"
    assert out.budget["budget_epochs"] == len(out.history) >= 2
    assert out.history[-1]["lr"] == 0.0


def test_rerunning_a_finished_named_run_resumes_it_without_training(shards, tmp_path):
    params = tiny_params(tmp_path, epochs=1, run_name="again")
    first = train_distributed(params, shards, tmp_path / "a")
    again = train_distributed(params, shards, tmp_path / "b")
    assert again.history == first.history
    assert (first.resumed_from, again.resumed_from) == (0, 1)
    assert_same_weights(
        model_weights(first.best_checkpoint), model_weights(again.best_checkpoint), 0
    )


def test_more_workers_than_the_cluster_has_cpus_is_an_error_before_any_worker(shards):
    with pytest.raises(SegflowError, match="train.num_workers x train.cpus_per_worker = 3 x 1"):
        check_cluster(tiny_params(num_workers=3).train, "train")
    with pytest.raises(SegflowError, match="GPUs"):
        check_cluster(tiny_params(use_gpu=True).train, "train")
