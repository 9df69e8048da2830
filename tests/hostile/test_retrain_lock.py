"""`segflow retrain` while another dvc process holds the checkout: exit 75 ("try later"), and the
attempt is recorded as ``locked``, not as a failure.

DVC has two locks: the repository lock (.dvc/tmp/lock, held while a dvc command reads or
changes the repository) and the read/write locks of a running stage's paths (.dvc/tmp/rwlock,
held for the whole stage). Either makes the retrain's ``dvc repro`` refuse.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import yaml

from tests.project import BIN, Project, make_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """A project whose data stages have run (the shards exist), with one more stage, ``hold``,
    that reads the shards for a minute: what a `dvc repro` by hand does while it trains."""
    project = make_project(
        tmp_path_factory.mktemp("retrain_lock"),
        synthetic={"num_train": 4, "num_val": 2, "num_test": 2, "height": 48, "width": 64},
    )
    project.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}"
    shards = project.dvc("repro", "shard")
    assert shards.returncode == 0, shards.stdout + shards.stderr
    pipeline = yaml.safe_load((project.root / "dvc.yaml").read_text())
    pipeline["stages"]["hold"] = {"cmd": "sleep 120", "deps": ["data/shards"]}
    (project.root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return project


@contextmanager
def holding(project: Project, cmd: list[str], held: Callable[[], bool]) -> Iterator[None]:
    """Start ``cmd`` in its own process group; yield it once ``held()``; kill the group after."""
    proc = subprocess.Popen(
        cmd, cwd=project.root, env=project.env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not held():
            assert proc.poll() is None, f"{cmd} exited ({proc.returncode}) before it held a lock"
            assert time.monotonic() < deadline, f"{cmd} never held a lock"
            time.sleep(0.1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def retrain(project: Project) -> tuple[subprocess.CompletedProcess, dict]:
    result = project.run(str(BIN / "segflow"), "retrain")
    log = (project.root / "reports" / "retrain_log.jsonl").read_text().splitlines()
    return result, json.loads(log[-1])


def assert_locked(result: subprocess.CompletedProcess, record: dict, dvc_says: str) -> None:
    assert result.returncode == 75, result.stdout[-2000:] + result.stderr
    assert "Traceback" not in result.stderr
    assert "retrain: locked: another dvc process holds this checkout" in result.stderr
    assert record["decision"] == "locked" and record["retrained"] is False
    assert dvc_says in record["reason"]
    assert record["stages_run"] == [] and "failed_stage" not in record


def test_a_dvc_repro_running_by_hand_makes_retrain_exit_75_and_record_locked(project):
    rwlock = project.root / ".dvc" / "tmp" / "rwlock"
    shards = str(project.root / "data" / "shards")

    def reading_shards() -> bool:
        return rwlock.exists() and shards in rwlock.read_text()

    before = project.digest("data/shards")
    with holding(project, [str(BIN / "dvc"), "repro", "hold"], reading_shards):
        result, record = retrain(project)
    assert_locked(result, record, f"'{shards}' is busy, it is being blocked by")
    assert project.digest("data/shards") == before


def test_the_dvc_repository_lock_makes_retrain_exit_75_and_record_locked(project):
    """DVC's own lock (its code, in another process) on .dvc/tmp/lock."""
    marker = project.root / "locked.txt"
    hold = (
        "import sys, time\n"
        "from dvc.lock import make_lock\n"
        "lock = make_lock('.dvc/tmp/lock', tmp_dir='.dvc/tmp')\n"
        "lock.lock()  # held while `lock` lives\n"
        "open('locked.txt', 'w').close()\n"
        "time.sleep(120)\n"
    )
    with holding(project, [sys.executable, "-c", hold], marker.exists):
        result, record = retrain(project)
    assert_locked(result, record, "Unable to acquire lock")
