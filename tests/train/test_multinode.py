"""Two Ray nodes on this machine (two raylets, one CPU each): a 2-worker run spans both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import RayCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head node and a second node, one CPU each."""
    cluster = RayCluster()
    try:
        cluster.start_head(num_cpus=1)
        cluster.add_node(num_cpus=1)
        for key, value in cluster.client_env().items():
            monkeypatch.setenv(key, value)
        yield cluster.address
    finally:
        cluster.stop()


DRIVER = """
import json, sys
from pathlib import Path
from segflow.train.run import train_distributed
from tests.train.conftest import tiny_params

tmp, shards = Path(sys.argv[1]), Path(sys.argv[2])
params = tiny_params(tmp, epochs=1, batch_size=2, num_workers=2, cpus_per_worker=1)
out = train_distributed(params, shards, tmp / "work")
import ray
alive = [n for n in ray.nodes() if n["Alive"]]
(tmp / "out.json").write_text(json.dumps(
    {"node_ids": out.node_ids, "nodes": len(alive), "epochs": [r["epoch"] for r in out.history]}
))
"""


def test_two_workers_land_on_two_nodes(shards, tmp_path, two_node_cluster):
    # The driver is a process of its own, as a job submitted to a cluster is (and so it does
    # not inherit the Ray state of this test process).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path), str(shards)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())

    assert out["nodes"] == 2
    assert len(out["node_ids"]) == 2 and len(set(out["node_ids"])) == 2
    assert out["epochs"] == [1]
