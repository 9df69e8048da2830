"""The registered model does exactly what evaluate scored, and loads without unpickling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import numpy as np
import pytest

from segflow.data.loader import ShardReader, split_files
from segflow.errors import SegflowError
from segflow.evaluate.crf_split import SavedProbs, labels_of_file
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.lifecycle.registration import register_model
from segflow.postprocess.crf_params import CRFParams
from segflow.postprocess.probs import prob_path
from tests.evaluate.test_native_resolution import HALF, half_size_shards
from tests.test_registry import CLASSES, write_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    return run.info.run_id


def test_pyfunc_labels_equal_the_labels_evaluate_scored_multiscale_flip_and_crf(tmp_path, store):
    shard_dir, _ = half_size_shards(tmp_path / "data")
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    spec = ServingSpec(
        mode="multiscale",
        options={"scales": [0.75, 1.0, 1.25], "flip": True},
        input_size=HALF,
        crf=CRFParams(w_bilateral=5.0, sigma_alpha=30.0, sigma_beta=3.0, iterations=5),
    )
    # The evaluate stage's path: probabilities of the test split at native size, then the CRF
    # over the saved files (labels_of_file is what each of its Ray tasks scores).
    predictor = load_predictor(checkpoint, dataclasses.replace(spec, crf=None), "cpu")
    pred = predict_split(predictor, shard_dir, "test", tmp_path / "probs", len(CLASSES))
    scored = [
        labels_of_file(SavedProbs.read(prob_path(tmp_path / "probs", f)), spec.crf, len(CLASSES))[1]
        for f in pred.file_ids
    ]

    version = register_model(
        store, "served", {"miou": 0.5, "crf_applied": True}, 0.5, spec.to_dict(), CLASSES,
        checkpoint, "a" * 64, prefix="segflow",
    )  # fmt: skip
    uri = f"models:/{version.name}/{version.version}"
    model = mlflow.pyfunc.load_model(uri)
    reader = ShardReader(split_files(shard_dir, "test"))
    assert len(reader) == len(scored) == 3
    for i, expected in enumerate(scored):
        image, label = reader.decoded(i, native=True)
        served = model.predict(image)
        assert served.shape == label.shape == expected.shape  # native size, not HALF
        assert np.array_equal(served, expected), f"test image {i} differs"

    # Nothing in the model directory is a pickle: code, JSON and a weights-only checkpoint.
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    assert {"serving.json", "classes.json", "best.pt"} <= files


def test_a_wrong_array_gets_a_short_message_saying_what_is_expected(tmp_path, store):
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    version = register_model(
        store,
        "wrong",
        {"miou": 0.5},
        0.5,
        ServingSpec().to_dict(),
        CLASSES,
        checkpoint,
        "a" * 64,
        prefix="segflow",
    )
    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    big = np.full((300, 400), 0.25, np.float32)  # a grey image as floats, no channel axis
    with pytest.raises(Exception) as caught:
        model.predict(big)
    message = str(caught.value)
    assert len(message) < 400, message
    assert "H x W x 3 uint8" in message and "0.25" not in message
    with pytest.raises(SegflowError, match="H x W x 3 uint8"):
        model.unwrap_python_model().predict(None, np.full((4, 4, 3), 256, np.int64))
