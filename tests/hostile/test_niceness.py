"""Ray workers train at the driver's priority, not at niceness 15.

Ray's core worker adds its ``worker_niceness`` config (default 15) to the niceness of every
worker process it starts, so anything else on the node (a Tune trial, a CRF pool, a notebook)
took the CPU from training. segflow's Ray job sets it to 0 unless ``RAY_worker_niceness`` says
otherwise. Checked on a real local Ray, from a driver that itself runs at niceness 5 (so that
"the driver's" is not just 0), in a Ray Train worker (the launcher of the train and search
stages) and in a plain Ray task (Tune trials, the CRF over a split).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.project import CODE_UNDER_TEST

pytestmark = pytest.mark.integration

DRIVER = """
import json, os, sys
import ray
from segflow.config import Params
from segflow.raycluster import connect_ray
from segflow.train.distributed import launch

def worker(config):
    return {"nice": os.nice(0)}

@ray.remote(num_cpus=1)
def task():
    return os.nice(0)

p = Params.model_validate(
    {"train": {"cpus_per_worker": 1, "storage_path": sys.argv[1], "max_failures": 0}}
).train
connect_ray(2)
run = launch(worker, {}, p, "train", "niceness", echo=lambda line: None)
print(json.dumps({"driver": os.nice(0), "train_worker": run.value["nice"],
                  "task": ray.get(task.remote())}))
"""


@pytest.mark.parametrize(("setting", "added"), [(None, 0), ("3", 3)])
def test_ray_workers_run_at_the_drivers_niceness_unless_told_otherwise(tmp_path, setting, added):
    env = {**os.environ, **CODE_UNDER_TEST, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_worker_niceness", None)
    if setting is not None:
        env["RAY_worker_niceness"] = setting
    out = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "ray_results")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.nice(5),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    nice = json.loads(out.stdout.strip().splitlines()[-1])
    assert nice["driver"] == 5
    assert nice["train_worker"] == nice["task"] == nice["driver"] + added
