"""What a user reads in `dvc repro`'s output: segflow's lines, no library noise.

The whole pipeline on tiny synthetic data, training on Ray Train (the default launcher, where
Ray's own processes print), crf_tune on Ray Tune, evaluate on Ray tasks, register on a new
MLflow store. Its combined stdout and stderr, captured through a pipe as in a CI log or
``| tee``, must carry no traceback, no "Exception ignored" report from a dying worker, no ERROR
line of Ray's C++ core (e.g. the PreemptionWatcher line Ray Train's watcher actor caused), no
"Creating initial MLflow database tables", and no terminal escape codes.
"""

from __future__ import annotations

import re

import pytest

from tests.project import make_project

pytestmark = pytest.mark.integration

TINY = {"num_train": 6, "num_val": 3, "num_test": 3, "height": 48, "width": 64}
#: A Ray C++ log line at ERROR level: "[2026-12-07 13:01:02,345 E 1234 5678] core_worker.cc:..."
RAY_ERROR_LINE = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,.]+ E \d+ \d+\]")
NOISE = (
    "Traceback",
    "Exception ignored",
    "PreemptionWatcher",
    "Creating initial MLflow database tables",
    "\x1b[",
)


@pytest.mark.slow  # `make test-all`; CI's `make test` leaves it out (35-minute bound)
def test_the_pipeline_on_ray_prints_no_traceback_no_ray_error_and_no_escape_codes(tmp_path):
    project = make_project(
        tmp_path,
        synthetic=TINY,
        loader={"crop_height": 48, "crop_width": 64},
        train={"epochs": 1, "launcher": "ray", "batch_size": 2, "cpus_per_worker": 1},
        crf={"w_bilateral": [3.0], "sigma_alpha": 30.0, "sigma_beta": 3.0},
        evaluate={"num_samples_report": 2, "speed_repeats": 1},
    )
    result = project.dvc("repro")
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    for stage in ("train", "crf_tune", "evaluate", "register"):
        assert f"Running stage '{stage}'" in result.stdout
    found = [text for text in NOISE if text in log]
    assert not found, f"{found} in:\n{log}"
    assert not RAY_ERROR_LINE.search(log), log
