"""`segflow predict` and the promotion gate trust the installed code, never the artifact store.

The artifact store is untrusted input: anyone who can write to its bucket can change a file of
a registered model. These tests change the stored files of a registered model the way such a
person would (a line of code in the logged ``pyfunc_model.py`` and in the bundled segflow, other
weights, another serving spec) in a real sqlite MLflow store, then load the model the ways segflow
does: the stored code never runs, and a changed artifact is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import cv2
import mlflow
import numpy as np
import pytest
import torch

from segflow.config import Params
from segflow.data.manifest import build_manifest
from segflow.data.shards import write_shards
from segflow.errors import SegflowError
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.lifecycle.gate import decision_split_of, run_gate
from segflow.lifecycle.registration import (
    CHAMPION,
    DIGEST_TAG,
    MODEL_NAME,
    fetch_checked,
    load_for_predict,
    register_model,
)
from tests.security.test_torch_load import plant_pickle
from tests.test_registry import CLASSES, SERVING, first_champion, segflow_cli, write_checkpoint
from tests.train.conftest import BandsAdapter

pytestmark = pytest.mark.integration

#: The code an attacker appends to a stored Python file: it leaves a file where it ran.
PLANTED = "\nimport pathlib; pathlib.Path({marker!r}).write_text('artifact code ran')\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A sqlite tracking store with one finished training run, and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("trust")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("trust", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    yield {
        "uri": uri,
        "experiment": experiment,
        "run_id": run.info.run_id,
        "checkpoint": write_checkpoint(root / "best.pt"),
    }
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture
def tracking(store, monkeypatch) -> dict:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    mlflow.set_tracking_uri(store["uri"])
    return store


def register(store: dict, dataset: str, checkpoint: Path | None = None):
    """A new version, as a new training run registers it (one run's model registers once)."""
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        pass
    return register_model(
        run.info.run_id, dataset, {"miou": 0.5}, 0.5, SERVING, CLASSES,
        checkpoint or store["checkpoint"], "a" * 64, prefix="segflow",
    )  # fmt: skip


def stored(version) -> Path:
    """The registered version's model directory as it lies in the (file) artifact store."""
    model_id = version.source.removeprefix("models:/")
    location = mlflow.MlflowClient().get_logged_model(model_id).artifact_location
    return Path(urlparse(location).path)


def other_weights(tmp_path: Path) -> bytes:
    """A valid checkpoint of the same network with other weights: what a swap would plant."""
    torch.manual_seed(1)
    path = write_checkpoint(tmp_path / "other.pt")
    return path.read_bytes()


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_predict_never_runs_code_from_the_artifact_store(tracking, tmp_path):
    version = register(tracking, "trust-code")
    first_champion(version)
    marker = tmp_path / "artifact-code-ran"
    model_dir = stored(version)
    for code in (model_dir / "pyfunc_model.py", model_dir / "code/segflow/__init__.py"):
        with code.open("a") as f:
            f.write(PLANTED.format(marker=str(marker)))
    cv2.imwrite(str(tmp_path / "in.png"), np.zeros((20, 30, 3), np.uint8))

    result = segflow_cli(
        "predict", "in.png", "--model", f"models:/{version.name}@{CHAMPION}", "--out", "mask.png",
        uri=tracking["uri"], cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("predict: in.png -> mask.png in ")
    assert cv2.imread(str(tmp_path / "mask.png")).shape == (20, 30, 3)
    assert not marker.exists()
    # The edit is live: MLflow's own loader (mlflow models serve, mlflow.pyfunc.load_model)
    # imports the stored code and runs it. That is the trust boundary README states.
    uri = f"models:/{version.name}/{version.version}"
    subprocess.run(
        [sys.executable, "-c", f"import mlflow; mlflow.pyfunc.load_model({uri!r})"],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking["uri"]}, capture_output=True,
        timeout=300, check=True,
    )  # fmt: skip
    assert marker.read_text() == "artifact code ran"


def test_predict_refuses_changed_weights_in_one_line_naming_the_artifact(tracking, tmp_path):
    version = register(tracking, "trust-weights")
    first_champion(version)
    (stored(version) / "artifacts" / "best.pt").write_bytes(other_weights(tmp_path))
    cv2.imwrite(str(tmp_path / "in.png"), np.zeros((20, 30, 3), np.uint8))

    result = segflow_cli(
        "predict", "in.png", "--model", f"models:/{version.name}@{CHAMPION}",
        uri=tracking["uri"], cwd=tmp_path,
    )  # fmt: skip

    line = one_error_line(result)
    assert line == (
        f"error: models:/{version.name}@champion (models:/{version.name}/{version.version}): "
        "artifact checkpoint (artifacts/best.pt) does not match its recorded sha256 "
        "(tag segflow.sha256.checkpoint); refusing a changed artifact"
    )
    assert not (tmp_path / "in_mask.png").exists()


@pytest.mark.parametrize(
    ("artifact", "path", "content"),
    [
        ("serving", "artifacts/serving.json", json.dumps({**SERVING, "mean": [0.0, 0.0, 0.0]})),
        ("classes", "artifacts/classes.json", json.dumps(CLASSES[::-1])),
    ],
)
def test_a_changed_serving_spec_or_class_table_is_refused(tracking, artifact, path, content):
    version = register(tracking, f"trust-{artifact}")
    (stored(version) / path).write_text(content)
    uri = f"models:/{version.name}/{version.version}"
    with pytest.raises(SegflowError) as caught:
        load_for_predict(uri)
    assert str(caught.value) == (
        f"{uri}: artifact {artifact} ({path}) does not match its recorded sha256 "
        f"(tag segflow.sha256.{artifact}); refusing a changed artifact"
    )


def test_every_artifact_digest_is_a_tag_of_the_version_and_of_the_logged_model(tracking):
    version = register(tracking, "trust-tags")
    model_dir = stored(version)
    logged = mlflow.MlflowClient().get_logged_model(version.source.removeprefix("models:/"))
    files = {"checkpoint": "best.pt", "serving": "serving.json", "classes": "classes.json"}
    for artifact, name in files.items():
        digest = hashlib.sha256((model_dir / "artifacts" / name).read_bytes())
        tag = DIGEST_TAG.format(artifact)
        assert version.tags[tag] == logged.tags[tag] == digest.hexdigest(), artifact


def test_the_run_and_logged_model_uris_are_checked_like_a_version(tracking, tmp_path):
    version = register(tracking, "trust-runs")
    model_id = version.source.removeprefix("models:/")
    uris = (f"runs:/{version.run_id}/{MODEL_NAME}", f"models:/{model_id}")
    for uri in uris:  # both load, from the logged model's own digests
        predictor, classes = load_for_predict(uri)
        assert classes == CLASSES
        assert predictor.labels(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)

    (stored(version) / "artifacts" / "best.pt").write_bytes(other_weights(tmp_path))
    for uri in uris:
        with pytest.raises(SegflowError, match=r"artifact checkpoint \(artifacts/best.pt\) does "):
            load_for_predict(uri)
    with pytest.raises(SegflowError, match=f"run {version.run_id} logged no model named 'x'"):
        load_for_predict(f"runs:/{version.run_id}/x")


def test_a_version_without_digests_is_refused_with_a_way_out(tracking):
    """Registered before segflow recorded digests (here: its tag removed): its files cannot be
    told from changed ones, and accepting it would let anyone skip the check by deleting a tag."""
    version = register(tracking, "trust-old")
    mlflow.MlflowClient().delete_model_version_tag(
        version.name, version.version, DIGEST_TAG.format("serving")
    )
    uri = f"models:/{version.name}/{version.version}"
    with pytest.raises(SegflowError) as caught:
        load_for_predict(uri)
    assert str(caught.value) == (
        f"{uri}: no artifact digests (tag segflow.sha256.serving): it was logged before segflow "
        "recorded them, so its artifacts cannot be checked; register it again (dvc repro register)"
    )


def test_an_mlmodel_pointing_outside_the_model_or_an_unknown_uri_is_refused(tracking, tmp_path):
    version = register(tracking, "trust-paths")
    mlmodel = stored(version) / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("path: artifacts/best.pt", "path: ../../x.pt"))
    uri = f"models:/{version.name}/{version.version}"
    with pytest.raises(SegflowError, match="MLmodel puts artifact checkpoint at '../../x.pt', out"):
        fetch_checked(uri, tmp_path / "dst")
    for bad in ("models:/segflow-x", "s3://bucket/model", f"models:/{version.name}/latest"):
        with pytest.raises(SegflowError, match=f"{bad}: not a model URI segflow loads"):
            load_for_predict(bad)


