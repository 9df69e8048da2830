"""Set-up shared by every test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

#: Programs whose start-up alone costs a second or more (an interpreter with segflow's imports,
#: DVC, a database server): a test that starts one is an integration test.
HEAVY_PROGRAMS = ("python", "segflow", "dvc", "mlflow", "ray", "initdb", "pg_ctl", "postgres")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # CI has 2 shared cores: OpenMP threads spin-waiting on each other cost up to 10x there,
    # and float sums must not depend on the thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fast_tests_start_no_heavy_process(request, monkeypatch):
    """`make test-fast` runs the tests not marked integration: keep it free of process starts.

    A test without the mark that starts one of :data:`HEAVY_PROGRAMS` fails, naming the program,
    so a slow test cannot slip into the fast set unmarked.
    """
    if request.node.get_closest_marker("integration"):
        return
    start = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):
        first = args[0] if isinstance(args, list | tuple) else str(args).split()[0]
        name = Path(str(first)).name
        if name.startswith(HEAVY_PROGRAMS):
            raise AssertionError(
                f"{request.node.nodeid} starts {name}: mark it @pytest.mark.integration"
            )
        return start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 for the tests of one module (tests/services.py); tests
    that use it are integration tests (it is a process start)."""
    from tests.services import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process (and what it starts) pointed at :func:`s3_server`, as a cluster's nodes
    are pointed at MinIO or S3: ``AWS_ENDPOINT_URL`` and credentials in the environment."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture(scope="module")
def postgres_server():
    """PostgreSQL on 127.0.0.1 in a short temp dir (its Unix socket must fit 108 bytes), run as
    ``nobody`` when the tests run as root (tests/services.py)."""
    import shutil
    import tempfile

    from tests.services import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="segflow-pg-", dir="/tmp"))
    server = PostgresServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_tracking(postgres_server, s3_server, tmp_path_factory):
    """A cluster's tracking server: `mlflow server` with its runs and registry in PostgreSQL
    and its artifacts in the S3 bucket ``mlflow`` (``--artifacts-destination
    s3://mlflow/mlartifacts``), served through it, so clients need only its URL."""
    from tests.services import MlflowServer

    backend = postgres_server.create_database("mlflow")
    artifacts = s3_server.create_bucket("mlflow") + "/mlartifacts"
    server = MlflowServer(
        tmp_path_factory.mktemp("mlflow-server"), backend=backend, artifacts=artifacts,
        env=s3_server.env(),
    ).start()  # fmt: skip
    server.wait_until_up(timeout=180)  # the first start creates the schema: slow on 2 cores
    yield server
    server.kill()
