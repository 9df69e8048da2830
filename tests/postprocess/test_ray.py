"""The CRF as Ray tasks and the Ray Tune sweep, on one local Ray of 2 CPUs for the module."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from segflow.evaluate import crf_split
from segflow.evaluate.crf_split import crf_over_split, crf_over_split_serial
from segflow.postprocess.crf_params import CRFParams
from segflow.tune import crf_search
from segflow.tune.crf_search import crf_sweep
from tests.postprocess.scenes import write_scenes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory):
    import ray

    saved = os.environ.get("RAY_ADDRESS")
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
    )
    yield
    ray.shutdown()
    if saved is not None:
        os.environ["RAY_ADDRESS"] = saved


@pytest.fixture(scope="module")
def prob_dir(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("crf") / "probs")


@pytest.mark.parametrize("images_per_task", [1, 2])
def test_ray_tasks_give_exactly_the_serial_confusion_and_per_image_counts(
    prob_dir, images_per_task
):
    params = CRFParams(w_bilateral=5.0, sigma_alpha=40.0)
    serial = crf_over_split_serial(prob_dir, params, num_classes=2)
    parallel = crf_over_split(prob_dir, params, num_classes=2, images_per_task=images_per_task)
    assert parallel.num_images == serial.num_images == 3
    assert np.array_equal(parallel.confusion, serial.confusion)
    assert parallel.metrics == serial.metrics
    # Per-image counts in file order, whatever order the tasks finished in.
    assert np.array_equal(parallel.image_counts, serial.image_counts)
    assert serial.image_counts.shape == (3, 3, 2)
    assert np.array_equal(serial.image_counts[:, 0].sum(axis=0), np.diag(serial.confusion))


def test_grid_sweep_finds_the_planted_best_setting(prob_dir, tmp_path):
    # Only a strong bilateral term with a colour-sensitive sigma_beta moves each scene's
    # misplaced boundary onto its colour edge; a colour-blind one (255) or none cannot.
    space = {"w_bilateral": [0.0, 4.0], "sigma_beta": [255.0, 5.0], "iterations": 5}
    result = crf_sweep(prob_dir, 2, tmp_path / "tune", space=space, search="grid")
    assert (result.best.w_bilateral, result.best.sigma_beta) == (4.0, 5.0)
    assert result.best.iterations == 5
    assert len(result.trials) == 4
    assert result.trials[0]["miou"] == result.best_metrics["miou"] == pytest.approx(1.0)
    assert all(row["miou"] < 0.95 for row in result.trials[1:])
    assert (tmp_path / "tune" / "crf_tune").is_dir()  # Tune's files stay under storage_path


def test_optuna_sweep_runs_num_samples_trials_within_the_ranges(prob_dir, tmp_path):
    space = {"w_bilateral": (0.5, 6.0), "sigma_beta": [5.0, 255.0], "iterations": (2, 4)}
    result = crf_sweep(
        prob_dir, 2, tmp_path / "tune", space=space, search="optuna", num_samples=3,
        max_concurrent=2, seed=1,
    )  # fmt: skip
    assert len(result.trials) == 3
    for row in result.trials:
        assert 0.5 <= row["w_bilateral"] <= 6.0 and row["sigma_beta"] in (5.0, 255.0)
        assert 2 <= row["iterations"] <= 4
    assert result.best_metrics["miou"] == max(row["miou"] for row in result.trials)


def read_then_delete(monkeypatch, module) -> None:
    """Make ``module.read_split`` (the driver's one read of the saved files) delete the directory
    right after reading it: whatever runs later, in Ray's workers, cannot open a file of it, as
    a worker on a node that shares no disk with the driver cannot."""
    read = module.read_split

    def read_and_delete(directory, ids=None):
        files = read(directory, ids)
        shutil.rmtree(directory)
        return files

    monkeypatch.setattr(module, "read_split", read_and_delete)


def test_ray_tasks_need_no_file_of_the_split_only_what_the_driver_read(
    prob_dir, tmp_path, monkeypatch
):
    params = CRFParams(w_bilateral=5.0, sigma_alpha=40.0)
    serial = crf_over_split_serial(prob_dir, params, num_classes=2)
    here = shutil.copytree(prob_dir, tmp_path / "probs")
    read_then_delete(monkeypatch, crf_split)

    parallel = crf_over_split(here, params, num_classes=2)

    assert not here.exists()
    assert np.array_equal(parallel.image_counts, serial.image_counts)


def test_sweep_trials_need_no_file_of_the_split_only_what_the_driver_read(
    prob_dir, tmp_path, monkeypatch
):
    space = {"w_bilateral": [0.0, 4.0], "sigma_beta": [255.0, 5.0], "iterations": 5}
    before = crf_sweep(prob_dir, 2, tmp_path / "tune", space=space, search="grid", name="a")
    here = shutil.copytree(prob_dir, tmp_path / "probs")
    read_then_delete(monkeypatch, crf_search)

    after = crf_sweep(here, 2, tmp_path / "tune", space=space, search="grid", name="b")

    assert not here.exists()
    assert after.trials == before.trials  # the same scores, trial for trial
