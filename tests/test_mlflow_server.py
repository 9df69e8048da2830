"""The pipeline against a real MLflow tracking server over HTTP, restarted in the middle of a run.

`mlflow server` (sqlite backend, artifacts served by the server) runs on 127.0.0.1; a temp
project runs `dvc repro` with ``MLFLOW_TRACKING_URI`` pointing at it. The server is killed once
the training run exists and started again (same port, same store) only after training has
written its learning curve, so the driver's history, model, evaluation and registry calls start
while the server is down or just back. MLflow's HTTP retries must carry them through: the run,
every per-epoch point, the model and the registered champion all end up on the server, and
nothing in the project's local mlruns/.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from segflow.train.outputs import STAGING
from tests.project import BIN, make_project
from tests.services import SERVER_ENV, MlflowServer

pytestmark = pytest.mark.integration

TINY = {"num_train": 6, "num_val": 3, "num_test": 3, "height": 48, "width": 64}
EPOCHS = 3
TRAIN = {"epochs": EPOCHS, "launcher": "local", "batch_size": 2, "cpus_per_worker": 1}
MODEL = "segflow-synthetic"


@pytest.fixture
def mlflow_server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root)
    server.start()  # booting while the test sets up; the test waits for it
    yield server
    server.kill()


def wait_for(condition, what: str, repro: subprocess.Popen, log: Path, timeout: float = 120.0):
    """Poll ``condition()`` until it returns something truthy; fail if `dvc repro` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if repro.poll() is not None:
            pytest.fail(f"dvc repro exited ({repro.returncode}) before {what}:\n{log.read_text()}")
        time.sleep(0.1)
    pytest.fail(f"no {what} after {timeout} s:\n{log.read_text()}")


def training_run(client):
    """The training run once start_training_run has finished with it (its tags are set last)."""
    experiment = client.get_experiment_by_name("segflow")
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    return runs[0] if runs else None


@pytest.mark.slow  # `make test-all`; CI's `make test` leaves it out (35-minute bound)
def test_pipeline_logs_and_registers_over_http_through_a_server_restart(
    tmp_path, mlflow_server, monkeypatch
):
    for key, value in SERVER_ENV.items():  # this process's client stays quiet too
        monkeypatch.setenv(key, value)
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    server = mlflow_server
    project = make_project(
        tmp_path,
        synthetic=TINY,
        loader={"crop_height": 48, "crop_width": 64},
        train=TRAIN,
        crf={"w_bilateral": 3.0, "sigma_alpha": 30.0, "sigma_beta": 3.0},  # one CRF trial
        evaluate={"num_samples_report": 2, "speed_repeats": 2},
        # The HTTP policy of a deployment whose server may restart under running stages: the
        # default (2 retries, ~5 s) gives up on a server that is down; 5 retries with backoff
        # 1 wait 0, 2, 4, 8, 16 s (~30 s) and do not idle long after it is back. The retries
        # themselves are MLflow's, as a user gets them with these params.
        mlflow={"http_retries": 5, "http_backoff_factor": 1},
    )
    project.env["MLFLOW_TRACKING_URI"] = server.url
    root = project.root
    staged = root / "models" / STAGING / "best.pt"
    client = MlflowClient(tracking_uri=server.url)
    log = tmp_path / "repro.log"
    with log.open("w") as out:
        repro = subprocess.Popen(
            [str(BIN / "dvc"), "repro"],
            cwd=root,
            env=project.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # The stages before train need no MLflow: they run while the server boots.
        server.wait_until_up()
        run = wait_for(lambda: training_run(client), "training run on the server", repro, log)
        server.kill()
        assert not staged.exists(), "training finished before the server went down"
        # trained, and now logging to MLflow (the outputs are replaced once that is done)
        wait_for(staged.exists, "the trained model staged in models/", repro, log)
        server.start()
        back_at = server.wait_until_up()
        returncode = repro.wait(timeout=240)
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)
            repro.wait()
    assert returncode == 0, log.read_text()

    run_info = json.loads((root / "models/run.json").read_text())
    assert run_info["mlflow_run_id"] == run.info.run_id
    assert run_info["mlflow_tracking_uri"] == server.url
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"

    # Every epoch's point of every curve column, exactly once: sent while the server was down.
    with (root / "reports/train_curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    epochs = [int(row["epoch"]) for row in rows]
    assert len(epochs) == EPOCHS
    keys = [k for k in rows[0] if k != "epoch" and all(row[k] != "" for row in rows)]
    assert {"train_loss", "val_miou", "lr"} <= set(keys)
    for key in keys:
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == epochs, key
        assert [m.value for m in history] == pytest.approx([float(r[key]) for r in rows]), key
        # Stamped before the restarted server answered: the client's retries delivered them.
        assert all(m.timestamp < back_at * 1000 for m in history), key

    # The evaluate stage's numbers, attached to the training run by the register stage: the
    # plain name is the served path's number, _network the network's alone, _crf with the CRF.
    metrics = json.loads((root / "reports/metrics.json").read_text())
    served = "_crf" if metrics["crf_applied"] else ""
    for key in ("miou", "pa", "fwiou"):
        assert run.data.metrics[f"test_{key}"] == pytest.approx(metrics[f"{key}{served}"]), key
        assert run.data.metrics[f"test_{key}_network"] == pytest.approx(metrics[key]), key
        assert run.data.metrics[f"test_{key}_crf"] == pytest.approx(metrics[f"{key}_crf"]), key
    assert run.data.metrics["test_ms_per_image"] == pytest.approx(metrics["ms_per_image"])

    # One logged model, the served one the register stage logged, whole.
    logged = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert [m.name for m in logged] == ["segmentation_model"]
    assert "model_uri" not in run_info
    for model in logged:
        assert model.status == LoggedModelStatus.READY, model
        names = {Path(a.path).name for a in client.list_logged_model_artifacts(model.model_id)}
        assert "MLmodel" in names, (model.name, names)
    stored = {p.name for p in (server.root / "artifacts").rglob("*") if p.is_file()}
    assert "best.pt" in stored and "model.pth" not in stored, stored  # checkpoints, no pickle

    # The registered version 1, champion, with the tags the gate and a reader need.
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1"
    assert version.run_id == run.info.run_id
    assert set(version.aliases) >= {"champion", "challenger"}
    index = json.loads((root / "data/shards/index.json").read_text())
    assert version.tags["dataset"] == "synthetic"
    assert json.loads(version.tags["classes"]) == index["classes"]
    assert json.loads(version.tags["metrics"]) == metrics
    assert float(version.tags["test_miou"]) in (metrics["miou"], metrics["miou_crf"])
    assert version.tags["test_split_hash"]
    assert version.tags["gate.decision"] == "promoted"
    record = json.loads((root / "reports/registry.json").read_text())
    assert (record["name"], record["version"]) == (MODEL, "1")
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1

    # Everything went over HTTP: no local store; artifacts went through the server's proxy.
    local = root / "mlruns"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
