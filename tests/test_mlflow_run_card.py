"""What the MLflow UI shows of a trained, scored and registered model: the experiment kind, a
run named after its model with its dataset as an input, test metrics whose plain name is the
served number, per-class IoU and sample images, one logged model with a signature and an input
example, and a version description a reader can use. A real sqlite store under tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from segflow import tracking
from segflow.data.datasets.base import ClassInfo
from segflow.evaluate.metrics import ConfusionMatrix
from segflow.evaluate.report import Provenance, QualitativeSample, pick_samples, write_report
from segflow.lifecycle.registration import (
    EXAMPLE_SHAPE,
    MODEL_NAME,
    log_evaluation,
    per_class_iou,
    register_model,
)
from segflow.lifecycle.run_card import metric_key, run_test_metrics
from segflow.stages.register import log_registered_report
from tests.test_registry import CLASSES, SERVING, write_checkpoint
from tests.train.conftest import tiny_params

#: metrics.json of a model whose served path applies the CRF.
METRICS = {
    "miou": 0.5, "miou_crf": 0.6, "pa": 0.8, "pa_crf": 0.85, "mdice": 0.55, "mdice_crf": None,
    "crf_applied": True, "ms_per_image": 12.5, "num_images": 3, "gate_split": "val",
}  # fmt: skip


def test_the_plain_name_is_the_served_number_and_the_others_say_what_they_are():
    per_class = [
        {"class": "road", "iou": 0.7, "iou_crf": 0.75},
        {"class": "traffic sign", "iou": 0.2, "iou_crf": None},
    ]
    got = run_test_metrics(METRICS, per_class)
    assert got["test_miou"] == 0.6 and got["test_miou_network"] == 0.5
    assert got["test_miou_crf"] == 0.6 and got["test_pa"] == 0.85
    assert "test_mdice" not in got and got["test_mdice_network"] == 0.55  # undefined: left out
    assert got["test_iou_road"] == 0.75 and "test_iou_traffic_sign" not in got
    assert got["test_ms_per_image"] == 12.5 and got["test_num_images"] == 3
    assert "test_crf_applied" not in got and "test_gate_split" not in got
    plain = run_test_metrics({**METRICS, "crf_applied": False}, per_class)
    assert plain["test_miou"] == 0.5 and plain["test_iou_traffic_sign"] == 0.2
    assert metric_key("traffic sign/light") == "traffic_sign_light"


def test_the_run_is_named_after_its_model_unless_the_user_named_it():
    named = tiny_params(
        model="deeplabv3plus", backbone="resnet18", run_name="train-20261207-131500"
    )
    assert tracking.mlflow_run_name(named) == "deeplabv3plus-resnet18-20261207-131500"
    assert tracking.mlflow_run_name(tiny_params(run_name="my-baseline")) == "my-baseline"
    assert tracking.mlflow_run_name(tiny_params()).startswith("unet-")


def scored_report(out: Path) -> Path:
    """A real evaluation report of three images, the CRF served."""
    classes = [ClassInfo(c["id"], c["name"], tuple(c["color"])) for c in CLASSES]
    rng = np.random.default_rng(0)
    cm, cm_crf, samples = ConfusionMatrix(3), ConfusionMatrix(3), []
    for i in range(3):
        label = rng.integers(0, 3, (12, 16)).astype(np.uint8)
        pred = np.where(rng.random(label.shape) < 0.3 * i, (label + 1) % 3, label).astype(np.uint8)
        cm.update(torch.from_numpy(label), torch.from_numpy(pred))
        cm_crf.update(torch.from_numpy(label), torch.from_numpy(label))
        image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        samples.append(QualitativeSample(f"img{i}", image, label, pred, label, f"rank {i}"))
    picks = pick_samples([0.3, 0.6, 0.9], 3)
    samples = [
        QualitativeSample(**{**s.__dict__, "caption": p.caption(s.id, "test")})
        for s, p in zip(samples, picks, strict=True)
    ]
    write_report(
        out, classes, cm.compute(), cm_crf.compute(), cm.mat.numpy(), cm_crf.mat.numpy(),
        samples, {}, crf_served=True, provenance=Provenance(model="unet"),
    )  # fmt: skip
    return out


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the default store under tmp_path/mlruns
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    tracking.end_run()


def test_shards_on_an_object_store_are_the_runs_input_at_their_uri(project: Path):
    params = tiny_params(run_name="train-20261207-131501")
    index = {"content_hash": "d" * 64, "dataset": "bands", "uri": "s3://bucket/bands"}
    run_id = tracking.start_training_run(params, index, root=project)
    tracking.end_run()
    run = mlflow.MlflowClient(tracking.tracking_uri(project)).get_run(run_id)
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.source_type == "s3"
    assert json.loads(dataset.dataset.source)["uri"] == "s3://bucket/bands"


def test_a_registered_version_is_one_model_with_a_signature_per_class_metrics_and_a_description(
    project: Path,
):
    params = tiny_params(run_name="train-20261207-131500")
    index = {"content_hash": "c" * 64, "dataset": "bands", "classes": CLASSES}
    run_id = tracking.start_training_run(params, index, root=project)
    tracking.end_run()
    client = mlflow.MlflowClient(tracking.tracking_uri(project))
    run = client.get_run(run_id)
    assert run.info.run_name == "unet-20261207-131500"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.name == "bands-shards" and dataset.dataset.digest == "c" * 36
    assert {t.key: t.value for t in dataset.tags}["mlflow.data.context"] == "training"

    report = scored_report(project / "reports" / "eval")
    metrics_file = project / "metrics.json"
    metrics_file.write_text(json.dumps(METRICS))
    log_evaluation(run_id, METRICS, metrics_file, report)
    version = register_model(
        run_id, "bands", METRICS, 0.6, SERVING, CLASSES, write_checkpoint(project / "best.pt"),
        "a" * 64, prefix="segflow", per_class=per_class_iou(report),
    )  # fmt: skip
    log_registered_report(run_id, report, version, ["challenger"])

    # One logged model in the run, the registered one, with a signature and an input example.
    logged = client.search_logged_models([run.info.experiment_id])
    assert [(m.name, m.source_run_id) for m in logged] == [(MODEL_NAME, run_id)]
    local = Path(mlflow.artifacts.download_artifacts(logged[0].artifact_location, dst_path="m"))
    mlmodel = local / "MLmodel"
    spec = yaml.safe_load(mlmodel.read_text())
    assert json.loads(spec["signature"]["outputs"])[0]["tensor-spec"]["dtype"] == "uint8"
    assert spec["saved_input_example_info"]["type"] == "ndarray"
    example = mlflow.models.Model.load(str(mlmodel)).load_input_example(str(local))
    assert example.shape == EXAMPLE_SHAPE  # read back from JSON: integers, no uint8
    labels = mlflow.pyfunc.load_model(str(local)).predict(example)  # the model takes it as is
    assert labels.shape == EXAMPLE_SHAPE[:2] and labels.dtype == np.uint8

    # Served and network numbers under their own names, each class's IoU, the sample images.
    got = client.get_run(run_id).data.metrics
    assert got["test_miou"] == 0.6 and got["test_miou_network"] == 0.5
    per_class = json.loads((report / "per_class_iou.json").read_text())
    for row in per_class:
        assert got[f"test_iou_{row['class']}"] == pytest.approx(row["iou_crf"]), row
    images = {a.path for a in client.list_artifacts(run_id, "images")}
    for role in ("worst", "median", "best"):
        assert any(f"test_sample_{role}" in path for path in images), images

    # The version's description: the served metrics and per-class IoU as markdown tables.
    text = client.get_model_version(version.name, version.version).description
    assert "| mIoU | 60.00 % |" in text and "| pixel accuracy | 85.00 % |" in text
    assert "| mIoU of the network alone (no CRF) | 50.00 % |" in text
    for row in per_class:
        assert f"| {row['class']} | {100 * row['iou_crf']:.2f} % |" in text
    assert f"models:/{version.name}/{version.version}" in text and run_id in text

    # The run's report names the version it became; the local report is unchanged.
    logged_report = client.download_artifacts(run_id, "evaluation/report/index.html", ".")
    assert (
        "segflow-bands version 1 (aliases at registration: challenger)"
        in Path(logged_report).read_text()
    )
    assert "not yet registered" in (report / "index.html").read_text()
