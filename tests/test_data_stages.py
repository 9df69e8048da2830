"""The data stages end to end, run as a user runs them: the stage scripts and `dvc repro`.

Bad input must stop the pipeline with one message naming the file or field and the rule, exit
non-zero, and lose nothing: the manifest and the shards an earlier good run made stay intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from segflow.data.datasets import folder
from segflow.data.validate import MASK_VALUES_RULE
from tests.data.helpers import make_binary_folder_dataset, make_folder_dataset
from tests.project import BIN, Project, make_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A folder-dataset project with manifest, validation and shards from one clean run."""
    tmp = tmp_path_factory.mktemp("template")
    data = tmp / "dataset"
    classes = make_folder_dataset(data, n_train=4, n_val=2, n_test=2)
    project = make_project(
        tmp, dataset={"name": "folder", "root": str(data), "classes_file": str(classes)}
    )
    for stage in ("ingest", "validate", "shard"):
        result = project.stage(stage)
        assert result.returncode == 0, result.stderr
    return tmp


def _copy(template: Path, tmp_path: Path) -> tuple[Project, Path]:
    """A private copy of the template (project and dataset), re-pointed at its own dataset."""
    shutil.copytree(template / "project", tmp_path / "project")
    shutil.copytree(template / "dataset", tmp_path / "dataset")
    project, data = Project(tmp_path / "project"), tmp_path / "dataset"
    project.set_params(dataset={"root": str(data), "classes_file": str(data / "classes.yaml")})
    return project, data


def _fails(project: Project, stage: str, *expected: str) -> str:
    result = project.stage(stage)
    assert result.returncode != 0, f"{stage} should have failed:\n{result.stdout}{result.stderr}"
    message = result.stdout + result.stderr
    assert "Traceback" not in message, message
    for text in expected:
        assert text in message, f"{text!r} not in:\n{message}"
    return message


@pytest.fixture
def good(template, tmp_path):
    project, data = _copy(template, tmp_path)
    before = {rel: project.digest(rel) for rel in ("data/manifest.parquet", "data/shards")}
    yield project, data
    after = {rel: project.digest(rel) for rel in before}
    assert after["data/shards"] == before["data/shards"], "the earlier shards were changed"


def _rerun_until_validation_fails(project: Project, *expected: str) -> None:
    assert project.stage("ingest").returncode == 0
    _fails(project, "validate", *expected)


def test_a_corrupt_image_stops_validation_naming_the_file(good):
    project, data = good
    bad = data / "images" / "train" / "train_1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _rerun_until_validation_fails(project, "image decodable", "train_1", str(bad))


def test_a_mask_of_another_size_stops_validation(good):
    project, data = good
    mask = data / "masks" / "val" / "val_0.png"
    cv2.imwrite(str(mask), np.zeros((20, 20), np.uint8))
    _rerun_until_validation_fails(project, "image and mask the same size", "val_0")


def test_a_label_outside_the_class_table_stops_validation(good):
    project, data = good
    mask_path = data / "masks" / "train" / "train_2.png"
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    mask[5, 5] = 42
    cv2.imwrite(str(mask_path), mask)
    _rerun_until_validation_fails(project, MASK_VALUES_RULE, "train_2", "42")


def test_an_empty_split_stops_validation(good):
    project, data = good
    for path in (data / "images" / "test").iterdir():
        path.unlink()
    for path in (data / "masks" / "test").iterdir():
        path.unlink()
    _rerun_until_validation_fails(project, "every split non-empty", "'test'")


def test_an_image_without_a_mask_stops_ingest_and_keeps_the_manifest(good):
    project, data = good
    manifest = project.digest("data/manifest.parquet")
    (data / "masks" / "train" / "train_3.png").unlink()
    _fails(project, "ingest", "train_3", "no mask")
    assert project.digest("data/manifest.parquet") == manifest


def test_a_missing_dataset_root_stops_ingest_naming_the_path(good, tmp_path):
    project, _ = good
    manifest = project.digest("data/manifest.parquet")
    missing = tmp_path / "nowhere"
    project.set_params(dataset={"root": str(missing)})
    _fails(project, "ingest", str(missing), "does not exist", folder.LAYOUT)
    assert project.digest("data/manifest.parquet") == manifest


