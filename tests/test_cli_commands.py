"""What `segflow`'s commands print, run in this process (no interpreter start-up per command).

The process-level contract (exit code 1, one `error:` line, no traceback) is tests/test_cli.py's;
these check what each command says: the version, where training is, the verdict of
check-params, every class of the shards, the default model of predict, and help without
``<bool>`` labels.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from segflow.cli import app, champion_uri
from segflow.data.datasets.folder import CLASS_TABLE_FORMAT, FolderDataset
from segflow.data.manifest import build_manifest
from segflow.data.shards import write_shards
from segflow.errors import SegflowError
from tests.data.helpers import make_folder_dataset


def segflow(*args: str) -> object:
    """``segflow ARGS`` in this process: exit code, stdout and stderr apart."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def test_version_is_the_installed_distributions():
    result = segflow("--version")
    assert result.exit_code == 0
    assert result.stdout == f"segflow {version('segflow')}\n"


@pytest.mark.parametrize("args", [(), ("--epochs", "3"), ("-f",)])
def test_segflow_train_says_training_is_the_dvc_stage(args):
    result = segflow("train", *args)
    assert result.exit_code == 2
    assert "Did you mean" not in result.stderr
    assert "`dvc repro train`" in result.stderr and "`dvc repro -f -s train`" in result.stderr
    assert "train" not in segflow("--help").stdout.split("Commands")[1].split()  # not listed


@pytest.mark.parametrize(
    "command", [None, "init", "check-params", "shards", "predict", "retrain", "schedule"]
)
def test_help_shows_no_type_label_on_a_flag(command):
    result = segflow(*([command] if command else []), "--help")
    assert result.exit_code == 0
    assert "--help" in result.stdout
    assert "<bool>" not in result.stdout and "BOOLEAN" not in result.stdout


@pytest.fixture
def folder_project(tmp_path) -> Path:
    """A params.yaml from the folder preset pointed at a tiny folder dataset."""
    data = tmp_path / "data"
    make_folder_dataset(data)
    done = segflow("init", "--preset", "folder", "--root", str(data), "--dir", str(tmp_path))
    assert done.exit_code == 0, done.output
    return tmp_path / "params.yaml"


def test_check_params_of_good_params_is_one_verdict_line(folder_project):
    result = segflow("check-params", str(folder_project))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"check-params: {folder_project}: OK: dataset folder at {folder_project.parent / 'data'}, "
        "model unet, 50 epochs; `dvc repro` runs it"
    ]
    shown = segflow("check-params", str(folder_project), "--show")
    values, verdict = shown.stdout.rsplit("check-params:", 1)
    assert yaml.safe_load(values)["dataset"]["name"] == "folder"
    assert verdict.startswith(f" {folder_project}: OK")


def test_check_params_of_bad_params_ends_with_the_count_of_problems(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("dataset:\n  name: kitti\nloader:\n  crop_height: 0\n")
    result = segflow("check-params", str(bad))
    assert result.exit_code == 1
    *problems, verdict = result.stderr.splitlines()
    assert len(problems) == 2 and all(line.startswith("error: ") for line in problems)
    assert verdict == f"check-params: {bad}: 2 problems; nothing was run"
    assert result.stdout == ""


def test_init_with_root_puts_the_class_table_beside_the_data_and_says_so_when_it_is_missing(
    tmp_path,
):
    data = tmp_path / "my images"
    data.mkdir()
    result = segflow("init", "--preset", "folder", "--root", str(data), "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    dataset = yaml.safe_load((tmp_path / "params.yaml").read_text())["dataset"]
    assert dataset["root"] == str(data.resolve())
    assert dataset["classes_file"] == str(data.resolve() / "classes.yaml")
    said = " ".join(result.stdout.split())
    assert f"no class table at {data.resolve() / 'classes.yaml'} (dataset.classes_file)" in said
    assert " ".join(CLASS_TABLE_FORMAT.split()) in said


def test_a_missing_class_table_is_blamed_on_classes_file_with_the_documented_format(
    folder_project,
):
    (folder_project.parent / "data" / "classes.yaml").unlink()
    result = segflow("check-params", str(folder_project))
    assert result.exit_code == 1
    problem = " ".join(result.stderr.splitlines()[0].split())
    assert problem.startswith(f"error: {folder_project}: dataset.classes_file: ")
    assert "dataset.root" not in problem
    assert problem.endswith(" ".join(CLASS_TABLE_FORMAT.split()))


def test_shards_lists_every_class_with_its_share_of_each_split(tmp_path):
    classes_file = make_folder_dataset(tmp_path / "data", classes=6)
    adapter = FolderDataset(tmp_path / "data", classes_file=classes_file)
    index = write_shards(build_manifest(adapter), adapter, tmp_path / "shards", rows_per_shard=4)
    result = segflow("shards", str(tmp_path / "shards"))
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 5 and cells[1].startswith("class"):
            rows[cells[1]] = [float(c.rstrip("%")) for c in cells[2:]]
    assert list(rows) == [c["name"] for c in index["classes"]]  # every class, in id order
    for split, shares in zip(index["splits"], zip(*rows.values(), strict=True), strict=True):
        pixels = index["splits"][split]["class_pixels"]
        expected = [100 * p / sum(pixels) for p in pixels]
        np.testing.assert_allclose(shares, expected, atol=0.005)


def test_the_default_model_is_the_champion_of_the_configured_dataset(folder_project, tmp_path):
    assert champion_uri(folder_project) == "models:/segflow-folder@champion"
    with pytest.raises(SegflowError, match="not found, so no default model; pass --model"):
        champion_uri(tmp_path / "elsewhere" / "params.yaml")


def test_predict_without_model_looks_up_that_champion(folder_project, monkeypatch):
    """No model is registered in this fresh project: the error names the URI it tried."""
    monkeypatch.chdir(folder_project.parent)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unset")  # so that the teardown restores it
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # predict exports the URI it reads into os.environ
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save("image.png")
    result = segflow("predict", "image.png")
    assert isinstance(result.exception, SegflowError)
    assert str(result.exception).startswith("models:/segflow-folder@champion: cannot load")
