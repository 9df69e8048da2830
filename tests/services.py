"""Real servers the cluster tests run against, on 127.0.0.1 and in temp directories.

* :class:`S3Server`: moto's S3-compatible server (``python -m moto.server``), the object store
  a cluster's shards, checkpoints and artifacts go to. It keeps its objects in memory, and its
  request log (one werkzeug line per HTTP request) lets a test count the GETs segflow made.

Clients find it the way a user's cluster finds MinIO or S3: ``AWS_ENDPOINT_URL`` and the
``AWS_*`` credentials in the environment (:meth:`S3Server.env`), read by pyarrow.fs, boto3 and
MLflow alike.

* :class:`PostgresServer`: PostgreSQL from the Debian package (``initdb`` in a temp dir, then
  ``postgres`` on 127.0.0.1), run as an unprivileged user when the tests run as root (initdb
  refuses root): the database behind a tracking server.
* :class:`MlflowServer`: ``mlflow server`` on 127.0.0.1 over a backend store (sqlite by
  default, or a :class:`PostgresServer`'s database) and an artifact destination it serves
  itself (a local directory, or ``s3://...`` on an :class:`S3Server`).
* :class:`RayCluster`: a Ray cluster of several raylets on this machine (``ray start --head``,
  then ``ray start --address`` per node), each ``ray start --block`` in a process group of its
  own, so a test can kill one node (a lost machine) and start it again, and teardown ends
  exactly these processes (``ray stop`` would end every Ray on the machine, other people's
  too). A node can be given directories it cannot see (an empty tmpfs mounted over each in a
  mount namespace of its own), as a machine of a cluster that shares no disk with the head.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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

    def client(self):
        """A boto3 S3 client of this server (with the test credentials, whatever the env)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, **_boto_credentials())

    def create_bucket(self, name: str) -> str:
        """Create ``name`` (S3's rules: 3-63 lowercase letters, digits, '-'); returns s3://name."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, bucket: str) -> list[str]:
        """Every object key in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def requests(self, method: str = "GET", under: str = "") -> list[str]:
        """The paths of the ``method`` requests logged so far whose path starts with ``under``
        (e.g. ``/bucket/prefix``): what the server was asked, whoever asked."""
        pattern = re.compile(rf'"{method} (/[^ ?]*)\S* HTTP/1\.[01]"')
        paths = pattern.findall(self.log.read_text(errors="replace"))
        return [p for p in paths if p.startswith(under)]

    def stop(self) -> None:
        if self.proc is not None:
            _end_group(self.proc, (signal.SIGKILL,))
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


#: The Debian package's server binaries (postgresql-15).
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


def as_unprivileged() -> list[str]:
    """The prefix that runs a command as ``nobody`` when this process is root, else none."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


class PostgresServer:
    """A throw-away PostgreSQL cluster in ``root`` (short: a Unix socket lives there too), owned
    by the user that runs it, with trust authentication on 127.0.0.1 only."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = root
        self.port = port or free_port()
        self.log = root / "postgres.log"
        self.proc: subprocess.Popen | None = None

    def dsn(self, database: str) -> str:
        """What psycopg2 connects to."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            os.chown(self.root, 65534, 65534)  # nobody:nogroup, who runs the server
        data = self.root / "data"
        subprocess.run(
            [*as_unprivileged(), str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, cwd=self.root,
        )  # fmt: skip
        with self.log.open("w") as log:
            if os.geteuid() == 0:
                os.chown(self.log, 65534, 65534)
            self.proc = subprocess.Popen(
                [*as_unprivileged(), str(POSTGRES_BIN / "postgres"), "-D", str(data),
                 "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.root),
                 "-c", "fsync=off", "-c", "full_page_writes=off"],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{self.log.read_text()}")
            ready = subprocess.run(
                [str(POSTGRES_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"postgres not up in {timeout} s:\n{self.log.read_text()}")

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URI (what ``mlflow server
        --backend-store-uri`` takes; the driver named, as infra/mlflow's compose file does)."""
        import psycopg2

        connection = psycopg2.connect(self.dsn("postgres"))
        connection.autocommit = True  # CREATE DATABASE runs outside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return self.dsn(name).replace("postgresql://", "postgresql+psycopg2://", 1)

    def stop(self) -> None:
        if self.proc is not None:
            _end_group(self.proc, (signal.SIGKILL,))
            self.proc = None