def test_an_unknown_dataset_name_in_params_stops_every_stage(good):
    project, _ = good
    manifest = project.digest("data/manifest.parquet")
    project.set_params(dataset={"name": "kitti"})
    for stage in ("ingest", "validate", "shard"):
        _fails(project, stage, "params.yaml: dataset.name", "'kitti'")
    assert project.digest("data/manifest.parquet") == manifest


def test_a_failed_validation_keeps_its_report_and_blocks_sharding(good):
    project, data = good
    (data / "images" / "val" / "val_1.png").write_bytes(b"not an image")
    _rerun_until_validation_fails(project, "image decodable")
    # The shard stage, run by hand after the failure, refuses rather than shard bad data.
    _fails(project, "shard", "failed validation")
    summary = json.loads((project.root / "reports/validation/summary.json").read_text())
    assert summary["success"] is False
    assert (project.root / "reports/validation/data_docs/index.html").is_file()


def test_binary_0_255_masks_fail_validation_naming_255_until_the_class_table_maps_it(tmp_path):
    """ISBI-style masks store cell as 255. Read as ids, the cells would be silently ignored;
    with `value: 255` in the class table the same files validate, shard and train."""
    data = tmp_path / "dataset"
    classes = make_binary_folder_dataset(data, mapped=False)
    project = make_project(
        tmp_path,
        dataset={"name": "folder", "root": str(data), "classes_file": str(classes)},
        loader={"crop_height": 32, "crop_width": 48, "scale_min": 1.0, "scale_max": 1.0},
        train={
            "launcher": "local",
            "model": "unet",
            "backbone": None,
            "output_stride": None,
            "model_options": {"width": 4},
            "epochs": 1,
            "batch_size": 2,
            "cpus_per_worker": 1,
        },
    )
    assert project.stage("ingest").returncode == 0
    message = _fails(project, "validate", "ignored pixels at most dataset.max_ignored_share")
    line = next(x for x in message.splitlines() if "max_ignored_share:" in x)
    assert "train (" in line and "255 (" in line and "ignored: 255" in line, line
    assert "every class present in train: 1 class with no train pixels: 1 cell" in message

    make_binary_folder_dataset(data, mapped=True)  # the same masks, the table now maps 255
    for stage in ("ingest", "validate", "shard", "train"):
        result = project.stage(stage)
        assert result.returncode == 0, result.stdout + result.stderr
    index = json.loads((project.root / "data/shards/index.json").read_text())
    train = index["splits"]["train"]
    assert train["ignored_pixels"] == 0 and min(train["class_pixels"]) > 0
    assert train["class_pixels"][1] > 3 * train["class_pixels"][0]  # the cells are the majority
    assert [c["values"] for c in index["classes"]] == [[0], [255]]
    assert (project.root / "models/best.pt").is_file()


def test_a_damaged_shard_stops_every_stage_that_reads_shards_before_a_worker_starts(
    template, tmp_path
):
    project, _ = _copy(template, tmp_path)
    project.set_params(tune={"enabled": True})
    # Earlier outputs of the later stages: whatever they hold must survive the failed runs.
    for rel in ("models/best.pt", "reports/crf_params.json", "reports/metrics.json"):
        (project.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (project.root / rel).write_text(f"earlier {rel}\n")
    before = {rel: project.digest(rel) for rel in ("models", "reports")}
    shard = project.root / "data/shards/train/train-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated, e.g. by a full disk
    for stage in ("train", "tune", "crf_tune", "evaluate"):
        message = _fails(project, stage, f"{shard.relative_to(project.root)}", "dvc repro shard")
        assert len(message.strip().splitlines()) == 1, message
        assert "ray" not in message.lower(), message  # stopped before Ray started
    assert {rel: project.digest(rel) for rel in before} == before
    # `segflow shards` runs the same check (and with --verify, the full hash).
    listing = project.run(str(BIN / "segflow"), "shards", "--verify")
    assert listing.returncode == 1 and "Traceback" not in listing.stderr
    assert f"{shard.relative_to(project.root)}: shard is " in listing.stderr, listing.stderr
