"""The search loop: data halves, warm-up, resume after a kill, Ray Train on two workers."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segflow.config import Params
from segflow.search.decode import num_edges
from segflow.search.loop import split_train
from segflow.search.outputs import final_genotype, write_outputs
from segflow.search.run import search_distributed, search_local
from segflow.search.supernet import Supernet
from tests.project import REPO
from tests.train.conftest import make_shards

TINY = {
    "enabled": True,
    "layers": 3,
    "filter_multiplier": 1,
    "blocks": 2,
    "epochs": 3,
    "warmup_epochs": 1,
    "batch_size": 2,
    "crop_height": 32,
    "crop_width": 32,
    "launcher": "local",
    "cpus_per_worker": 1,
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("search_shards"), train=8, val=2)


@pytest.fixture
def own_ray():
    """The Ray the search starts in this process is shut down after the test, so a later
    module's fixture can start its own."""
    yield
    import ray

    ray.shutdown()


def _params(storage: Path, **search) -> Params:
    return Params.model_validate(
        {"search": {**TINY, "storage_path": str(storage), "run_name": "run", **search}}
    )


@pytest.mark.parametrize("n", [1, 2, 7, 48])
def test_train_a_and_train_b_are_disjoint_cover_train_and_follow_the_seed(n):
    a, b = split_train(n, seed=0)
    assert set(a).isdisjoint(b) and sorted([*a, *b]) == list(range(n))
    assert abs(len(a) - len(b)) <= 1
    again = split_train(n, seed=0)
    assert np.array_equal(a, again[0]) and np.array_equal(b, again[1])
    if n >= 7:
        assert not np.array_equal(a, split_train(n, seed=1)[0])


def test_alpha_and_beta_change_only_after_the_warm_up(shards, tmp_path):
    params = _params(tmp_path, epochs=3, warmup_epochs=2)
    outcome = search_local(params, shards, echo=lambda line: None)
    initial = Supernet(3, 3, 1, 2, seed=0)
    alphas = [np.asarray(a["alpha"]) for a in outcome.arch_history]
    betas = [np.asarray(a["beta"]) for a in outcome.arch_history]
    for epoch in (0, 1):  # warm-up epochs: the weights train, the architecture stays
        np.testing.assert_array_equal(alphas[epoch], initial.alpha.detach().numpy())
        np.testing.assert_array_equal(betas[epoch], initial.beta.detach().numpy())
    assert np.abs(alphas[2] - alphas[1]).max() > 1e-4
    assert np.abs(betas[2] - betas[1]).max() > 1e-4
    assert [r["arch_updates"] for r in outcome.history] == [0.0, 0.0, 1.0]
    assert all(r["weight_loss"] > 0 and r["arch_loss"] > 0 for r in outcome.history)


