"""``segflow baseline``'s work: options, the MLflow run it logs, the command's one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from segflow.baselines.options import parse_options
from segflow.baselines.patch_classifier import PatchOptions
from segflow.baselines.run import baseline_options, run_baseline
from segflow.config import parse_params
from segflow.errors import SegflowError
from tests.project import CODE_UNDER_TEST

SEGFLOW = Path(sys.executable).parent / "segflow"
PARAMS = {
    "dataset": {"name": "synthetic", "root": "data/synthetic", "test_split": "val"},
    "train": {"experiment": "baselines-test"},
}
#: A quick split-and-merge: few regression steps (the test checks the run, not the score).
QUICK = ("steps=20",)


def test_options_come_from_key_value_strings_with_their_types():
    options = parse_options(PatchOptions, ["stride=2", "lr=0.01", " patch = 21"], "what")
    assert (options.stride, options.lr, options.patch) == (2, 0.01, 21)
    assert options.width == PatchOptions().width  # untouched fields keep their defaults


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["strides=2"], "unknown option 'strides'; known options: patch, stride"),
        (["stride"], "'stride' is not KEY=VALUE"),
        (["stride=2.5"], "stride must be int"),
    ],
)
def test_bad_option_strings_are_errors_naming_the_key(items, message):
    with pytest.raises(SegflowError, match=message):
        baseline_options("patch_classifier", items)


def test_an_unknown_baseline_names_the_known_ones():
    with pytest.raises(SegflowError, match="'sift' is unknown; known baselines: patch_classifier"):
        baseline_options("sift")


def test_a_run_is_an_mlflow_run_with_the_params_tags_and_scores(
    synthetic_shards, tmp_path, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = parse_params(PARAMS)
    run = run_baseline("split_and_merge", params, synthetic_shards, None, QUICK, root=tmp_path)
    assert run.split == "val" and run.options["steps"] == 20
    logged = mlflow.get_run(run.run_id).data
    assert logged.tags["stage"] == "baseline"
    assert logged.tags["baseline"] == "split_and_merge"
    assert logged.tags["dataset"] == "synthetic" and len(logged.tags["shards_content_hash"]) > 8
    assert logged.params["baseline.steps"] == "20" and logged.params["split"] == "val"
    assert logged.params["dataset.name"] == "synthetic" and "loader.mean" in logged.params
    for key in ("pa", "mpa", "miou", "fwiou", "ms_per_image", "train_seconds", "num_images"):
        assert logged.metrics[key] == pytest.approx(run.metrics[key]), key
    assert run.metrics["miou"] == pytest.approx(run.score.metrics["miou"], abs=1e-6)
    assert logged.metrics["iou.sky"] == pytest.approx(run.score.metrics["iou"][0], abs=1e-6)
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_a_split_the_shards_do_not_have_is_an_error_before_any_training(synthetic_shards, tmp_path):
    with pytest.raises(SegflowError, match="no split 'test' to score"):
        run_baseline(
            "split_and_merge", parse_params(PARAMS), synthetic_shards, "test", root=tmp_path
        )


def _project(root: Path, shards: Path) -> Path:
    shutil.copytree(shards, root / "data" / "shards")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def _segflow(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SEGFLOW), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", **CODE_UNDER_TEST},
    )  # fmt: skip


@pytest.mark.integration
def test_the_command_trains_scores_and_logs_in_the_project(synthetic_shards, tmp_path):
    project = _project(tmp_path, synthetic_shards)
    result = _segflow("baseline", "split_and_merge", "-o", "steps=20", cwd=project)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("baseline split_and_merge: val PA ") and "mIoU" in line
    assert "ms per image" in line and "MLflow run" in line
    assert (project / "mlruns" / "mlflow.db").is_file()


@pytest.mark.integration
def test_the_command_reports_a_bad_option_in_one_line(synthetic_shards, tmp_path):
    project = _project(tmp_path, synthetic_shards)
    result = _segflow("baseline", "patch_classifier", "-o", "stride=fast", cwd=project)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: baseline patch_classifier: option stride must be int (got 'fast')"]
