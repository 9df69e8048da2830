"""`dvc repro` end to end on tiny synthetic data in a temp project: every stage from synthesize
to register, with crf_tune (Ray Tune), evaluate (Ray tasks) and the MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.project import make_project
from tests.train.conftest import make_shards

pytestmark = pytest.mark.integration

TINY = {"num_train": 6, "num_val": 3, "num_test": 3, "height": 48, "width": 64}
TRAIN = {"epochs": 1, "launcher": "local", "batch_size": 2, "cpus_per_worker": 1}


def test_dvc_repro_runs_every_stage_scores_with_and_without_crf_and_reruns_nothing(tmp_path):
    project = make_project(
        tmp_path,
        synthetic=TINY,
        loader={"crop_height": 48, "crop_width": 64},
        train=TRAIN,
        crf={"w_bilateral": [3.0, 5.0], "sigma_alpha": 30.0, "sigma_beta": 3.0},
        evaluate={"num_samples_report": 3, "speed_repeats": 2},
    )
    first = project.dvc("repro")
    assert first.returncode == 0, first.stdout + first.stderr
    stages = ("synthesize", "ingest", "validate", "shard", "train", "tune", "crf_tune")
    for stage in (*stages, "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    # The sweeps print segflow's lines only: no Ray Tune experiment box or TensorBoard hint.
    log = first.stdout + first.stderr
    assert "Configuration for experiment" not in log and "tensorboard" not in log.lower()

    root = project.root
    crf = json.loads((root / "reports/crf_params.json").read_text())
    assert crf["params"]["w_bilateral"] in (3.0, 5.0)  # a point of the declared grid
    assert crf["params"]["sigma_alpha"] == 30.0
    assert sorted(p.name for p in (root / "data/probs/decision").glob("*.npz")) == [
        "val_0000.npz",
        "val_0001.npz",
        "val_0002.npz",
    ]

    metrics = json.loads((root / "reports/metrics.json").read_text())
    for name in ("pa", "mpa", "miou", "fwiou"):
        for key in (name, f"{name}_crf"):
            assert 0.0 <= metrics[key] <= 1.0, (key, metrics)
    assert metrics["ms_per_image"] > 0
    assert metrics["peak_memory_mb"] >= 0
    assert metrics["num_images"] == 3

    report = root / "reports/eval"
    assert "mean IoU (mIoU)" in (report / "index.html").read_text()
    assert len(list((report / "samples").glob("*.png"))) == 3
    # The samples: the worst, median and best of the 3 test images by their own mIoU.
    data = json.loads((report / "report_data.json").read_text())
    captions = [s["caption"] for s in data["samples"]]
    assert [c.split(" of 3 test images")[0] for c in captions] == ["worst", "median", "best"]
    mious = [float(c.rsplit("mIoU ", 1)[1].rstrip(" %")) for c in captions]
    assert mious == sorted(mious), captions
    # The header names the model and the run that trained it.
    run = json.loads((root / "models/run.json").read_text())
    header = data["provenance"]
    assert header["mlflow_run_id"] == run["mlflow_run_id"] and header["model"] == run["model"]
    assert (
        header["shards_hash"]
        == json.loads((root / "data/shards/index.json").read_text())["content_hash"]
    )
    assert run["mlflow_run_id"] in (report / "index.html").read_text()
    assert (report / "per_class_iou.csv").read_text().startswith("class,iou,iou_crf")

    registry = json.loads((root / "reports/registry.json").read_text())
    assert registry["name"] == "segflow-synthetic" and registry["version"] == "1"
    assert registry["aliases"] == ["challenger", "champion"]  # the first model is champion
    # The report logged to the run names the version it became.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    logged = client.download_artifacts(
        run["mlflow_run_id"], "evaluation/report/index.html", str(tmp_path)
    )
    text = Path(logged).read_text()
    assert "segflow-synthetic version 1 (aliases at registration: challenger, champion)" in text

    second = project.dvc("repro")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout


def test_evaluate_without_tuned_crf_params_fails_naming_the_file(tmp_path):
    project = make_project(tmp_path)
    make_shards(project.root / "data")  # intact shards: the stage checks them first
    result = project.stage("evaluate")
    assert result.returncode == 1
    assert "reports/crf_params.json: CRF parameters file not found" in result.stderr
    assert "Traceback" not in result.stderr
