"""Ray Train's checkpoints in an object store (``train.storage_path: s3://bucket/prefix``).

On a cluster whose nodes share no disk, the worker that writes a checkpoint and the process that
reads it back (the driver, a restarted worker, a rerun) may sit on different nodes: the run's
state must live in an object store. Here that store is moto's S3 server on 127.0.0.1, reached as
a cluster reaches MinIO: ``AWS_ENDPOINT_URL`` and keys in the environment of the Ray it runs on.
"""

from __future__ import annotations

import time

import pytest

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.storage import check_storage
from segflow.train.resume import has_checkpoint, prune_runs
from segflow.train.run import train_distributed
from tests.services import CREDENTIALS, free_port, local_ray
from tests.train.conftest import tiny_params

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_ray(s3_server, tmp_path_factory):
    """A local Ray whose processes (and this one) have the S3 server's endpoint and keys, as a
    cluster's pods have them from their Secret; yields the server."""
    with local_ray(tmp_path_factory.mktemp("ray"), s3_server.env()):
        yield s3_server


def test_a_run_checkpoints_to_s3_and_a_rerun_of_its_name_resumes_from_there(
    s3_ray, shards, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # a local ray_results/ would show up here
    storage = s3_ray.create_bucket("ckpt-resume") + "/runs"
    first = train_distributed(
        tiny_params(epochs=1, storage_path=storage, run_name="s3run"), shards, tmp_path / "a"
    )
    assert first.run_path == f"{storage}/s3run"
    assert "runs/s3run/epoch-0001/checkpoint.pt" in s3_ray.keys("ckpt-resume")
    params = tiny_params(epochs=2, storage_path=storage, run_name="s3run")
    assert has_checkpoint(params, "s3run")

    again = train_distributed(params, shards, tmp_path / "b")

    assert again.resumed_from == 1  # epoch 1 came from the S3 checkpoint, only epoch 2 ran
    assert [r["epoch"] for r in again.history] == [1, 2]
    assert again.history[0] == first.history[0]
    assert "runs/s3run/epoch-0002/checkpoint.pt" in s3_ray.keys("ckpt-resume")
    assert not (tmp_path / "ray_results").exists()


def test_old_runs_in_an_object_store_are_never_pruned(s3_ray):
    storage = s3_ray.create_bucket("ckpt-prune") + "/runs"
    client = s3_ray.client()
    for name in ("train-20260101-000000", "train-20260102-000000"):
        client.put_object(Bucket="ckpt-prune", Key=f"runs/{name}/epoch-0001/checkpoint.pt")
    params = Params.model_validate({"train": {"storage_path": storage}})
    assert prune_runs(params, keep=0) == []
    assert len(s3_ray.keys("ckpt-prune")) == 2


def test_a_missing_bucket_is_one_line_naming_the_field_and_the_uri(s3_ray):
    with pytest.raises(SegflowError, match=r"^params.yaml: train.storage_path: 's3://no-such"):
        check_storage("s3://no-such-bucket/runs", "train.storage_path")


def test_an_unreachable_endpoint_fails_in_seconds_in_one_line(monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    started = time.monotonic()
    with pytest.raises(SegflowError) as info:
        check_storage("s3://bucket/runs", "train.storage_path")
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert message.startswith("params.yaml: train.storage_path: 's3://bucket/runs': ")
    assert "\n" not in message
