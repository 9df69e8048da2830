"""The train stage in a throw-away copy of the pipeline: `dvc repro train`, outputs, exit codes."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager

import mlflow
import pytest
import torch

from segflow.models.checkpoint import load_model
from tests.project import make_project

pytestmark = pytest.mark.integration

SMALL = {
    "synthetic": {"num_train": 8, "num_val": 4, "num_test": 2, "height": 48, "width": 64},
    "loader": {"crop_height": 48, "crop_width": 64},
    "train": {
        "model": "unet",
        "backbone": None,
        "output_stride": None,
        "model_options": {"width": 4},
        "epochs": 2,
        "batch_size": 4,
        "cpus_per_worker": 1,
        "log_every": 1,
    },
}


def small_project(tmp_path):
    project = make_project(tmp_path, **SMALL)
    project.env.pop("MLFLOW_TRACKING_URI", None)
    project.env.pop("RAY_ADDRESS", None)
    project.env["RAY_USAGE_STATS_ENABLED"] = "0"
    return project


@contextmanager
def another_ray_instance(project):
    """A Ray of someone else's on the same host, as on a shared machine or CI runner."""
    neighbour = subprocess.Popen(
        [sys.executable, "-c", NEIGHBOUR],
        env=project.env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert neighbour.stdout.readline().strip() == "up"
        yield
    finally:
        os.killpg(neighbour.pid, signal.SIGKILL)
        neighbour.wait()


NEIGHBOUR = (
    "import ray, time; ray.init(num_cpus=0, include_dashboard=False); "
    "print('up', flush=True); time.sleep(600)"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `dvc repro train` (synthesize .. train) shared by the tests of this module, while
    another Ray instance runs on the host."""
    project = small_project(tmp_path_factory.mktemp("stage"))
    with another_ray_instance(project):
        return project, project.dvc("repro", "train")


def test_dvc_repro_train_writes_the_model_reports_and_an_mlflow_run(trained):
    project, out = trained
    assert out.returncode == 0, out.stdout + out.stderr
    root = project.root

    # Progress is plain lines a CI log shows as they are, no carriage-return bars, and only
    # segflow's: no Ray report dicts, no traceback from Ray finding two instances.
    log = out.stdout + out.stderr
    assert "train: epoch 2/2 step 2/2 loss" in log
    assert "\r" not in out.stdout
    assert "Traceback" not in log and "Found multiple active Ray instances" not in log
    assert "Reporting training result" not in log and "TrainingReport(" not in log
    assert "UserWarning" not in log
    model = load_model(root / "models" / "best.pt")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 48, 64)).shape == (1, 8, 48, 64)
    metrics = json.loads((root / "reports" / "train_metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0 <= metrics["best_val_miou"] <= 1
    with (root / "reports" / "train_curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_miou", "lr", "images_per_second"} <= set(rows[0])

    info = json.loads((root / "models" / "run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(info["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.tags["git_commit"] == "unknown"  # a fresh repo without commits
    assert len(client.get_metric_history(run.info.run_id, "val_miou")) == 2
    assert (root / "ray_results" / info["ray_run_name"]).is_dir()

    plots = project.dvc("plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr
    # dvc.yaml's named plots of reports/train_curve.csv, drawn from the train stage's rows
    drawn = json.loads(plots.stdout)["data"]
    for name in ("val_miou", "train_loss", "learning_rate"):
        assert drawn[name] and drawn[name][0]["content"]["data"]["values"], name

    again = project.dvc("repro", "train")
    assert again.returncode == 0 and "didn't change" in again.stdout


def test_a_train_stage_with_a_time_budget_logs_and_tracks_what_the_budget_allowed(tmp_path):
    project = small_project(tmp_path)
    # train.epochs at the schema's bound: on an idle machine 500 tiny epochs took 23 s.
    project.set_params(train={"launcher": "local", "epochs": 10_000, "time_budget_min": 1.0})
    out = project.dvc("repro", "train")
    assert out.returncode == 0, out.stdout + out.stderr

    log = out.stdout + out.stderr
    line = re.search(
        r"train: time budget 1 min: (\d+) epoch\(s\) in ([\d.]+) min, [\d.]+ images/s, "
        r"~\d+ s an epoch with validation; stopped by the budget",
        log,
    )
    assert line, log
    epochs = int(line[1])
    metrics = json.loads((project.root / "reports" / "train_metrics.json").read_text())
    assert 2 <= metrics["epochs"] == epochs < 10_000
    info = json.loads((project.root / "models" / "run.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(info["mlflow_run_id"])
    assert run.data.params["train.time_budget_min"] == "1.0"
    assert run.data.metrics["budget_epochs"] == epochs
    assert run.data.metrics["budget_images_per_second"] > 0
    assert run.data.tags["segflow.budget_stopped_by"] == "budget"
    # Counted from the stage's start; the last step and its validation may pass the deadline.
    assert 0.8 < run.data.metrics["budget_spent_min"] < 1.2


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"model": "no_such_net"}, "model 'no_such_net' is unknown"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"batch_size": 16}, "train.batch_size"),
    ],
)
def test_bad_train_params_exit_1_with_one_message_and_no_traceback(trained, train, message):
    project, _ = trained
    params = project.root / "params.yaml"
    original, model = params.read_text(), (project.root / "models" / "best.pt").read_bytes()
    try:
        project.set_params(train=train)
        out = project.stage("train")
    finally:
        params.write_text(original)
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr
    assert (project.root / "models" / "best.pt").read_bytes() == model  # left as it was


def test_missing_shards_exit_1_naming_the_index(tmp_path):
    out = small_project(tmp_path).stage("train")
    assert out.returncode == 1
    assert "data/shards/index.json: not found; run the shard stage" in out.stderr