def _run_search_process(storage: Path, shards: Path, fail_after: int | None):
    fault = (
        "import segflow.search.run as r; from tests.faults import crash_after_epoch; "
        f"r.search_epochs = crash_after_epoch(r.search_epochs, {fail_after}); "
        if fail_after is not None
        else ""
    )
    code = (
        "import sys; from pathlib import Path; "
        "from segflow.config import Params; from segflow.search.run import search_local; "
        + fault
        + f"p = Params.model_validate({_params(storage).model_dump(mode='json')!r}); "
        f"search_local(p, Path({str(shards)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.integration
def test_a_killed_search_resumes_to_the_genotype_of_an_uninterrupted_one(shards, tmp_path):
    whole = search_local(_params(tmp_path / "whole"), shards, echo=lambda line: None)
    killed = _run_search_process(tmp_path / "killed", shards, fail_after=2)
    assert killed.returncode == 1, killed.stderr
    assert "fault: exiting after epoch 2" in killed.stdout and "epoch 3/3" not in killed.stdout
    resumed = _run_search_process(tmp_path / "killed", shards, fail_after=None)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    payload = torch.load(tmp_path / "killed" / "run" / "last.pt", weights_only=True)
    assert payload["epoch"] == 3
    np.testing.assert_array_equal(
        payload["arch_history"][-1]["alpha"], whole.arch_history[-1]["alpha"]
    )
    np.testing.assert_array_equal(
        payload["arch_history"][-1]["beta"], whole.arch_history[-1]["beta"]
    )
    assert final_genotype(payload["arch_history"]) == final_genotype(whole.arch_history)


def test_the_outputs_hold_the_genotype_curves_and_heat_maps(shards, tmp_path):
    outcome = search_local(_params(tmp_path, epochs=2), shards, echo=lambda line: None)
    genotype = final_genotype(outcome.arch_history)
    write_outputs(
        genotype, outcome.history, outcome.arch_history, tmp_path / "g.json", tmp_path / "h"
    )
    assert json.loads((tmp_path / "g.json").read_text()) == genotype.to_json()
    names = sorted(p.name for p in (tmp_path / "h").iterdir())
    assert names == [
        "alpha.csv",
        "alpha_epoch_001.png",
        "alpha_epoch_002.png",
        "beta.csv",
        "beta_epoch_001.png",
        "beta_epoch_002.png",
        "entropy.csv",
        "expected_stride.csv",
        "op_weights.csv",
        "search_curve.csv",
        "stride_share.csv",
    ]
    curve = list(csv.DictReader((tmp_path / "h" / "search_curve.csv").open()))
    assert len(curve) == 2 and curve[-1]["path"] == "-".join(map(str, genotype.path))
    assert [float(r["alpha_entropy"]) for r in curve] == [
        r["alpha_entropy"] for r in outcome.history
    ]
    entropy = list(csv.DictReader((tmp_path / "h" / "entropy.csv").open()))
    edges, nodes = num_edges(2), 1 + 2 + 3  # TINY: blocks 2, layers 3
    assert len(entropy) == 2 * (edges + nodes)


def test_every_epoch_records_and_logs_the_diagnostics(shards, tmp_path):
    lines: list[str] = []
    params = _params(tmp_path, epochs=3, warmup_epochs=1, aux_skip=1.0)
    outcome = search_local(params, shards, echo=lines.append)
    epochs = [line for line in lines if line.startswith("search: epoch")]
    assert len(epochs) == 3 == len(outcome.history)
    for record, line in zip(outcome.history, epochs, strict=True):
        assert 0 < record["alpha_entropy"] <= 1 and 0 < record["beta_entropy"] <= 1
        assert len(record["alpha_entropy_per_edge"]) == num_edges(2)
        assert len(record["beta_entropy_per_node"]) == 1 + 2 + 3
        assert 0 <= record["param_free_share"] <= 1
        assert record["path_stable_epochs"] >= 1 and record["arch_loss"] > 0
        assert f"entropy alpha {record['alpha_entropy']:.4f}" in line
        assert f"param-free {record['param_free_share']:.2f}" in line
        assert "path " + "-".join(map(str, record["path"])) in line
    # The warm-up epoch leaves the architecture where it started; the others move it.
    assert outcome.history[0]["alpha_move"] == 0.0 and outcome.history[0]["beta_move"] == 0.0
    assert outcome.history[0]["alpha_entropy"] > 0.9999
    assert all(r["alpha_move"] > 0 and r["beta_move"] > 0 for r in outcome.history[1:])
    assert outcome.history[-1]["alpha_entropy"] < outcome.history[0]["alpha_entropy"]
    # DARTS-'s auxiliary skip decays linearly over the search (2 steps an epoch: 6 in all).
    aux = [r["aux_skip"] for r in outcome.history]
    assert aux == pytest.approx([1 - 1 / 6, 1 - 3 / 6, 1 - 5 / 6])


@pytest.mark.integration
def test_two_ray_train_workers_hold_the_same_architecture_after_every_epoch(
    shards, tmp_path, own_ray
):
    params = _params(tmp_path, launcher="ray", num_workers=2, epochs=2)
    outcome = search_distributed(params, shards, echo=lambda line: None)
    assert len(outcome.history) == 2
    assert [r["arch_rank_divergence"] for r in outcome.history] == [0.0, 0.0]
    assert (
        np.abs(np.subtract(outcome.arch_history[1]["beta"], outcome.arch_history[0]["beta"])).max()
        > 0
    )
