"""The Model Registry: registration, the promotion gate, the pyfunc model and `segflow predict`.

Everything runs against a real MLflow sqlite store in a temp dir; the model is a tiny U-Net
saved in the training-checkpoint format. The gate's decision logic is fed per-image counts
directly; the register stage scores the models on real shards.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
import torch

from segflow.config import TrainParams
from segflow.data.manifest import build_manifest
from segflow.data.shards import write_shards
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import ImageCounts, image_counts, save_image_counts
from segflow.evaluate.crf_split import crf_over_split_serial
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.lifecycle.gate import DecisionSplit, decide, gate_markdown
from segflow.lifecycle.registration import (
    CHALLENGER,
    CHAMPION,
    champion_version,
    register_model,
    registered_name,
)
from segflow.postprocess.crf_params import CRFParams
from segflow.train.state import TrainState, save_checkpoint
from tests.project import segflow_cli
from tests.train.conftest import BandsAdapter

REPO = Path(__file__).resolve().parents[1]
CLASSES = [
    {"id": 0, "name": "road", "color": [128, 64, 128]},
    {"id": 1, "name": "car", "color": [64, 0, 128]},
    {"id": 2, "name": "sky", "color": [128, 128, 128]},
]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SERVING = ServingSpec(mean=MEAN, std=STD).to_dict()
HASH_A, HASH_B = "a" * 64, "b" * 64
#: The gate's decision split of these tests: 12 val images, no groups.
VAL12 = DecisionSplit("val", HASH_A, [f"val_{i:03d}" for i in range(12)], None)


def write_checkpoint(path: Path) -> Path:
    """A tiny U-Net in the format train.loop.load_model reads (train_params + num_classes)."""
    p = TrainParams(
        model="unet",
        backbone=None,
        output_stride=None,
        model_options={"width": 4, "upsample": "bilinear"},
    )
    from segflow.models.checkpoint import build_model

    torch.manual_seed(0)
    model = build_model(p, len(CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    extra = {"train_params": p.model_dump(mode="json"), "num_classes": len(CLASSES)}
    save_checkpoint(path, TrainState(model, opt, sched), extra)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A sqlite tracking store, one finished training run and a checkpoint."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("test", artifact_location=(root / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    yield {
        "uri": uri,
        "root": root,
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


def register(store: dict, dataset: str, miou: float, split_hash: str):
    """A new version, as a new training run registers it (one run's model registers once)."""
    with mlflow.start_run(experiment_id=store["experiment"]) as run:
        pass
    return register_model(
        run.info.run_id, dataset, {"miou": miou, "pa": 0.9}, miou, SERVING, CLASSES,
        store["checkpoint"], split_hash, prefix="segflow",
    )  # fmt: skip


def champion_of(name: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION).version)


def counts(accuracy: float, images: int = 12, seed: int = 0) -> np.ndarray:
    """Per-image counts (N x 3 x 3) of a model whose pixels are right with prob. ``accuracy``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        mat = np.zeros((3, 3), dtype=np.int64)
        for t in range(3):
            pixels = int(rng.integers(100, 300))
            right = rng.binomial(pixels, accuracy)
            mat[t, t] = right
            mat[t, (t + 1) % 3] = pixels - right
        out.append(image_counts(mat))
    return np.stack(out)


def first_champion(version) -> dict:
    """Promote the first version of a name (no champion: no scores needed)."""
    return decide(version.name, version.version, counts(0.5), None, None, None, VAL12, 0.0)


def test_gate_promotes_only_when_the_bootstrap_interval_clears_min_gain(tracking):
    name = registered_name("gate", "segflow")
    client = mlflow.MlflowClient()
    scores = {}  # version -> its per-image counts on the (one) decision split

    def gate(version, accuracy, min_gain=0.0, seed=0):
        scores[str(version.version)] = counts(accuracy, seed=seed)
        current = champion_version(name)
        old = scores[str(current.version)] if current is not None else None
        return decide(
            name, version.version, scores[str(version.version)], current, old, None, VAL12,
            min_gain, 12, 0.95, 1000, 0,
        )  # fmt: skip

    v1 = register(tracking, "gate", 0.50, HASH_A)
    assert v1.name == name and CHALLENGER in v1.aliases
    first = gate(v1, 0.70)
    assert first["decision"] == "promoted" and first["bootstrap"] is None
    assert champion_of(name) == str(v1.version)

    v2 = register(tracking, "gate", 0.40, HASH_A)  # clearly worse
    worse = gate(v2, 0.50, seed=1)
    assert worse["decision"] == "kept" and worse["bootstrap"]["high"] < 0
    assert champion_of(name) == str(v1.version)
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == str(v2.version)

    v3 = register(tracking, "gate", 0.70, HASH_A)  # as good: the interval straddles zero
    same = gate(v3, 0.70, seed=2)
    assert same["decision"] == "kept" and same["bootstrap"]["low"] < 0 < same["bootstrap"]["high"]

    v4 = register(tracking, "gate", 0.75, HASH_A)  # better, but not by min_gain
    small = gate(v4, 0.75, min_gain=0.5, seed=3)
    assert small["decision"] == "kept" and 0 < small["bootstrap"]["low"] < 0.5

    v5 = register(tracking, "gate", 0.90, HASH_A)  # clearly better: lower bound above 0
    better = gate(v5, 0.90, seed=4)
    assert better["decision"] == "promoted" and better["champion_before"] == str(v1.version)
    assert better["bootstrap"]["low"] > 0 and champion_of(name) == str(v5.version)
    assert "on the same 12 val images" in better["reason"]

    v6 = register(tracking, "gate", 0.95, HASH_B)

    refusal = "the model predicts 5 classes, the val split has 3"
    other = decide(
        name, v6.version, counts(0.99), champion_version(name), None, refusal, VAL12, 0.0
    )
    assert other["decision"] == "refused" and "predicts 5 classes" in other["reason"]
    assert champion_of(name) == str(v5.version)

    versions = client.search_model_versions(f"name='{name}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4, 5, 6]  # nothing deleted
    decisions = {str(v.version): v.tags["gate.decision"] for v in versions}
    assert decisions == {
        "1": "promoted", "2": "kept", "3": "kept", "4": "kept", "5": "promoted", "6": "refused"
    }  # fmt: skip
    tags = client.get_model_version(name, v5.version).tags
    assert float(tags["gate.low"]) == pytest.approx(better["bootstrap"]["low"])
    assert float(tags["gate.old_miou"]) == pytest.approx(better["bootstrap"]["old_miou"])
    assert client.get_model_version(name, v2.version).tags["test_miou"] == "0.4"


def test_registered_version_carries_metrics_serving_spec_and_class_table(tracking):
    crf = CRFParams(w_bilateral=4.0, sigma_alpha=30.0, iterations=2)
    serving = ServingSpec(mean=MEAN, std=STD, crf=crf).to_dict()
    metrics = {"miou": 0.3, "miou_crf": 0.35, "crf_applied": True}
    version = register_model(
        tracking["run_id"], "tags", metrics, 0.35, serving, CLASSES, tracking["checkpoint"],
        HASH_A, prefix="segflow",
    )  # fmt: skip
    tags = version.tags
    assert json.loads(tags["serving"]) == json.loads(json.dumps(serving))
    assert json.loads(tags["classes"]) == CLASSES
    assert float(tags["test_miou"]) == 0.35 and tags["test_split_hash"] == HASH_A
    assert version.run_id == tracking["run_id"]

    model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    labels = model.predict(np.random.default_rng(0).integers(0, 256, (20, 28, 3), np.uint8))
    assert labels.shape == (20, 28) and labels.dtype == np.uint8 and labels.max() < len(CLASSES)


def test_champion_pyfunc_model_maps_an_image_to_a_label_map_of_its_size(tracking):
    version = register(tracking, "roundtrip", 0.5, HASH_A)
    first_champion(version)
    model = mlflow.pyfunc.load_model(f"models:/{version.name}@champion")
    image = np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)
    labels = model.predict(image)
    assert labels.shape == (30, 45) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    # Same input, same output: the model is in eval mode and deterministic.
    assert np.array_equal(labels, model.predict(image))


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_predict_command_writes_a_coloured_mask_of_the_input_size(tracking, tmp_path):
    version = register(tracking, "cli", 0.5, HASH_A)
    first_champion(version)
    image = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "in.png"), image)
    result = segflow_cli(
        "predict", "in.png", "--model", "models:/segflow-cli@champion", "--out", "mask.png",
        "--labels", "labels.png", uri=tracking["uri"], cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"in \d+ ms \(network \d+ ms\)", result.stdout)  # the served path's time
    mask = cv2.cvtColor(cv2.imread(str(tmp_path / "mask.png")), cv2.COLOR_BGR2RGB)
    labels = cv2.imread(str(tmp_path / "labels.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (33, 47, 3) and labels.shape == (33, 47)
    for c in CLASSES:  # every pixel is painted in its class's colour
        assert (mask[labels == c["id"]] == c["color"]).all()


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_predict_command_with_an_unknown_model_is_one_error_line_and_exit_1(tracking, tmp_path):
    cv2.imwrite(str(tmp_path / "in.png"), np.zeros((8, 8, 3), np.uint8))
    result = segflow_cli(
        "predict", "in.png", "--model", "models:/segflow-nothing@champion",
        uri=tracking["uri"], cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "models:/segflow-nothing@champion" in lines[0]
    assert not (tmp_path / "in_mask.png").exists()


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_predict_against_a_tracking_server_that_is_down_fails_in_seconds(tmp_path):
    cv2.imwrite(str(tmp_path / "in.png"), np.zeros((8, 8, 3), np.uint8))
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = segflow_cli(
        "predict", "in.png", "--model", "models:/segflow-x@champion",
        uri=f"http://127.0.0.1:{port}", cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "models:/segflow-x@champion: cannot load the model" in result.stderr
    assert "Connection refused" in result.stderr


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_register_stage_rescores_the_champion_on_the_same_images_and_records_the_gate(
    tracking, tmp_path
):
    """pipelines/register.py in a throw-away project with real test shards: the model's
    per-image counts (as the evaluate stage writes them) -> registry.json, gate.md, tags."""
    root = tmp_path / "project"
    adapter = BandsAdapter(tmp_path / "raw", {"train": 2, "val": 4, "test": 4})
    shards = root / "data" / "shards"
    write_shards(build_manifest(adapter), adapter, shards, rows_per_shard=8, workers=1)
    (root / "models").mkdir(parents=True)
    (root / "reports" / "eval").mkdir(parents=True)
    (root / "models" / "best.pt").write_bytes(tracking["checkpoint"].read_bytes())
    (root / "models" / "run.json").write_text(json.dumps({"mlflow_run_id": tracking["run_id"]}))
    (root / "reports" / "eval" / "report.md").write_text("# evaluation\n")
    (root / "reports" / "eval" / "serving.json").write_text(json.dumps(SERVING))
    (root / "params.yaml").write_text(
        "gate:\n  min_gain: 0.01\n  bootstrap_samples: 500\n  min_images: 4\n"
    )
    # What the evaluate stage writes: the model's counts on the gate's split (val here),
    # without and with a CRF.
    predictor = load_predictor(root / "models" / "best.pt", ServingSpec(mean=MEAN, std=STD))
    pred = predict_split(predictor, shards, "val", tmp_path / "probs", 3)
    crf = CRFParams(w_bilateral=4.0, sigma_alpha=30.0, iterations=2)
    refined = crf_over_split_serial(tmp_path / "probs", crf, 3)
    both = {"raw": pred.image_counts, "crf": refined.image_counts}
    save_image_counts(
        root / "reports" / "eval_image_counts.npz", ImageCounts("val", pred.sample_ids, both)
    )
    # The gate never reads the test split: its shards are gone before the register stage runs
    # (index.json, which names the split's hash, stays).
    for shard in (shards / "test").glob("*.arrow"):
        shard.unlink()
    metrics = {"miou": 0.42, "pa": 0.8, "crf_applied": False}
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))

    def run_stage() -> dict:
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking["uri"]}
        result = subprocess.run(
            [sys.executable, str(REPO / "pipelines" / "register.py")],
            cwd=root, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "Warning" not in result.stderr  # MLflow's advice to segflow's own code: hidden
        return json.loads((root / "reports" / "registry.json").read_text())

    first = run_stage()
    assert first["name"] == "segflow-bands" and first["version"] == "1"
    assert first["aliases"] == [CHALLENGER, CHAMPION]
    assert first["decision"]["decision"] == "promoted" and first["crf_applied"] is False
    # The training run now also holds the test metrics, the evaluation report and the gate.
    client = mlflow.MlflowClient(tracking["uri"])
    run = client.get_run(tracking["run_id"])
    assert run.data.metrics["test_miou"] == 0.42 and run.data.metrics["test_pa"] == 0.8
    logged = {f.path for f in client.list_artifacts(tracking["run_id"], "evaluation/report")}
    assert "evaluation/report/report.md" in logged
    gate_logged = {f.path for f in client.list_artifacts(tracking["run_id"], "evaluation")}
    assert "evaluation/gate.md" in gate_logged

    # The stage run again for the same training run (DVC re-runs it when a gate param
    # changes): its model is already version 1, the champion; nothing new is registered.
    again = run_stage()
    assert again["version"] == "1" and again["aliases"] == [CHALLENGER, CHAMPION]
    assert again["decision"]["decision"] == "kept" and again["onnx"] == first["onnx"]
    assert "is already the champion" in again["decision"]["reason"]
    versions = client.search_model_versions("name = 'segflow-bands'")
    assert [str(v.version) for v in versions] == ["1"]

    # The same model from another training run: the champion, scored here on the same images,
    # gets exactly the evaluate stage's counts, so the difference is 0 on every resample: kept.
    with mlflow.start_run(experiment_id=run.info.experiment_id) as other:
        pass
    (root / "models" / "run.json").write_text(json.dumps({"mlflow_run_id": other.info.run_id}))
    second = run_stage()
    assert second["version"] == "2" and second["aliases"] == [CHALLENGER]
    gate = second["decision"]
    assert gate["decision"] == "kept" and gate["champion_after"] == "1"
    assert gate["bootstrap"]["diff"] == gate["bootstrap"]["low"] == gate["bootstrap"]["high"] == 0
    assert gate["bootstrap"]["num_images"] == 4 and gate["bootstrap"]["samples"] == 500
    assert gate["split"] == "val" and gate["num_images"] == 4 and not gate["split_is_test"]
    report = (root / "reports" / "gate.md").read_text()
    assert "**kept**" in report and "| champion v1 mIoU on val |" in report
    assert "Decided on the split `val` (4 images" in report
    assert "| new model v2 | 0.4200 |" in report  # the test figure, for information
    assert "95% interval of the difference | [+0.0000, +0.0000]" in report

    # A CRF that crf_tune chose on val: the model serves it and is judged with its with-CRF
    # counts against the champion's plain ones.
    served = ServingSpec(mean=MEAN, std=STD, crf=crf).to_dict()
    (root / "reports" / "eval" / "serving.json").write_text(json.dumps(served))
    metrics = {"miou": 0.42, "miou_crf": 0.45, "crf_applied": True}
    (root / "reports" / "metrics.json").write_text(json.dumps(metrics))
    third = run_stage()
    assert third["crf_applied"] is True and third["decision"]["champion_before"] == "1"
    boot = third["decision"]["bootstrap"]
    assert boot["new_miou"] == pytest.approx(refined.metrics["miou"], abs=1e-6)
    assert boot["old_miou"] == pytest.approx(second["decision"]["bootstrap"]["old_miou"])


def test_registering_a_run_missing_from_the_store_names_the_run_and_the_store(tracking):
    with pytest.raises(SegflowError, match="run 0123abcd not found in sqlite"):
        register_model(
            "0123abcd", "missing", {"miou": 0.5}, 0.5, SERVING, CLASSES, tracking["checkpoint"],
            HASH_A, prefix="segflow",
        )  # fmt: skip


def test_too_few_images_keep_the_champion_and_say_underpowered(tracking):
    name = registered_name("power", "segflow")
    five = DecisionSplit("val", HASH_A, [f"val_{i}" for i in range(5)], None)
    v1 = register(tracking, "power", 0.5, HASH_A)
    decide(name, v1.version, counts(0.5, images=5), None, None, None, five, 0.0)
    v2 = register(tracking, "power", 0.9, HASH_A)
    # far better, but on five images: not evidence enough
    clear = decide(
        name, v2.version, counts(0.95, images=5), champion_version(name),
        counts(0.3, images=5, seed=1), None, five, 0.0, 20,
    )  # fmt: skip
    assert clear["decision"] == "underpowered" and clear["bootstrap"] is None
    assert "5 val images: fewer than gate.min_images 20" in clear["reason"]
    assert champion_of(name) == str(v1.version)
    tags = mlflow.MlflowClient().get_model_version(name, v2.version).tags
    assert tags["gate.decision"] == "underpowered" and tags["gate.num_images"] == "5"
    # one group is no more evidence than one image, however many frames it holds
    one_seq = DecisionSplit("dev", HASH_A, [f"s1_{i}" for i in range(30)], ["s1"] * 30)
    v3 = register(tracking, "power", 0.9, HASH_A)
    single = decide(
        name, v3.version, counts(0.95, images=30), champion_version(name),
        counts(0.3, images=30, seed=1), None, one_seq, 0.0, 20,
    )  # fmt: skip
    assert single["decision"] == "underpowered" and single["num_groups"] == 1


def test_the_version_tags_and_gate_md_name_the_decision_split_and_say_when_it_is_the_test_split(
    tracking,
):
    name = registered_name("named", "segflow")
    v1 = register(tracking, "named", 0.5, HASH_A)
    decide(name, v1.version, counts(0.5), None, None, None, VAL12, 0.0)
    v2 = register(tracking, "named", 0.9, HASH_A)
    dev = DecisionSplit("dev", HASH_B, VAL12.ids, ["a"] * 6 + ["b"] * 6)
    d = decide(
        name, v2.version, counts(0.9, seed=2), champion_version(name), counts(0.5, seed=3),
        None, dev, 0.0, 12, test={"test_miou": 0.61, "test_split_hash": HASH_A},
    )  # fmt: skip
    tags = mlflow.MlflowClient().get_model_version(name, v2.version).tags
    assert (tags["gate.split"], tags["gate.split_hash"], tags["gate.num_groups"]) == (
        "dev",
        HASH_B,
        "2",
    )
    assert tags["gate.split_is_test"] == "false" and d["bootstrap"]["num_groups"] == 2
    text = gate_markdown({"name": name, "version": "2", "decision": d})
    assert "Decided on the split `dev` (12 images in 2 groups" in text
    assert "the test split decides nothing" in text and "| new model v2 | 0.6100 |" in text
    # test_split: val and no dev split: the only case the gate decides on the reported split
    v3 = register(tracking, "named", 0.9, HASH_A)
    on_test = DecisionSplit("val", HASH_A, VAL12.ids, None, is_test=True)
    d3 = decide(
        name, v3.version, counts(0.9), champion_version(name), counts(0.5), None, on_test, 0.0, 12
    )
    assert mlflow.MlflowClient().get_model_version(name, v3.version).tags[
        "gate.split_is_test"] == "true"  # fmt: skip
    assert "is also the reported test split" in gate_markdown(
        {"name": name, "version": "3", "decision": d3}
    )
