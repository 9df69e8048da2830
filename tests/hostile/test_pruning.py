"""Old runs' checkpoints do not pile up: the train stage keeps its newest ``train.keep_runs``.

Deleting is the dangerous part, so the storage here also holds what must never go: the run
being continued (the oldest), a directory segflow did not make, another stage's run, a run the
user named, a directory named like a run but holding no run's files, and symlinks (named like
runs) to a sentinel outside the storage, one of them inside a run that is deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from segflow.config import Params
from segflow.train.resume import prune_runs
from tests.train.conftest import SIZE, make_shards
from tests.train.test_stage import SMALL, small_project


def make_dir(path: Path, files: dict[str, str], mtime: float) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    os.utime(path, (mtime, mtime))
    return path


RAY_RUN = {".validate_storage_marker": "", "checkpoint_manager_snapshot.json": "{}",
           "epoch-0003/checkpoint.pt": "weights"}  # fmt: skip
LOCAL_RUN = {"last.pt": "weights", "best.pt": "weights"}


@pytest.fixture
def storage(tmp_path) -> dict[str, Path]:
    root = tmp_path / "ray_results"
    outside = make_dir(tmp_path / "outside", {"last.pt": "not segflow's to delete"}, 0)
    old = 1_700_000_000
    paths = {
        "resumed": make_dir(root / "train-20240101-000000", RAY_RUN, old),
        "old_local": make_dir(root / "train-20240102-000000", LOCAL_RUN, old + 100),
        "newer": make_dir(root / "train-20240103-000000", RAY_RUN, old + 200),
        "newest": make_dir(root / "train-20240104-000000", LOCAL_RUN, old + 300),
        "unrelated": make_dir(root / "notes", {"todo.txt": "keep"}, old - 500),
        "search_run": make_dir(root / "search-20240101-000000", RAY_RUN, old - 400),
        "named_run": make_dir(root / "my-baseline", LOCAL_RUN, old - 300),
        "not_a_run": make_dir(root / "train-20230101-000000", {"readme.txt": "x"}, old - 200),
        "outside": outside,
    }
    (root / "train-20230102-000000").symlink_to(outside, target_is_directory=True)
    (paths["old_local"] / "epoch-0001").symlink_to(outside, target_is_directory=True)
    os.utime(paths["old_local"], (old + 100, old + 100))
    return paths


def params(tmp_path: Path, keep: int) -> Params:
    return Params.model_validate(
        {"train": {"storage_path": str(tmp_path / "ray_results"), "keep_runs": keep}}
    )


def test_the_oldest_runs_go_and_the_resumed_one_and_everything_not_a_run_stays(tmp_path, storage):
    resumed = storage["resumed"].name

    deleted = prune_runs(params(tmp_path, keep=2), 2, protect=resumed)

    assert deleted == [storage["old_local"].name]
    assert not storage["old_local"].exists()
    for kept in ("resumed", "newer", "newest", "unrelated", "search_run", "named_run"):
        assert storage[kept].is_dir(), kept
    assert storage["not_a_run"].is_dir()
    assert (tmp_path / "ray_results" / "train-20230102-000000").is_symlink()
    assert (storage["outside"] / "last.pt").read_text() == "not segflow's to delete"


def test_keep_runs_zero_keeps_only_the_run_being_continued(tmp_path, storage):
    deleted = prune_runs(params(tmp_path, keep=0), 0, protect=storage["resumed"].name)

    assert sorted(deleted) == sorted(storage[k].name for k in ("old_local", "newer", "newest"))
    assert storage["resumed"].is_dir() and storage["named_run"].is_dir()
    assert (storage["outside"] / "last.pt").is_file()


def test_a_storage_path_through_a_symlink_is_pruned_the_same(tmp_path, storage):
    (tmp_path / "link").symlink_to(tmp_path / "ray_results", target_is_directory=True)
    p = Params.model_validate({"train": {"storage_path": str(tmp_path / "link")}})

    assert prune_runs(p, 3) == [storage["resumed"].name]
    assert (storage["outside"] / "last.pt").is_file()


@pytest.mark.integration
def test_the_train_stage_applies_keep_runs_when_it_starts(tmp_path):
    project = small_project(tmp_path)
    make_shards(tmp_path / "bands", train=4, val=2)
    shutil.copytree(tmp_path / "bands" / "shards", project.root / "data" / "shards")
    runs = project.root / "ray_results"
    for day in range(1, 4):
        make_dir(runs / f"train-2024010{day}-000000", LOCAL_RUN, 1_700_000_000 + day)
    train = {**SMALL["train"], "launcher": "local", "epochs": 1, "batch_size": 2, "keep_runs": 1}
    project.set_params(loader={"crop_height": SIZE[0], "crop_width": SIZE[1]}, train=train)

    out = project.stage("train")

    assert out.returncode == 0, out.stdout + out.stderr
    assert "deleted 2 old run(s) from ray_results (train.keep_runs: 1)" in out.stderr
    names = sorted(p.name for p in runs.iterdir())
    assert names[0] == "train-20240103-000000" and len(names) == 2  # the newest old + this one
