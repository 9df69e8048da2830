"""`dvc repro` drives the data stages: declared deps, params and outs; no work when unchanged."""

from __future__ import annotations

import json
import shutil
import sys

import cv2
import numpy as np
import pytest

from segflow.data.validate import MASK_VALUES_RULE
from tests.data.helpers import make_folder_dataset
from tests.project import CAMVID, REPO, make_project

pytestmark = pytest.mark.integration

TINY = {"num_train": 6, "num_val": 3, "num_test": 3, "height": 48, "width": 64}


def test_dvc_repro_shard_builds_the_synthetic_default_and_a_second_call_runs_nothing(tmp_path):
    project = make_project(tmp_path, synthetic=TINY)
    first = project.dvc("repro", "shard")
    assert first.returncode == 0, first.stdout + first.stderr
    for stage in ("synthesize", "ingest", "validate", "shard"):
        assert f"Running stage '{stage}'" in first.stdout
    index = json.loads((project.root / "data/shards/index.json").read_text())
    counts = {split: info["num_samples"] for split, info in index["splits"].items()}
    assert counts == {"train": 6, "val": 3, "test": 3}

    second = project.dvc("repro", "shard")
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout

    # Changing a param re-runs exactly the stages that declare it, and what follows them.
    project.set_params(shard={"rows_per_shard": 2})
    third = project.dvc("repro", "shard")
    assert third.returncode == 0, third.stderr
    assert "Running stage 'shard'" in third.stdout
    assert "Running stage 'ingest'" not in third.stdout

    project.set_params(dataset={"max_ignored_share": 0.4})  # read by validate, not by ingest
    fourth = project.dvc("repro", "shard")
    assert fourth.returncode == 0, fourth.stderr
    assert "Running stage 'validate'" in fourth.stdout
    assert "Running stage 'ingest'" not in fourth.stdout


def test_a_change_in_the_dataset_reruns_ingest_and_bad_data_keeps_the_earlier_shards(tmp_path):
    data = tmp_path / "dataset"
    classes = make_folder_dataset(data)
    project = make_project(
        tmp_path, dataset={"name": "folder", "root": str(data), "classes_file": str(classes)}
    )
    assert project.dvc("repro", "shard").returncode == 0
    shards = project.digest("data/shards")
    manifest = project.digest("data/manifest.parquet")
    # A mask gets a label outside the class table: the dataset root is a dependency of ingest,
    # so dvc re-ingests, and validation stops the run before the shards are touched.
    mask_path = data / "masks" / "train" / "train_0.png"
    mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
    mask[0, 0] = 99
    cv2.imwrite(str(mask_path), mask)
    failed = project.dvc("repro", "shard")
    assert failed.returncode != 0
    assert MASK_VALUES_RULE in failed.stdout + failed.stderr
    assert project.digest("data/shards") == shards
    assert project.digest("data/manifest.parquet") != manifest  # it describes the new data


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid copy not found at {CAMVID}")
def test_camvid_shards_hold_every_sample_and_the_class_pixels_of_the_mask_files(tmp_path):
    project = make_project(
        tmp_path, dataset={"name": "camvid", "root": str(CAMVID), "test_split": "val"}
    )
    result = project.dvc("repro", "shard")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage 'synthesize'" not in result.stdout  # not upstream of a real dataset
    index = json.loads((project.root / "data/shards/index.json").read_text())
    assert index["num_classes"] == 11
    for split, expected in (("train", 367), ("val", 101)):
        info = index["splits"][split]
        assert info["num_samples"] == expected
        counts = np.zeros(256, np.int64)
        for mask_file in sorted((CAMVID / f"{split}annot").glob("*.png")):
            mask = cv2.imread(str(mask_file), cv2.IMREAD_UNCHANGED)
            counts += np.bincount(mask.ravel(), minlength=256)
        assert info["class_pixels"] == counts[:11].tolist()  # 11 (Unlabelled) is ignored
        assert info["ignored_pixels"] == int(counts[11])


#: Imports every module of the segflow copy in the current directory (bytecode writing on).
IMPORT_EVERY_MODULE = (
    "import importlib, pkgutil, segflow\n"
    "assert segflow.__file__.startswith(__import__('os').getcwd()), segflow.__file__\n"
    "for m in pkgutil.walk_packages(segflow.__path__, 'segflow.'):\n"
    "    importlib.import_module(m.name)\n"
)


