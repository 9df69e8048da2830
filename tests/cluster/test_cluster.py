"""`dvc repro` on a cluster whose machines share no filesystem, with a machine lost mid-training.

The parts are real and the configuration is a user's (README "Running on a cluster"):

* object storage: moto's S3 server (``AWS_ENDPOINT_URL`` + keys on every node): the shards
  (``shard.uri``), Ray Train's and Tune's run state and checkpoints (``train.storage_path``) and
  the tracking server's artifacts;
* tracking: `mlflow server` on PostgreSQL with ``--artifacts-destination s3://...``
  (``MLFLOW_TRACKING_URI``);
* Ray: two raylets (``RAY_ADDRESS``). The head runs the stages (the drivers) and no task
  (``--num-cpus=0``, as in infra/ray/raycluster.yaml); the worker node runs every training
  worker, Tune trial and CRF task, in a working directory of its own and with the project
  directory hidden from it (an empty tmpfs over it): nothing it needs may come from the head's
  disk.

Once the first epoch's checkpoint is in S3 the worker node is killed (SIGKILL to its raylet and
every process of it, a lost machine) and started again; Ray Train restarts the worker group on it
from the S3 checkpoint, the stage finishes and the register stage makes the model champion.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from tests.project import BIN, make_project
from tests.services import SERVER_ENV, RayCluster

pytestmark = pytest.mark.integration

SHARDS = "s3://segflow/shards"
RUNS = "s3://segflow/ray"
#: Enough epochs (~0.2 s each here) that training is still running when the node is killed.
EPOCHS = 20
MODEL = "segflow-synthetic"
SNAPSHOT = "/checkpoint_manager_snapshot.json"  # Ray Train's record of the registered checkpoints


def start_cluster(s3_server, cluster_tracking, worker_home, hidden) -> RayCluster:
    """The Ray cluster: a head with no CPUs for tasks, and a worker node of 2 CPUs working in
    ``worker_home`` that sees ``hidden`` (the project) as an empty directory."""
    worker_home.mkdir()
    env = {
        **s3_server.env(),
        **SERVER_ENV,
        "MLFLOW_TRACKING_URI": cluster_tracking.url,
        "SEGFLOW_CACHE_DIR": str(worker_home / "cache"),  # each machine its own shard cache
        # A lost node is noticed in ~1 s instead of Ray's default ~15 s.
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "2",
    }
    cluster = RayCluster(env)
    try:
        cluster.start_head(num_cpus=0)
        cluster.add_node(num_cpus=2, cwd=worker_home, hide=(hidden,))
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.mark.timeout(1200)  # nine stages and four servers: ~9 min on 2 cores shared 8 ways
def test_dvc_repro_on_a_cluster_that_shares_no_disk_survives_a_lost_worker_node(
    tmp_path, s3_server, cluster_tracking
):
    from mlflow import MlflowClient

    s3_server.create_bucket("segflow")
    project = make_project(
        tmp_path,
        synthetic={"num_train": 6, "num_val": 3, "num_test": 3, "height": 48, "width": 64},
        shard={"uri": SHARDS},
        loader={"crop_height": 48, "crop_width": 64},
        train={
            "model": "unet", "backbone": None, "output_stride": None,
            "model_options": {"width": 4}, "epochs": EPOCHS, "batch_size": 2,
            "cpus_per_worker": 1, "log_every": 1, "max_failures": 2, "storage_path": RUNS,
        },
        crf={"w_bilateral": 3.0, "sigma_alpha": 30.0, "sigma_beta": 3.0},  # one CRF trial
        evaluate={"num_samples_report": 2, "speed_repeats": 2},
        mlflow={"http_retries": 5, "http_backoff_factor": 1},
    )  # fmt: skip
    cluster = start_cluster(s3_server, cluster_tracking, tmp_path / "worker", project.root)
    project.env.update(
        {**s3_server.env(), **SERVER_ENV, **cluster.client_env(),
         "MLFLOW_TRACKING_URI": cluster_tracking.url}
    )  # fmt: skip
    log = tmp_path / "repro.log"
    with log.open("w") as out:
        repro = subprocess.Popen(
            [str(BIN / "dvc"), "repro"], cwd=project.root, env=project.env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        first = wait_for_checkpoint(s3_server, repro, log)
        cluster.kill(1)  # the worker node: its raylet, the training worker, everything
        cluster.restart(1)
        assert repro.wait(timeout=900) == 0, log.read_text()[-6000:]
    finally:
        if repro.poll() is None:
            os.killpg(repro.pid, signal.SIGKILL)
        cluster.stop()
    out = log.read_text()

    # Ray Train restarted the worker group on the new node from the S3 checkpoint (the one
    # registered before the kill, or a later one registered while the node was going down).
    resumed = re.findall(r"train: resuming after epoch (\d+) ", out)
    assert len(resumed) == 1 and first <= int(resumed[0]) < EPOCHS, out[-6000:]
    assert f"train: epoch {EPOCHS}/{EPOCHS} loss" in out
    assert f"epoch-{EPOCHS:04d}/checkpoint.pt" in " ".join(s3_server.keys("segflow"))
    # Nothing of the run's state on the head's disk: it is all in the object store.
    assert not (project.root / "ray_results").exists()
    assert f"train.keep_runs not applied to {RUNS}" in out
    # Registered on the Postgres-backed server, its files in the S3 bucket behind it.
    client = MlflowClient(tracking_uri=cluster_tracking.url)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["gate.decision"] == "promoted"
    assert any(key.endswith("/MLmodel") for key in s3_server.keys("mlflow"))
    local = project.root / "mlruns"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))


def wait_for_checkpoint(s3_server, repro: subprocess.Popen, log, timeout: float = 600) -> int:
    """The latest epoch whose checkpoint Ray Train has registered, once there is one.

    A checkpoint file in S3 is not yet one a restart resumes from: the controller collects a
    worker's report (every health check, 2 s) and only then records the checkpoint in the run's
    ``checkpoint_manager_snapshot.json``, which is what is waited for here.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snapshots = [k for k in s3_server.keys("segflow") if k.endswith(SNAPSHOT)]
        if snapshots:
            body = s3_server.client().get_object(Bucket="segflow", Key=snapshots[0])["Body"]
            epochs = re.findall(r"epoch-(\d{4})", body.read().decode())
            if epochs:
                return max(int(e) for e in epochs)
        if repro.poll() is not None:
            pytest.fail(f"dvc repro ended ({repro.returncode}) before a checkpoint:\n"
                        + log.read_text()[-6000:])  # fmt: skip
        time.sleep(0.2)
    pytest.fail(f"no checkpoint in S3 after {timeout} s:\n" + log.read_text()[-6000:])
