"""MLflow records of a training run in a real sqlite store under tmp_path."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from segflow import tracking
from segflow.data.shards import read_index
from segflow.evaluate.serving import ServingSpec
from segflow.lifecycle.registration import log_served_model
from segflow.train.loop import fit
from segflow.train.state import BEST
from tests.train.conftest import NUM_CLASSES, SIZE, tiny_params


@pytest.fixture
def store(tmp_path, monkeypatch):
    # set then delete: monkeypatch restores the original value (or absence) afterwards, also
    # undoing the copy that mlflow.set_tracking_uri exports into the environment.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    yield tmp_path
    tracking.end_run()


def test_a_run_holds_params_tags_per_epoch_metrics_and_a_loadable_model(shards, store):
    params = tiny_params(epochs=2, run_name="tracked")
    state = fit(params, shards, store / "out", "cpu", echo=None)
    index = read_index(shards)

    run_id = tracking.start_training_run(params, index, root=store)
    tracking.log_history(state.history)
    spec = ServingSpec(input_size=SIZE).to_dict()
    uri = log_served_model(store / "out" / BEST, spec, index["classes"], name="model")
    tracking.end_run()

    assert (store / "mlruns" / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking.tracking_uri(store))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.data.params["train.lr"] == "0.05"
    assert run.data.params["train.model_options.width"] == "4"
    assert run.data.params["loader.crop_height"] == str(SIZE[0])
    assert run.data.tags["shards_content_hash"] == index["content_hash"]
    assert run.data.tags["git_commit"]
    for key in ("train_loss", "val_miou", "val_pixel_accuracy", "lr", "images_per_second"):
        points = client.get_metric_history(run_id, key)
        assert [p.step for p in sorted(points, key=lambda p: p.step)] == [1, 2], key
    miou = {p.step: p.value for p in client.get_metric_history(run_id, "val_miou")}
    assert miou[2] == pytest.approx(state.history[1]["val_miou"])

    # The logged model serves an image of any size as a label map, and holds no pickle.
    model = mlflow.pyfunc.load_model(uri)
    labels = model.predict(np.zeros((SIZE[0] + 7, SIZE[1] + 3, 3), np.uint8))
    assert labels.shape == (SIZE[0] + 7, SIZE[1] + 3) and labels.max() < NUM_CLASSES
    artifacts = store / "mlruns" / "artifacts"
    assert artifacts.is_dir() and any(artifacts.rglob("MLmodel"))
    stored = [p for p in artifacts.rglob("*") if p.is_file()]
    assert not [p for p in stored if p.suffix in (".pkl", ".pth", ".cloudpickle")], stored


def test_params_flatten_to_dotted_names():
    flat = tracking.flatten({"seed": 0, "train": {"lr": 0.1, "opts": {"w": 4}, "empty": {}}})
    assert flat == {"seed": "0", "train.lr": "0.1", "train.opts.w": "4", "train.empty": "{}"}


def test_the_git_commit_outside_a_repository_is_unknown(tmp_path):
    assert tracking.git_commit(tmp_path) == "unknown"


def test_the_tracking_uri_defaults_to_sqlite_under_mlruns_and_the_env_overrides(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("uri", "shared"),
    [
        ("https://alice:s3cret@mlflow.example.com:5000/", "https://mlflow.example.com:5000/"),
        ("http://token@10.0.0.5:5000", "http://10.0.0.5:5000"),
        ("https://mlflow.example.com/?token=s3cret#x", "https://mlflow.example.com/"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////srv/segflow/mlruns/mlflow.db", "sqlite:////srv/segflow/mlruns/mlflow.db"),
        ("databricks", "databricks"),
    ],
)
def test_the_tracking_uri_written_to_run_json_carries_no_credentials(uri, shared):
    assert tracking.public_uri(uri) == shared