def test_a_registered_pickle_is_refused_even_with_matching_digests(tracking, tmp_path):
    """Whoever controls both the store and the tags can register any file with its digests;
    the checkpoint is still read with weights_only=True, so no code of theirs runs."""
    marker = tmp_path / "unpickled"
    version = register(tracking, "trust-pickle", plant_pickle(tmp_path / "best.pt", marker))
    with pytest.raises(SegflowError, match="refusing to unpickle"):
        load_for_predict(f"models:/{version.name}/{version.version}")
    assert not marker.exists()


def test_the_gate_refuses_to_score_a_champion_whose_checkpoint_changed(tracking, tmp_path):
    adapter = BandsAdapter(tmp_path / "raw", {"train": 2, "val": 3, "test": 3})
    shards = tmp_path / "shards"
    write_shards(build_manifest(adapter), adapter, shards, rows_per_shard=8, workers=1)
    champion = register(tracking, "trust-gate")
    first_champion(champion)
    (stored(champion) / "artifacts" / "best.pt").write_bytes(other_weights(tmp_path))
    new = register(tracking, "trust-gate")
    # The new model's counts as evaluate writes them: with an intact champion (the same
    # weights) the gate would score it and keep it; here it must refuse.
    predictor = load_predictor(tracking["checkpoint"], ServingSpec.from_dict(SERVING))
    pred = predict_split(predictor, shards, "val", tmp_path / "probs", len(CLASSES))
    params = Params.model_validate({"gate": {"bootstrap_samples": 100, "min_images": 1}})
    split = decision_split_of("val", "a" * 64, pred.sample_ids, None, "test")

    decision = run_gate(new, pred.image_counts, split, params, shards)

    assert decision["decision"] == "refused" and decision["champion_after"] == "1"
    assert decision["reason"] == (
        f"champion v1 cannot be scored: models:/{champion.name}/1: artifact checkpoint "
        "(artifacts/best.pt) does not match its recorded sha256 (tag segflow.sha256.checkpoint); "
        "refusing a changed artifact"
    )
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(champion.name, CHAMPION).version) == "1"
    tags = client.get_model_version(new.name, new.version).tags
    assert tags["gate.decision"] == "refused" and "does not match" in tags["gate.reason"]


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A real `mlflow server` on 127.0.0.1 that proxies artifacts (mlflow-artifacts:/)."""
    from tests.services import MlflowServer

    root = tmp_path / "server"
    root.mkdir()
    server = MlflowServer(root)
    server.start()
    try:
        server.wait_until_up()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        mlflow.set_tracking_uri(server.url)
        yield server
    finally:
        server.kill()


def test_every_uri_form_is_checked_through_a_tracking_server(server, tmp_path):
    experiment = mlflow.create_experiment("served")
    checkpoint = write_checkpoint(tmp_path / "best.pt")
    store = {"experiment": experiment, "checkpoint": checkpoint}
    version = register(store, "over-http")
    first_champion(version)
    model_id = version.source.removeprefix("models:/")
    uris = [
        f"models:/{version.name}@{CHAMPION}",
        f"models:/{version.name}/{version.version}",
        f"models:/{model_id}",
        f"runs:/{version.run_id}/{MODEL_NAME}",
    ]
    for uri in uris:
        assert load_for_predict(uri)[1] == CLASSES, uri

    (stored_weights,) = (server.root / "artifacts").rglob(f"{model_id}/artifacts/artifacts/best.pt")
    stored_weights.write_bytes(other_weights(tmp_path))
    for uri in uris:
        with pytest.raises(SegflowError, match=r"artifact checkpoint \(artifacts/best.pt\) does "):
            load_for_predict(uri)
