"""`segflow retrain` end to end in a throw-away project: new data -> dvc repro -> gate -> audit.

One project lives through the module's tests in order, as a scheduled job's checkout would:
the first model; a run without new data; new synthetic data (a seed change) with a better
model while a second retrain tries to start; new data with a model made worse on purpose (one
epoch); a failing stage. Every attempt is checked in reports/retrain_log.jsonl and in MLflow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import mlflow
import pytest

from segflow.config import RetrainParams, load_params
from segflow.data.manifest import read_manifest
from segflow.evaluate.bootstrap import load_image_counts, miou_of_counts
from segflow.lifecycle.retrain import StageFailed, update_data
from tests.data.helpers import make_folder_dataset
from tests.project import BIN, Project, make_project

pytestmark = pytest.mark.integration

TINY = {"num_train": 8, "num_val": 6, "num_test": 2, "height": 48, "width": 64}
#: One epoch learns little; six learn the scenes far better (mIoU ~0.04 vs ~0.13 seen here).
WEAK, STRONG = 1, 6


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    project = make_project(
        tmp_path_factory.mktemp("retrain"),
        synthetic=TINY,
        loader={"crop_height": 48, "crop_width": 64},
        train={"epochs": WEAK, "launcher": "local", "batch_size": 4, "cpus_per_worker": 1},
        crf={"w_bilateral": 3.0, "sigma_alpha": [30.0, 50.0], "sigma_beta": 3.0},
        evaluate={"num_samples_report": 1, "speed_repeats": 2},
        # The gate decides on val (6 images here): below its default of 20 on purpose.
        gate={"bootstrap_samples": 1000, "min_images": 4},
    )
    project.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}"
    git = ("git", "-c", "user.name=segflow", "-c", "user.email=ci@segflow.invalid")
    project.run("git", "add", "-A")
    assert project.run(*git, "commit", "-qm", "pipeline").returncode == 0
    return project


def retrain(project: Project) -> subprocess.CompletedProcess:
    return project.run(str(BIN / "segflow"), "retrain")


def records(project: Project) -> list[dict]:
    lines = (project.root / "reports" / "retrain_log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def client(project: Project) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(project.env["MLFLOW_TRACKING_URI"])


def champion(project: Project) -> str:
    version = client(project).get_model_version_by_alias("segflow-synthetic", "champion")
    return str(version.version)


def test_the_first_retrain_runs_every_stage_and_the_first_model_becomes_champion(project):
    result = retrain(project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    [record] = records(project)
    assert record["decision"] == "promoted" and record["retrained"] is True
    run = record["stages_run"]
    assert set(run[:5]) == {"synthesize", "check", "ingest", "validate", "shard"}, run
    assert run.index("check") < run.index("ingest") < run.index("validate") < run.index("shard")
    assert {"train", "evaluate", "register"} <= set(record["stages_run"])
    assert record["model_version"] == "1" and record["champion_after"] == "1"
    assert record["champion_before"] is None and record["previous_data_hash"] is None
    index = json.loads((project.root / "data/shards/index.json").read_text())
    assert record["data_hash"] == index["content_hash"]
    head = project.run("git", "rev-parse", "HEAD").stdout.strip()
    assert record["code_commit"] == head and len(head) == 40
    assert "retrain: promoted" in result.stderr
    assert champion(project) == "1"


def test_without_new_data_nothing_is_retrained_and_the_record_says_so(project):
    model = project.digest("models/best.pt")
    result = retrain(project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    record = records(project)[-1]
    assert record["decision"] == "no_new_data" and record["retrained"] is False
    assert "no new data" in record["reason"] and record["stages_run"] == []
    assert record["model_version"] == record["champion_after"] == "1"
    assert record["data_hash"] == record["previous_data_hash"] == records(project)[0]["data_hash"]
    assert "Running stage" not in result.stdout
    assert project.digest("models/best.pt") == model
    assert champion(project) == "1"


def test_new_data_retrains_a_better_model_is_promoted_and_a_concurrent_retrain_refuses(project):
    project.set_params(synthetic={"seed": 1}, train={"epochs": STRONG})
    first = subprocess.Popen(
        [str(BIN / "segflow"), "retrain"], cwd=project.root, env=project.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lock = project.root / "reports" / "retrain.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and f"pid {first.pid}" in lock.read_text()):
        assert time.monotonic() < deadline and first.poll() is None, "retrain never took the lock"
        time.sleep(0.2)
    second = retrain(project)
    assert second.returncode == 75
    assert f"another retrain is running (pid {first.pid} on" in second.stderr
    assert "Traceback" not in second.stderr
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:] + err

    log = records(project)
    assert len(log) == 3  # the refused attempt did nothing, so it recorded nothing
    record = log[-1]
    assert record["decision"] == "promoted" and record["retrained"] is True
    assert record["data_hash"] != record["previous_data_hash"] == log[0]["data_hash"]
    assert "synthesize" in record["stages_run"] and "train" in record["stages_run"]
    assert record["model_version"] == "2" and record["champion_before"] == "1"
    assert record["decision_split"] == "val" and record["decision_images"] == TINY["num_val"]
    assert record["confidence"] == 0.95
    assert record["ci_low"] > record["min_gain"] == 0.0
    assert record["ci_low"] <= record["miou_diff"] <= record["ci_high"]
    # each figure is rounded to 6 decimals in the record, the difference on its own
    assert record["miou_diff"] == pytest.approx(
        record["new_miou"] - record["champion_miou"], abs=2e-6
    )
    # The new model's score in the gate is the evaluate stage's on the decision split (it serves
    # what it was scored as); the test score is reported beside it and decides nothing.
    served = "crf" if json.loads((project.root / "reports/registry.json").read_text())[
        "crf_applied"] else "raw"  # fmt: skip
    counts = load_image_counts(project.root / "reports" / "eval_image_counts.npz", "")
    assert counts.split == "val"
    assert record["new_miou"] == pytest.approx(
        miou_of_counts(counts.counts[served].sum(axis=0)), abs=1e-5
    )
    metrics = json.loads((project.root / "reports" / "metrics.json").read_text())
    assert record["test_miou"] == pytest.approx(metrics[f"miou{'_crf' * (served == 'crf')}"])
    gate = (project.root / "reports" / "gate.md").read_text()
    assert "**promoted**" in gate and f"{record['ci_low']:+.4f}" in gate
    assert champion(project) == "2"


def test_new_data_with_a_worse_model_registers_it_but_keeps_the_champion(project):
    project.set_params(synthetic={"seed": 2}, train={"epochs": WEAK})
    result = retrain(project)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    record = records(project)[-1]
    assert record["decision"] == "kept" and record["retrained"] is True
    assert record["model_version"] == "3" and record["champion_after"] == "2"
    assert record["ci_high"] < 0 and record["new_miou"] < record["champion_miou"]
    assert "lower bound not above min_gain" in record["reason"]
    assert champion(project) == "2"
    version = client(project).get_model_version("segflow-synthetic", "3")
    assert version.tags["gate.decision"] == "kept" and "challenger" in version.aliases


def test_a_failing_stage_exits_non_zero_and_leaves_the_champion_and_outputs(project):
    model, registry = project.digest("models/best.pt"), project.digest("reports/registry.json")
    project.set_params(synthetic={"seed": 3}, train={"pretrained": "weights/missing.pth"})
    result = retrain(project)
    assert result.returncode == 1
    assert "retrain: failed" in result.stderr
    record = records(project)[-1]
    assert record["decision"] == "failed" and record["failed_stage"] == "train"
    assert "failed to reproduce 'train'" in record["reason"]
    assert project.digest("models/best.pt") == model
    assert project.digest("reports/registry.json") == registry
    assert champion(project) == "2"
    versions = client(project).search_model_versions("name='segflow-synthetic'")
    assert len(versions) == 3


def test_every_attempt_is_an_mlflow_run_whose_tags_are_the_audit_record(project):
    log = records(project)
    assert [r["decision"] for r in log] == ["promoted", "no_new_data", "promoted", "kept", "failed"]
    mlflow_client = client(project)
    experiment = mlflow_client.get_experiment_by_name("segflow-retrain")
    runs = mlflow_client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
    assert [r.info.run_id for r in runs] == [r["mlflow_audit_run_id"] for r in log]
    assert [r.info.status for r in runs] == ["FINISHED"] * 4 + ["FAILED"]
    for run, record in zip(runs, log, strict=True):
        tags = run.data.tags
        assert tags["retrain.decision"] == record["decision"]
        assert tags["retrain.data_hash"] == record["data_hash"]
        assert tags["retrain.code_commit"] == record["code_commit"]
        assert tags["retrain.time"] == record["time"]
    promoted = log[2]
    training = mlflow_client.get_run(promoted["mlflow_run_id"]).data.tags
    assert training["retrain.decision"] == "promoted"
    assert float(training["retrain.ci_low"]) == pytest.approx(promoted["ci_low"])
    assert float(training["retrain.champion_miou"]) == pytest.approx(promoted["champion_miou"])
    assert training["retrain.model_version"] == "2"


def test_update_brings_an_imported_dataset_to_its_latest_version_and_ingest_sees_it(
    tmp_path, monkeypatch
):
    """Step 1 for data that lives elsewhere: a folder dataset imported with `dvc import-url`;
    files added at the source arrive with `dvc update` and make the ingest stage re-run."""
    source = tmp_path / "source"
    make_folder_dataset(source, n_train=3, n_val=1, n_test=1)
    project = make_project(
        tmp_path,
        dataset={"name": "folder", "root": "data/raw", "classes_file": "data/raw/classes.yaml"},
        retrain={"update": ["data/raw.dvc"]},
    )
    (project.root / "data").mkdir()
    imported = project.dvc("import-url", str(source), "data/raw")
    assert imported.returncode == 0, imported.stderr
    assert project.dvc("repro", "ingest").returncode == 0
    for kind in ("images", "masks"):  # a new training sample at the source
        shutil.copy(source / kind / "train" / "train_0.png", source / kind / "train" / "new.png")

    monkeypatch.chdir(project.root)
    update_data(load_params("params.yaml"))
    assert (project.root / "data/raw/images/train/new.png").is_file()
    again = project.dvc("repro", "ingest")
    assert "Running stage 'ingest'" in again.stdout
    assert len(read_manifest(project.root / "data/manifest.parquet").frame) == 6

    missing = load_params("params.yaml").model_copy(
        update={"retrain": RetrainParams(update=["data/other.dvc"])}
    )
    with pytest.raises(StageFailed, match="retrain.update: data/other.dvc: no such .dvc file"):
        update_data(missing)