#: Nothing reaches the network; the job runner (a pool of huey consumers) is not needed here
#: and would compete for the 2 CI cores.
SERVER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def running(pgid: int) -> list[int]:
    """Processes of group ``pgid`` still running (a zombie waits only for its reaper)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # a process may exit while we read
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if int(group) == pgid and state != "Z":
                pids.append(int(stat.parent.name))
    return pids


class MlflowServer:
    """`mlflow server` on one port over a store and artifact destination that outlive it.

    By default the store is ``root/mlflow.db`` (sqlite) and the artifacts ``root/artifacts``;
    a cluster's server takes ``backend`` (``postgresql://...``) and ``artifacts``
    (``s3://bucket/prefix``; the server process then needs the S3 endpoint and keys in ``env``).
    Either way the server serves the artifacts itself (``--serve-artifacts``): clients need
    only its URL.
    """

    def __init__(
        self,
        root: Path,
        port: int | None = None,
        backend: str | None = None,
        artifacts: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.backend = backend or f"sqlite:///{root / 'mlflow.db'}"
        self.artifacts = artifacts or str(root / "artifacts")
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def log(self, start: int) -> Path:
        return self.root / f"server-{start}.log"

    def start(self) -> MlflowServer:
        """Launch it; :meth:`wait_until_up` waits for it (boot takes seconds: overlap them)."""
        self.starts += 1
        cmd = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", self.backend,
            "--serve-artifacts", "--artifacts-destination", self.artifacts,
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        with self.log(self.starts).open("w") as log:
            # Its own process group: the CLI runs uvicorn as a child, and both must go.
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                env={**os.environ, **SERVER_ENV, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_until_up(self, timeout: float = 60.0) -> float:
        """Wait until /health answers; returns that moment (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited:\n{self.log(self.starts).read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                    if response.status == 200:
                        return time.time()
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"mlflow server not up in {timeout} s:\n{self.log(self.starts).read_text()}"
        )

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash would: no graceful shutdown, no orphans."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):  # the group outlives an exited leader
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        # uvicorn too: a survivor would hold the port the restarted server needs.
        deadline = time.monotonic() + 10
        while running(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(pgid), f"mlflow server processes left: {running(pgid)}"


RAY = str(Path(sys.executable).parent / "ray")


class RayCluster:
    """A head and worker nodes on 127.0.0.1, in a short private temp dir, without token auth
    (Ray would otherwise share a token file in ~/.ray with every other Ray session of this
    user). ``env`` is every node's environment (the S3 endpoint and keys, as a cluster's pods
    get them from their Secret)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Unix socket paths must stay under 108 bytes: pytest's tmp_path is too deep.
        self.temp = Path(tempfile.mkdtemp(prefix="segflow-ray-", dir="/tmp"))
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "disabled"}  # fmt: skip
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[dict] = []  # how each node was started: args, cwd, hide; and its proc

    def client_env(self) -> dict[str, str]:
        """What a driver (a stage) needs to join this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "disabled"}

    def start_head(self, num_cpus: int = 1, *extra: str) -> RayCluster:
        self._start(
            ["--head", f"--port={self.port}", f"--temp-dir={self.temp}",
             "--include-dashboard=false", f"--num-cpus={num_cpus}", *extra],
            cwd=None, hide=(),
        )  # fmt: skip
        self.wait_for_nodes(1)
        return self

    def add_node(
        self, num_cpus: int = 1, cwd: Path | None = None, hide: tuple[Path, ...] = ()
    ) -> int:
        """Start a worker node (``cwd``: its working directory; ``hide``: directories it sees
        empty); returns its index for :meth:`kill` and :meth:`restart`."""
        # A session directory of its own, as on another machine: two nodes tailing one logs
        # directory would forward every worker line to the driver twice.
        temp = self.temp / f"n{len(self.nodes)}"
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}", f"--temp-dir={temp}"]
        self._start(args, cwd, hide)
        self.wait_for_nodes(len(self.nodes))
        return len(self.nodes) - 1

    def _start(self, args: list[str], cwd: Path | None, hide: tuple[Path, ...]) -> None:
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        cmd = [RAY, "start", "--block", *args, *common]
        if hide:
            # A mount namespace of the node's own: the tmpfs mounts are invisible to the rest
            # of the machine, and the node's processes (raylet, workers) see only them.
            mounts = " && ".join(
                f"mount -t tmpfs -o size=1m segflow-hidden {shlex.quote(str(d))}" for d in hide
            )
            userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
            cmd = ["unshare", *userns, "--mount", "--propagation", "private",
                   "sh", "-c", f'{mounts} && exec "$@"', "sh", *cmd]  # fmt: skip
        log = (self.temp / f"node-{len(self.nodes)}.log").open("w")
        proc = subprocess.Popen(
            cmd, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.nodes.append({"args": args, "cwd": cwd, "hide": hide, "proc": proc})

    def alive(self) -> int:
        out = subprocess.run(
            [RAY, "status", f"--address={self.address}"], env=self.env, capture_output=True,
            text=True,
        )  # fmt: skip
        return out.stdout.count(" node_") if out.returncode == 0 else 0

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive() >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"the Ray cluster at {self.address} did not reach {count} nodes")

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``'s raylet and every process it started, as a lost machine."""
        _end_group(self.nodes[index]["proc"], (signal.SIGKILL,))

    def restart(self, index: int) -> None:
        """Start node ``index`` again as it was started (a replacement machine joining)."""
        node = self.nodes.pop(index)
        self._start(node["args"], node["cwd"], node["hide"])
        self.nodes.insert(index, self.nodes.pop())

    def stop(self) -> None:
        for node in reversed(self.nodes):
            _end_group(node["proc"], (signal.SIGTERM, signal.SIGKILL))
        shutil.rmtree(self.temp, ignore_errors=True)


def _end_group(proc: subprocess.Popen, signals: tuple[int, ...]) -> None:
    for sig in signals:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue
