"""Real servers the cluster tests run against, on 127.0.0.1 and in temp directories.

* :class:`S3Server`: moto's S3-compatible server (``python -m moto.server``), the object store
  a cluster's shards, checkpoints and artifacts go to. It keeps its objects in memory, and its
  request log (one werkzeug line per HTTP request) lets a test count the GETs segflow made.

Clients find it the way a user's cluster finds MinIO or S3: ``AWS_ENDPOINT_URL`` and the
``AWS_*`` credentials in the environment (:meth:`S3Server.env`), read by pyarrow.fs, boto3 and
MLflow alike.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

#: Credentials moto accepts (any); real ones never appear in tests.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "segflow-test",
    "AWS_SECRET_ACCESS_KEY": "segflow-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binding it may still race another; rare)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """moto's S3 server in a process group of its own, logging every request to ``log``."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "s3-server.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """What a client process needs to reach this server as its S3 endpoint."""
        return {"AWS_ENDPOINT_URL": self.url, **CREDENTIALS}

    def start(self, timeout: float = 60.0) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited:\n{self.log.read_text()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1),
            ):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"moto server not up in {timeout} s:\n{self.log.read_text()}")

    def create_bucket(self, name: str) -> str:
        """Create ``name`` (S3's rules: 3-63 lowercase letters, digits, '-'); returns s3://name."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.url, **_boto_credentials())
        client.create_bucket(Bucket=name)
        return f"s3://{name}"

    def requests(self, method: str = "GET", under: str = "") -> list[str]:
        """The paths of the ``method`` requests logged so far whose path starts with ``under``
        (e.g. ``/bucket/prefix``): what the server was asked, whoever asked."""
        pattern = re.compile(rf'"{method} (/[^ ?]*)\S* HTTP/1\.[01]"')
        paths = pattern.findall(self.log.read_text(errors="replace"))
        return [p for p in paths if p.startswith(under)]

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def local_ray(temp_dir: Path, env: dict[str, str], num_cpus: int = 2) -> Iterator[None]:
    """A Ray started in this process (not $RAY_ADDRESS's) whose processes inherit ``env``,
    as a cluster's nodes have their environment; this process's environment is restored after."""
    import ray

    saved = {key: os.environ.get(key) for key in (*env, "RAY_ADDRESS")}
    os.environ.update(env)
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=num_cpus, include_dashboard=False, _temp_dir=str(temp_dir))
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }
