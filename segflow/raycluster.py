"""Where segflow's Ray work runs: the cluster in $RAY_ADDRESS, else a Ray started here.

Training, the CRF over a split and the sweeps all call :func:`connect_ray`, so the same command
runs on a laptop and on a cluster (``RAY_ADDRESS=ray://head:10001 dvc repro``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: Ray reads the GCS port of a Ray it starts from this variable (ray._private.node).
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def connect_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in $RAY_ADDRESS, else start a local Ray; reuse one already started."""
    import ray  # heavy: only the stages that use Ray pay for it

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # Cluster nodes may not have this checkout: ship the segflow package with the job.
        package = Path(__file__).resolve().parent
        ray.init(address=address, runtime_env={"py_modules": [str(package)]}, log_to_driver=True)
    else:
        start_local_ray(num_cpus)


def start_local_ray(num_cpus: int | None = None) -> None:
    """A Ray of our own on this host, whose processes know its address.

    Ray's state API (which Ray Train's placement-group cleaner calls in a detached actor) finds
    "the" local Ray by listing every GCS process on the host; with another user's Ray running
    beside ours it finds two and raises, a 30-line traceback in every training log. So the GCS
    port is chosen here and handed to every worker as RAY_ADDRESS; the driver's own environment
    stays as it was, so a later ``ray.init`` in this process starts afresh.
    """
    import ray
    from ray._private.services import get_node_ip_address

    port = _free_port()
    saved = os.environ.get(GCS_PORT_ENV)
    os.environ[GCS_PORT_ENV] = str(port)
    try:
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            runtime_env={"env_vars": {"RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}},
            # Without the dashboard, Ray Train's placement-group cleaner cannot reach the state
            # API and warns every few seconds; errors still show, progress lines are stdout.
            logging_config=ray.LoggingConfig(log_level="ERROR"),
        )
    finally:
        if saved is None:
            os.environ.pop(GCS_PORT_ENV, None)
        else:
            os.environ[GCS_PORT_ENV] = saved
