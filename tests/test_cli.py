"""The `segflow` command: readable output, and user errors as one message with exit code 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from segflow.models import list_models
from tests.project import CODE_UNDER_TEST

SEGFLOW = Path(sys.executable).parent / "segflow"


# Every test runs the `segflow` command in its own process.
pytestmark = pytest.mark.integration


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEGFLOW), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **CODE_UNDER_TEST},
    )


def test_models_lists_every_registered_model_with_its_size():
    result = run("models")
    assert result.returncode == 0, result.stderr
    for name in list_models():
        assert f" {name} " in result.stdout
    row = next(line for line in result.stdout.splitlines() if " deeplabv3plus " in line)
    assert "resnet50" in row and "40.35" in row  # params in millions at 21 classes


def test_check_params_reports_every_bad_field_without_a_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset:\n  name: kitti\nloader:\n  crop_height: 0\n")
    result = run("check-params", str(bad))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "dataset.name" in result.stderr and "'kitti'" in result.stderr
    assert "loader.crop_height" in result.stderr


def test_shards_without_shards_names_the_missing_index(tmp_path):
    result = run("shards", str(tmp_path / "nothing"))
    assert result.returncode == 1
    assert "index.json" in result.stderr and "dvc repro shard" in result.stderr


def test_help_says_what_segflow_does_for_a_user():
    result = run("--help")
    assert result.returncode == 0
    first = result.stdout.split("Usage:", 1)[1].split("\n", 2)[2].strip()
    assert first.startswith("segflow turns a labelled image dataset into a trained, evaluated")
    assert "thin" not in result.stdout and "library" not in result.stdout


def test_predict_on_a_missing_image_or_a_directory_is_one_line_naming_the_path(tmp_path):
    """Checked before the model is even looked up: no tracking store, no model is needed."""
    missing = tmp_path / "nothing.png"
    for path, rule in ((missing, "no such file"), (tmp_path, "is a directory, not a file")):
        result = run("predict", str(path), "--model", "models:/segflow-x@champion", cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr == f"error: {path}: {rule} (the image to segment)\n"
        assert result.stdout == ""
        assert not (tmp_path / "mlruns").exists()  # nothing was created on the way
