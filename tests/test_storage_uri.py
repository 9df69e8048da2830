"""``train.storage_path`` / ``search.storage_path``: a local path, or an object-store URI that
nothing can climb out of.

Run directories are resumed and deleted under the storage path by name, so a URI is held to
the same rule as a run name: ``s3://bucket/prefix`` with plain segments, never ``..``, never
keys in the URI (they would be printed in every log line naming it), never a query string.
"""

from __future__ import annotations

import pytest

from segflow.config import Params, parse_params
from segflow.errors import SegflowError
from segflow.storage import display, open_storage


@pytest.mark.parametrize(
    "value",
    ["ray_results", "/data/ray", "../elsewhere", "s3://segflow-runs", "s3://segflow-runs/a/b_c",
     "s3://my.bucket/runs/", "gs://segflow-runs/ray"],
)  # fmt: skip
def test_local_paths_and_plain_bucket_prefixes_are_storage_paths(value):
    for section in ("train", "search"):
        assert getattr(Params.model_validate({section: {"storage_path": value}}), section)


@pytest.mark.parametrize(
    "value",
    ["s3://bucket/../other", "s3://bucket/runs/..", "s3://bucket/./runs", "s3://bucket//runs",
     "s3://key:secret@bucket/runs", "s3://bucket/runs?endpoint_override=evil:9000",
     "s3://Bucket/runs", "s3://b/runs", "s3://..bucket/runs", "s3://bucket../runs",
     "file:///etc", "hdfs://namenode/runs", "s3:///runs", "s3://bucket/run s"],
)  # fmt: skip
def test_a_uri_that_could_climb_out_or_carry_secrets_is_one_line_naming_the_field(value):
    with pytest.raises(SegflowError) as info:
        parse_params({"train": {"storage_path": value}})
    message = str(info.value)
    assert message.startswith("params.yaml: train.storage_path: ")
    assert "\n" not in message


def test_an_s3_uri_opens_as_bucket_and_prefix_on_the_endpoint_of_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    fs, path = open_storage("s3://segflow-runs/ray/")
    assert path == "segflow-runs/ray"
    assert type(fs).__name__ == "S3FileSystem"
    assert display("s3://segflow-runs/ray", f"{path}/train-1") == "s3://segflow-runs/ray/train-1"


def test_a_local_path_is_left_to_ray_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_storage("ray_results") == (None, str(tmp_path / "ray_results"))
