"""User errors of the evaluate and register stages, driven through the real stage scripts: one
line naming the file or store, exit 1, and every earlier output left as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segflow.data.manifest import build_manifest
from segflow.data.shards import write_shards
from segflow.evaluate.bootstrap import ImageCounts, save_image_counts
from segflow.evaluate.serving import ServingSpec
from segflow.postprocess.crf_params import CRFParams, decide_crf, write_crf_choice
from tests.project import Project
from tests.test_registry import write_checkpoint
from tests.train.conftest import NUM_CLASSES, BandsAdapter

REPO = Path(__file__).resolve().parents[1]


def evaluated_project(tmp_path: Path) -> Project:
    """What a project holds after evaluate (and an earlier register): shards, a checkpoint,
    the run record, metrics, serving spec, per-image counts, registry.json and gate.md."""
    root = tmp_path / "project"
    adapter = BandsAdapter(tmp_path / "raw", {"train": 2, "val": 2, "test": 2})
    write_shards(build_manifest(adapter), adapter, root / "data" / "shards", 8, workers=1)
    write_checkpoint(root / "models" / "best.pt")
    (root / "models" / "run.json").write_text(json.dumps({"mlflow_run_id": "0" * 32}))
    reports = root / "reports"
    (reports / "eval").mkdir(parents=True)
    (reports / "eval" / "serving.json").write_text(json.dumps(ServingSpec().to_dict()))
    (reports / "metrics.json").write_text(json.dumps({"miou": 0.4, "crf_applied": False}))
    counts = torch.zeros(2, 3, NUM_CLASSES, dtype=torch.int64).numpy()
    save_image_counts(
        reports / "eval_image_counts.npz",
        ImageCounts("val", ["val_000", "val_001"], {"raw": counts}),
    )
    write_crf_choice(reports / "crf_params.json", decide_crf(CRFParams(), {}, {}, 0))
    (reports / "registry.json").write_text('{"version": "1"}\n')
    (reports / "gate.md").write_text("# Promotion gate: v1\n")
    (root / "params.yaml").write_text("dataset:\n  name: folder\n  root: raw\n")
    return Project(root)


def run_stage(project: Project, name: str, **env: str) -> subprocess.CompletedProcess:
    full = {**project.env, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / f"{name}.py")],
        cwd=project.root, env=full, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


@pytest.mark.integration
def test_register_with_a_corrupt_store_names_the_store_and_changes_nothing(tmp_path):
    project = evaluated_project(tmp_path)
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"not a database, e.g. a half-copied file\n" * 200)
    before = {rel: project.digest(rel) for rel in ("reports", "models")}

    result = run_stage(project, "register", MLFLOW_TRACKING_URI=f"sqlite:///{db}")

    line = one_error_line(result)
    assert f"MLflow store sqlite:///{db}: cannot be read" in line
    assert "file is not a database" in line
    assert {rel: project.digest(rel) for rel in before} == before


@pytest.mark.integration
def test_register_with_an_empty_store_names_the_run_and_the_store(tmp_path):
    project = evaluated_project(tmp_path)
    before = {rel: project.digest(rel) for rel in ("reports", "models")}
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"

    line = one_error_line(run_stage(project, "register", MLFLOW_TRACKING_URI=uri))

    assert f"MLflow run {'0' * 32} not found in {uri}" in line
    assert {rel: project.digest(rel) for rel in before} == before


class Payload:
    """Stands for whatever a pickled object in someone else's file would run on load."""


@pytest.mark.integration
def test_evaluate_refuses_a_checkpoint_that_needs_unpickling_objects(tmp_path):
    project = evaluated_project(tmp_path)
    torch.save({"model": Payload(), "train_params": {}}, project.root / "models" / "best.pt")
    before = project.digest("reports")

    line = one_error_line(run_stage(project, "evaluate"))

    assert "models/best.pt: not a plain-tensor checkpoint; refusing to unpickle" in line
    assert project.digest("reports") == before


def test_checkpoints_written_by_training_load_with_weights_only(tmp_path):
    from segflow.train.loop import fit
    from tests.train.conftest import make_shards, tiny_params

    shards = make_shards(tmp_path / "data", train=2, val=2)
    fit(tiny_params(tmp_path, epochs=1), shards, tmp_path / "out", echo=None)
    for name in ("last.pt", "best.pt"):
        payload = torch.load(tmp_path / "out" / name, weights_only=True)
        assert payload["epoch"] == 1 and payload["num_classes"] == NUM_CLASSES
        assert isinstance(payload["train_params"], dict) and payload["history"]
    assert os.path.getsize(tmp_path / "out" / "best.pt") > 0
