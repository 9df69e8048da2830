"""`kill -9` during training: the next run of the stage continues it, or says why it does not.

A real SIGKILL of the train stage's process group, in a throw-away project whose shards are
already written, with the local launcher (plain PyTorch): what is tested is the stage's
bookkeeping, the same for both launchers; Ray's resume of a named run is in test_distributed.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.train.conftest import SIZE, make_shards
from tests.train.test_stage import SMALL, small_project

pytestmark = pytest.mark.integration

#: Outputs of earlier stages and runs that a killed training must leave as they were.
OUTPUTS = ("models/best.pt", "models/run.json", "reports/train_metrics.json", "data/shards")


def tiny_project(tmp_path: Path):
    """The pipeline with shards already in place: only the train stage runs here."""
    project = small_project(tmp_path)
    make_shards(tmp_path / "bands", train=8, val=4)
    shutil.copytree(tmp_path / "bands" / "shards", project.root / "data" / "shards")
    train = {**SMALL["train"], "launcher": "local", "epochs": 12}
    project.set_params(loader={"crop_height": SIZE[0], "crop_width": SIZE[1]}, train=train)
    return project


def kill_after_first_checkpoint(project) -> Path:
    """Start the train stage, SIGKILL its process group once a new run has a checkpoint."""
    runs = project.root / "ray_results"
    known = {p.name for p in runs.iterdir()} if runs.is_dir() else set()
    proc = subprocess.Popen(
        [sys.executable, "pipelines/train.py"],
        cwd=project.root,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed as a whole below
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            new = [p for p in runs.glob("train-*/last.pt") if p.parent.name not in known]
            if new:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return new[0].parent
            assert proc.poll() is None, "the stage ended before its first checkpoint"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("no checkpoint within 5 minutes")


def runs_by_name(project) -> dict[str, object]:
    client = mlflow.MlflowClient(f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segflow").experiment_id
    return {r.data.tags["segflow.ray_run_name"]: r for r in client.search_runs([experiment])}


def test_a_killed_training_is_continued_or_marked_killed_and_its_checkpoints_removed(tmp_path):
    project = tiny_project(tmp_path)
    shards = project.digest("data/shards")

    # 1. Killed part-way: the MLflow run is left RUNNING, the shards are untouched.
    first = kill_after_first_checkpoint(project)
    assert runs_by_name(project)[first.name].info.status == "RUNNING"
    assert project.digest("data/shards") == shards

    # 2. The params changed since: a fresh run, said in one line; the interrupted run is
    #    marked KILLED and its checkpoints are gone.
    project.set_params(train={"lr": 0.02})
    fresh = project.stage("train")
    log = fresh.stdout + fresh.stderr
    assert fresh.returncode == 0, log
    line = next(x for x in log.splitlines() if "starting a fresh run" in x)
    assert f"the interrupted run '{first.name}' trained with other params" in line
    assert "resuming" not in log and "Traceback" not in log
    runs = runs_by_name(project)
    assert runs[first.name].info.status == "KILLED"
    assert not first.exists()
    fresh_name = json.loads((project.root / "models" / "run.json").read_text())["ray_run_name"]
    assert runs[fresh_name].info.status == "FINISHED"
    before = {rel: project.digest(rel) for rel in OUTPUTS}

    # 3. Killed again: the outputs of step 2 stay as they were.
    second = kill_after_first_checkpoint(project)
    assert {rel: project.digest(rel) for rel in OUTPUTS} == before

    # 4. Same params and data: the same run (Ray run name and MLflow run) continues after its
    #    last checkpoint; only the best and the latest checkpoint remain.
    done = project.stage("train")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    killed_run = runs_by_name(project)[second.name]
    assert f"continuing the interrupted run '{second.name}'" in log
    resumed_after = int(log.split("train: resuming after epoch ")[1].split()[0])
    assert resumed_after >= 1 and "train: epoch 1/12 " not in log
    info = json.loads((project.root / "models" / "run.json").read_text())
    assert (info["ray_run_name"], info["mlflow_run_id"]) == (second.name, killed_run.info.run_id)
    assert runs_by_name(project)[second.name].info.status == "FINISHED"
    with (project.root / "reports" / "train_curve.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 13))
    assert sorted(p.name for p in second.iterdir()) == ["best.pt", "last.pt"]

    # 5. A kill between models/best.pt and models/run.json leaves a model run.json does not
    #    describe (here: the file replaced by other bytes); its reader says so in one line.
    best = project.root / "models" / "best.pt"
    best.write_bytes(best.read_bytes() + b"\0")
    out = project.stage("register")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "models/run.json: describes another models/best.pt" in out.stderr
    assert not (project.root / "reports" / "registry.json").exists()
