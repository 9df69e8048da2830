"""Where segflow's Ray work runs: the cluster in $RAY_ADDRESS, else a Ray started here.

Training, the CRF over a split and the sweeps all call :func:`connect_ray`, so the same command
runs on a laptop and on a cluster (``RAY_ADDRESS=ray://head:10001 dvc repro``).
"""

from __future__ import annotations

import os
from pathlib import Path


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
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            # Without the dashboard, Ray Train's placement-group cleaner cannot reach the state
            # API and warns every few seconds; errors still show, progress lines are stdout.
            logging_config=ray.LoggingConfig(log_level="ERROR"),
        )
