"""The `segflow` command: readable output, and user errors as one message with exit code 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from segflow.models import list_models

SEGFLOW = Path(sys.executable).parent / "segflow"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEGFLOW), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
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
