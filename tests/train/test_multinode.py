"""Two Ray nodes on this machine (two raylets, one CPU each): a 2-worker run spans both."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(*args: str, env: dict) -> subprocess.Popen:
    """``ray start --block`` in a process group of its own, so teardown can end exactly it.

    (``ray stop`` would end every Ray process on the machine, other people's sessions too.)
    """
    return subprocess.Popen(
        [RAY, "start", "--block", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for_nodes(address: str, count: int, env: dict, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(
            [RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True
        )
        if out.returncode == 0 and out.stdout.count(" node_") >= count:
            return
        time.sleep(1)
    raise TimeoutError(f"the Ray cluster at {address} did not reach {count} nodes")


def stop_node(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def two_node_cluster(monkeypatch):
    """A head node and a second node, one CPU each, in a short private temp dir."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Unix socket paths must stay under 108 bytes: pytest's tmp_path is too deep.
    temp = tempfile.mkdtemp(prefix="segflow-ray-", dir="/tmp")
    # A private cluster on 127.0.0.1: no token auth (Ray would otherwise share a token file in
    # ~/.ray with every other Ray session of this user).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    nodes = []
    try:
        nodes.append(
            start_node(
                "--head",
                f"--port={port}",
                f"--temp-dir={temp}",
                "--include-dashboard=false",
                *common,
                env=env,
            )  # fmt: skip
        )
        wait_for_nodes(address, 1, env)
        nodes.append(start_node(f"--address={address}", *common, env=env))
        wait_for_nodes(address, 2, env)
        monkeypatch.setenv("RAY_ADDRESS", address)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        yield address
    finally:
        for proc in reversed(nodes):
            stop_node(proc)
        shutil.rmtree(temp, ignore_errors=True)


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