def test_importing_every_module_with_bytecode_on_leaves_the_pipeline_up_to_date(tmp_path):
    """Bytecode is not a dependency: code directories are deps, their __pycache__ is ignored."""
    project = make_project(tmp_path, synthetic=TINY)
    project.env.pop("PYTHONDONTWRITEBYTECODE", None)  # as on a user's machine
    assert project.dvc("repro", "shard").returncode == 0
    # The project's own copy of segflow comes first on sys.path (python -c puts the cwd first).
    project.env["PYTHONPATH"] = str(project.root)
    for flags in ((), ("-O",)):  # -O writes other .pyc names (*.opt-1.pyc)
        result = project.run(sys.executable, *flags, "-c", IMPORT_EVERY_MODULE)
        assert result.returncode == 0, result.stderr
    written = sorted(str(p.relative_to(project.root)) for p in project.root.rglob("*.pyc"))
    for folder in ("segflow/data/datasets/", "segflow/train/", "segflow/models/"):
        assert any(p.startswith(folder) and ".opt-1." in p for p in written), folder
    # DVC ignores every one of them (train's code deps included), so nothing changed.
    ignored = project.dvc("check-ignore", "--non-matching", "--details", *written)
    not_ignored = [line for line in ignored.stdout.splitlines() if line.startswith("::")]
    assert not not_ignored, not_ignored
    status = project.dvc("status", "shard")
    assert status.returncode == 0, status.stderr
    assert "Data and pipelines are up to date" in status.stdout, status.stdout


def experiments(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: its params.yaml and metrics files' data}."""
    found = {}
    for commit in shown:
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                data = rev["data"]
                found[rev["name"]] = {
                    "params": data["params"]["params.yaml"]["data"],
                    **{path: m.get("data", {}) for path, m in data["metrics"].items()},
                }
    return found


@pytest.mark.slow  # `make test-all`; CI's `make test` leaves it out (35-minute bound)
def test_two_dvc_experiments_keep_their_own_test_miou_and_the_plots_all_load(tmp_path):
    """The metrics and plots files are git's (`cache: false`, not ignored), so each experiment
    commit holds its own: `dvc exp show`, `dvc metrics diff` and `dvc plots` compare them."""
    project = make_project(
        tmp_path,
        synthetic=TINY,
        loader={"crop_height": 48, "crop_width": 64},
        train={"epochs": 1, "launcher": "local", "batch_size": 2, "cpus_per_worker": 1},
        crf={"w_bilateral": [3.0], "sigma_alpha": 30.0, "sigma_beta": 3.0},
        evaluate={"num_samples_report": 1, "speed_repeats": 1},
    )
    shutil.copy(REPO / ".gitignore", project.root / ".gitignore")
    project.run("git", "add", "-A")
    commit = project.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "0")
    assert commit.returncode == 0, commit.stderr
    for name, setting in (("one-epoch", "train.epochs=1"), ("two-epochs", "train.epochs=2")):
        done = project.dvc("exp", "run", "-n", name, "-S", setting, "evaluate")
        assert done.returncode == 0, done.stdout + done.stderr

    shown = project.dvc("exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    found = experiments(json.loads(shown.stdout))
    assert {n: found[n]["params"]["train"]["epochs"] for n in found} == {
        "one-epoch": 1,
        "two-epochs": 2,
    }
    for name in found:
        assert 0.0 <= found[name]["reports/metrics.json"]["miou"] <= 1.0, found[name]
        assert (
            found[name]["reports/train_metrics.json"]["epochs"]
            == found[name]["params"]["train"]["epochs"]
        )

    diff = project.dvc("metrics", "diff", "one-epoch", "two-epochs", "--json")
    assert diff.returncode == 0, diff.stderr
    assert "miou" in json.loads(diff.stdout)["reports/metrics.json"]

    # The default pipeline (search off) leaves no declared plot missing; the training curve
    # has loss and LR beside mIoU.
    plots = project.dvc("plots", "show", "--json")
    assert plots.returncode == 0 and "failed" not in plots.stdout + plots.stderr, plots.stderr
    drawn = json.loads(plots.stdout)
    assert "errors" not in drawn, drawn.get("errors")
    assert {"val_miou", "train_loss", "learning_rate"} <= set(drawn["data"])
    for name, column in (("train_loss", "train_loss"), ("learning_rate", "lr")):
        (plot,) = drawn["data"][name]
        assert plot["content"]["data"]["values"][0][column] != "", name
    compared = project.dvc("plots", "diff", "one-epoch", "two-epochs", "--json")
    assert compared.returncode == 0, compared.stderr
