"""The tune stage: a Ray Tune + ASHA sweep of training hyper-parameters, off by default."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.stages.tune import log_sweep
from segflow.tune.best_params import sweep_result, write_best_params
from segflow.tune.train_search import apply_trial, train_sweep
from tests.project import make_project
from tests.train.conftest import make_shards, tiny_params


@pytest.fixture
def own_ray():
    """The sweep starts a local Ray; shut it down after so later modules can ray.init their own."""
    import ray

    started_here = not ray.is_initialized()
    yield
    if started_here:
        ray.shutdown()


def _sweep_params(tmp_path) -> Params:
    base = tiny_params(tmp_path)
    tune = {
        "enabled": True,
        "num_samples": 3,
        "max_epochs": 2,
        "search": "optuna",
        "cpus_per_trial": 1,
        "lr": [0.01, 0.1],
        "batch_size": [2, 4],
        "models": [
            {"model": "unet", "model_options": {"width": 4, "batch_norm": False}},
            {"model": "unet", "model_options": {"width": 8, "batch_norm": False}},
        ],
    }
    return Params.model_validate({**base.model_dump(mode="json"), "tune": tune})


def test_trial_values_replace_the_model_keys_and_keep_the_rest():
    params = _sweep_params(None)
    out = apply_trial(params, {"lr": 0.02, "batch_size": 4, "model": 1})
    assert out.train.lr == 0.02 and out.train.batch_size == 4
    assert out.train.model_options == {"width": 8, "batch_norm": False}
    assert out.train.epochs == 2  # tune.max_epochs
    assert out.train.momentum == params.train.momentum
    assert out.loader == params.loader


def test_tune_space_rejects_an_inverted_lr_range():
    with pytest.raises(SegflowError, match="tune"):
        from segflow.config import parse_params

        parse_params({"tune": {"lr": [0.1, 0.01]}})


@pytest.mark.integration
def test_sweep_finds_the_best_trial_writes_it_and_logs_nested_mlflow_runs(
    tmp_path, monkeypatch, own_ray
):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    shards = make_shards(tmp_path / "data", train=4, val=2)
    params = _sweep_params(tmp_path)

    result = train_sweep(params, shards, tmp_path / "ray_results", num_cpus=2)
    result.parent_run_id = log_sweep(params, result, root=tmp_path)

    assert len(result.trials) == 3
    assert all(1 <= row["epochs"] <= 2 for row in result.trials)
    assert result.best_miou == max(row["selection_miou"] for row in result.trials)
    assert result.best == {"train": result.trials[0]["train"], "loader": result.trials[0]["loader"]}
    assert 0.01 <= result.best["train"]["lr"] <= 0.1
    assert result.best["train"]["batch_size"] in (2, 4)

    path = tmp_path / "reports" / "best_train_params.yaml"
    write_best_params(path, sweep_result(result))
    written = yaml.safe_load(path.read_text())
    assert written["enabled"] is True
    assert written["selection_miou"] == pytest.approx(result.best_miou)
    assert written["train"] == result.best["train"]
    assert Params.model_validate({"train": written["train"], "loader": written["loader"]})

    client = mlflow.MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["stage"] == "tune"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
    )
    assert len(children) == 3
    assert sorted(c.data.metrics["final_miou"] for c in children) == pytest.approx(
        sorted(row["selection_miou"] for row in result.trials)
    )


@pytest.mark.integration
def test_disabled_stage_writes_the_current_values_without_starting_ray(tmp_path):
    project = make_project(tmp_path)
    # In-process run of the stage script, then check that it never imported Ray.
    code = (
        "import runpy, sys; runpy.run_path('pipelines/tune.py', run_name='__main__'); "
        "sys.exit(3 if 'ray' in sys.modules else 0)"
    )
    done = project.run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    written = yaml.safe_load((project.root / "reports" / "best_train_params.yaml").read_text())
    current = yaml.safe_load((project.root / "params.yaml").read_text())
    assert written["enabled"] is False
    assert written["train"]["lr"] == current["train"]["lr"]
    assert written["train"]["model"] == current["train"]["model"]
    assert written["loader"]["crop_height"] == current["loader"]["crop_height"]


def test_sweep_refuses_a_batch_size_larger_than_the_training_split_before_starting_ray(tmp_path):
    shards = make_shards(tmp_path / "data", train=4, val=2)
    base = _sweep_params(tmp_path).model_dump(mode="json")
    params = Params.model_validate({**base, "tune": {**base["tune"], "batch_size": [2, 8]}})
    with pytest.raises(SegflowError, match="tune.batch_size: 8 exceeds the 4 training samples"):
        train_sweep(params, shards, tmp_path / "ray_results")


@pytest.mark.integration
def test_with_tune_enabled_dvc_repro_trains_with_the_sweeps_best_values(tmp_path, own_ray):
    import mlflow
    import torch

    project = make_project(
        tmp_path,
        synthetic={"num_train": 4, "num_val": 2, "num_test": 2, "height": 48, "width": 64},
        loader={"crop_height": 48, "crop_width": 64},
        train={"epochs": 1, "launcher": "local", "batch_size": 2, "cpus_per_worker": 1,
               "model": "unet", "backbone": None, "output_stride": None,
               "model_options": {"width": 4, "batch_norm": False}},
        tune={"enabled": True, "num_samples": 2, "max_epochs": 1, "grace_period": 1,
              "cpus_per_trial": 1, "search": "random", "lr": [0.001, 0.1], "batch_size": [2]},
    )  # fmt: skip
    dag = project.dvc("dag", "--dot", "train")
    assert dag.returncode == 0, dag.stderr
    assert '"tune" -> "train"' in dag.stdout

    done = project.dvc("repro", "train")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.index("Running stage 'tune'") < done.stdout.index("Running stage 'train'")

    best = yaml.safe_load((project.root / "reports" / "best_train_params.yaml").read_text())
    assert best["enabled"] is True and best["trial_id"]
    trained = torch.load(project.root / "models" / "best.pt", weights_only=True)["train_params"]
    assert trained["lr"] == best["train"]["lr"] != 0.05  # the sweep's, not params.yaml's
    assert trained["weight_decay"] == best["train"]["weight_decay"]
    assert trained["epochs"] == 1  # params.yaml's training length, not the trial budget

    run_id = json.loads((project.root / "models" / "run.json").read_text())["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.tags["tune.trial_id"] == best["trial_id"]
    assert float(run.data.params["train.lr"]) == best["train"]["lr"]


@pytest.mark.integration
def test_a_trial_whose_training_diverges_scores_zero_and_the_sweep_goes_on(
    tmp_path, monkeypatch, own_ray
):
    from segflow.tune import train_search
    from tests.faults import nan_loss_from, patched_in_worker, register_by_value

    register_by_value()
    diverging = patched_in_worker(
        train_search._run_trial, "segflow.train.loop", "build_loss",
        lambda build: nan_loss_from(build, step=1),
    )  # fmt: skip
    monkeypatch.setattr(train_search, "_run_trial", diverging)
    shards = make_shards(tmp_path / "data", train=4, val=2)
    params = _sweep_params(tmp_path)
    params = params.model_copy(
        update={"train": params.train.model_copy(update={"nan_patience": 1})}
    )

    result = train_sweep(params, shards, tmp_path / "ray_results", num_cpus=2)

    assert len(result.trials) == 3  # none failed the sweep
    # every trial diverged at its first step: one report, the worst mIoU
    assert all(row["history"] == [0.0] and row["epochs"] == 1 for row in result.trials)
