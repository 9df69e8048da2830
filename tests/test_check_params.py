"""`segflow check-params`: the schema, and whatever params.yaml names must exist.

A model, backbone or option that does not exist, or a dataset root without the expected layout,
is one line per problem naming the file, the field and the rule, exit 1, no traceback. The
missing root matters most under DVC: `dvc repro` stops at the missing dependency with its own
bare "[Errno 2]" before the ingest stage can say what layout it expected.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segflow.data.datasets import camvid, folder
from tests.data.helpers import make_folder_dataset
from tests.project import make_project

SEGFLOW = Path(sys.executable).parent / "segflow"


def check(params: dict, tmp_path: Path, *options: str) -> subprocess.CompletedProcess:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    if "PYTHONPATH" in os.environ:  # a checkout's own segflow before the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(
        [str(SEGFLOW), "check-params", str(path), *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def failed(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"
    *problems, verdict = result.stderr.strip().splitlines()
    count = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
    assert verdict.startswith("check-params: ") and verdict.endswith(f"{count}; nothing was run")
    return "\n".join(problems)


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_a_model_a_backbone_and_an_option_that_do_not_exist_are_each_named(tmp_path):
    params = {
        "train": {"model": "deeplabv3plus", "backbone": "resnet17"},
        "tune": {"models": [{"model": "unet", "model_options": {"widht": 4}}, {"model": "fcn9s"}]},
    }
    message = failed(
        check(params, tmp_path),
        "params.yaml: train: backbone 'resnet17' is unknown; known backbones:",
        "params.yaml: tune.models.0: model 'unet': unknown option(s) widht; known options: width",
        "params.yaml: tune.models.1: model 'fcn9s' is unknown; known models:",
    )
    assert len(message.strip().splitlines()) == 3, message


@pytest.mark.parametrize(
    ("dataset", "layout"),
    [
        ({"name": "folder"}, folder.LAYOUT),
        ({"name": "camvid"}, camvid.LAYOUT),
    ],
)
@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_a_missing_dataset_root_names_the_path_and_the_layout_expected(tmp_path, dataset, layout):
    root = tmp_path / "nowhere"
    message = failed(
        check({"dataset": {**dataset, "root": str(root)}}, tmp_path),
        f"params.yaml: dataset.root: dataset root {root} does not exist",
        layout,
    )
    assert len(message.strip().splitlines()) == 1, message


@pytest.mark.integration  # starts a segflow/dvc process or a server
def test_params_that_name_real_things_end_with_one_ok_line_and_show_prints_the_values(tmp_path):
    data = tmp_path / "dataset"
    classes = make_folder_dataset(data)
    params = {
        "dataset": {"name": "folder", "root": str(data), "classes_file": str(classes)},
        "train": {"model": "unet", "backbone": None, "model_options": {"width": 4}},
    }
    result = check(params, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"check-params: {tmp_path / 'params.yaml'}: OK: dataset folder at {data}, model unet, "
        "8 epochs; `dvc repro` runs it"
    ]
    shown = check(params, tmp_path, "--show")
    values, verdict = shown.stdout.rsplit("check-params:", 1)
    assert yaml.safe_load(values)["dataset"]["max_ignored_share"] == 0.5
    assert verdict.startswith(f" {tmp_path / 'params.yaml'}: OK")


def sharded_folder_project(tmp_path: Path):
    """A folder-dataset project after `dvc repro shard`: (project, its data root, the digests
    of the manifest and shards that a failing run must leave as they are)."""
    data = tmp_path / "dataset"
    classes = make_folder_dataset(data)
    project = make_project(
        tmp_path, dataset={"name": "folder", "root": str(data), "classes_file": str(classes)}
    )
    assert project.dvc("repro", "shard").returncode == 0
    before = {rel: project.digest(rel) for rel in ("data/manifest.parquet", "data/shards")}
    return project, data, before


@pytest.mark.integration
def test_dvc_repro_at_a_wrong_root_stops_with_segflows_line_and_keeps_the_earlier_outputs(
    tmp_path,
):
    """The check stage runs before ingest whenever the dataset params change, so a root that
    does not exist is segflow's one line naming the field and the layout, not DVC's Errno 2."""
    project, _, before = sharded_folder_project(tmp_path)
    wrong = tmp_path / "typo"
    project.set_params(dataset={"root": str(wrong)})
    result = project.dvc("repro", "shard")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: params.yaml: dataset.root: dataset root {wrong} does not exist or is not a "
        f"directory; expected {folder.LAYOUT}"
    ], result.stderr
    assert "Errno" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert {rel: project.digest(rel) for rel in before} == before


@pytest.mark.integration
def test_a_root_removed_after_a_run_is_named_by_dvc_and_explained_by_check_params(tmp_path):
    """With unchanged params the check stage has nothing to re-run for, and DVC hashes
    ingest's deps before running it: its own message names the path; check-params explains."""
    project, data, before = sharded_folder_project(tmp_path)
    moved = tmp_path / "moved"
    data.rename(moved)
    result = project.dvc("repro", "shard")
    assert result.returncode != 0
    assert f"No such file or directory: '{data}'" in result.stdout + result.stderr
    assert {rel: project.digest(rel) for rel in before} == before
    env = {**project.env, "COLUMNS": "200"}
    checked = subprocess.run(
        [str(SEGFLOW), "check-params"], cwd=project.root, env=env, capture_output=True, text=True
    )
    failed(checked, f"dataset root {data} does not exist", folder.LAYOUT)
