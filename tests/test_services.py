"""The test servers themselves: what the cluster tests rely on them for."""

from __future__ import annotations

import pyarrow.fs as pafs
import pytest

pytestmark = pytest.mark.integration


def test_the_s3_server_serves_pyarrow_through_the_environment_and_logs_each_get(s3_env):
    bucket = s3_env.create_bucket("segflow-services")
    fs, root = pafs.FileSystem.from_uri(f"{bucket}/prefix")
    with fs.open_output_stream(f"{root}/a.bin") as out:
        out.write(b"shard bytes")

    assert fs.open_input_stream(f"{root}/a.bin").read() == b"shard bytes"
    assert fs.open_input_stream(f"{root}/a.bin").read() == b"shard bytes"
    assert (
        s3_env.requests("GET", "/segflow-services/prefix/a.bin")
        == ["/segflow-services/prefix/a.bin"] * 2
    )
    assert s3_env.requests("PUT", "/segflow-services/prefix/") == ["/segflow-services/prefix/a.bin"]
