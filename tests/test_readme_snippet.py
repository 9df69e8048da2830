"""README's Python snippet for MLflow's own loader runs as written, read from README.md itself.

A user pastes it into a Python session in the project checkout after `make demo`: it must find
the champion in segflow's store (sqlite:///mlruns/mlflow.db), not in MLflow's own default
(./mlflow.db, which MLflow would create empty and then report the model "not found" in).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from segflow import tracking
from segflow.lifecycle.registration import CHAMPION, register_model
from tests.test_registry import CLASSES, SERVING, write_checkpoint

REPO = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The README's one ```python block that loads a registered model with MLflow."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    found = [b for b in blocks if "mlflow.pyfunc.load_model(" in b]
    assert len(found) == 1, f"{len(found)} README python blocks call mlflow.pyfunc.load_model"
    return found[0]


@pytest.mark.integration  # starts a Python process
def test_the_readme_snippet_loads_the_champion_from_segflows_store_as_written(
    tmp_path, monkeypatch
):
    # A project checkout after `make demo`: segflow's default store holds the champion of
    # segflow-synthetic, and street.png is an image the user has.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    experiment = tracking.setup("segflow", root=tmp_path)
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    version = register_model(
        run.info.run_id, "synthetic", {"miou": 0.5}, 0.5, SERVING, CLASSES,
        write_checkpoint(tmp_path / "best.pt"), "a" * 64, prefix="segflow",
    )  # fmt: skip
    mlflow.MlflowClient().set_registered_model_alias(version.name, CHAMPION, version.version)
    image = np.random.default_rng(0).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "street.png"), image)

    snippet = readme_snippet()
    assert 'mlflow.pyfunc.load_model("models:/segflow-synthetic@champion")' in snippet
    check = "\nprint('labels', labels.shape, labels.dtype)\n"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    result = subprocess.run(
        [sys.executable, "-c", snippet + check],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "labels (21, 34) uint8" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()  # MLflow's own default store: never created
