"""A registered version carries its ONNX export, so a deployment takes it from the registry.

A real sqlite MLflow store in a temp dir; the model is the trained tiny U-Net of conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlflow
import pytest

from segflow.deploy.export import SPEC_FILE, load_runner
from segflow.deploy.registered import ERROR_TAG, attach_onnx, fetch_onnx
from segflow.errors import SegflowError
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.lifecycle.registration import CHALLENGER, load_for_predict, register_model
from tests.deploy.conftest import MULTISCALE_FLIP

#: Each export takes seconds to tens of seconds: not for `make test-fast`.
pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path, monkeypatch) -> dict:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    art = tmp_path / "art"
    experiment = mlflow.create_experiment("t", artifact_location=art.as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    return {"run_id": run.info.run_id, "artifacts": art}


def register(store: dict, trained, spec: ServingSpec, dataset: str = "deploy"):
    return register_model(
        store["run_id"], dataset, {"miou": 0.5}, 0.5, spec.to_dict(), trained.classes,
        trained.checkpoint, "a" * 64, prefix="segflow",
    )  # fmt: skip


def test_a_version_registered_with_multiscale_and_flip_exports_them_in_the_graph(
    trained, store, tmp_path
):
    spec = dataclasses.replace(trained.spec, mode="multiscale", options=MULTISCALE_FLIP)
    version = register(store, trained, spec)
    record = attach_onnx(version, trained.checkpoint, spec.to_dict(), trained.classes)
    assert record["files"] == {"onnx": "onnx/model.onnx", "onnx_spec": "onnx/export.json"}
    tags = mlflow.MlflowClient().get_model_version(version.name, version.version).tags
    assert tags["segflow.sha256.onnx"] == record["sha256"]["onnx"]
    assert tags["segflow.sha256.onnx_spec"] == record["sha256"]["onnx_spec"]

    uri = f"models:/{version.name}@{CHALLENGER}"
    model = fetch_onnx(uri, tmp_path / "deploy")
    written = json.loads((model.parent / SPEC_FILE).read_text())
    assert written["in_graph"]["inference"] == {"mode": "multiscale", "options": MULTISCALE_FLIP}
    assert written["source"]["resolved"] == f"models:/{version.name}/{version.version}"
    assert written["source"]["sha256"]["checkpoint"] == tags["segflow.sha256.checkpoint"]

    # What `segflow predict` serves from the same version, against the downloaded ONNX file.
    served, _ = load_for_predict(uri)
    single = load_predictor(trained.checkpoint, trained.spec, "cpu")
    run = load_runner(model, "onnx")
    images = trained.val_images()
    for i, image in enumerate(images):
        labels = run(image[None])[0]
        assert (labels == served.labels(image)).mean() >= 0.999, f"val image {i}"
    # ... and multi-scale + flip is not single-scale here, so the comparison tells them apart.
    assert any((single.labels(im) != served.labels(im)).any() for im in images)


def test_a_changed_onnx_file_in_the_artifact_store_is_refused(trained, store, tmp_path):
    version = register(store, trained, trained.spec)
    attach_onnx(version, trained.checkpoint, trained.spec.to_dict(), trained.classes)
    stored = [p for p in Path(store["artifacts"]).rglob("model.onnx") if "onnx" in p.parts]
    assert len(stored) == 1
    stored[0].write_bytes(stored[0].read_bytes() + b"\0")
    with pytest.raises(SegflowError, match=r"onnx/model.onnx does not match its recorded sha256"):
        fetch_onnx(f"models:/{version.name}/{version.version}", tmp_path / "deploy")
    assert not (tmp_path / "deploy" / "model.onnx").exists()


def test_an_export_that_fails_leaves_the_version_registered_and_says_why(
    trained, store, tmp_path, capsys
):
    # Sliding windows at each image's own size: no fixed graph can hold them.
    spec = ServingSpec(mode="sliding", options={"crop": [8, 16]})
    version = register(store, trained, spec, dataset="noexport")
    capsys.readouterr()  # MLflow's own lines about the registration
    record = attach_onnx(version, trained.checkpoint, spec.to_dict(), trained.classes)
    assert "number of windows that depends on each image" in record["error"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"register: models:/{version.name}/{version.version} has no ONNX export: sliding-window"
    )
    again = mlflow.MlflowClient().get_model_version(version.name, version.version)
    assert again.tags[ERROR_TAG] == record["error"] and CHALLENGER in again.aliases
    assert fetch_onnx(f"models:/{version.name}/{version.version}", tmp_path / "d") is None
    predictor, _ = load_for_predict(f"models:/{version.name}@{CHALLENGER}")
    image = trained.val_images()[0]
    assert predictor.labels(image).shape == image.shape[:2]  # the model itself still serves
