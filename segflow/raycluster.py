"""Where segflow's Ray work runs: the cluster in $RAY_ADDRESS, else a Ray started here.

Training, the CRF over a split and the sweeps all call :func:`connect_ray`, so the same command
runs on a laptop and on a cluster (``RAY_ADDRESS=ray://head:10001 dvc repro``).

Every worker process of segflow's Ray job is set up the same way (:func:`worker_runtime_env`):

- at the driver's priority. Ray's core worker calls ``nice(worker_niceness)`` when a worker
  process starts (``core_worker.cc``: "Adjusted worker niceness to 15"), and its
  ``worker_niceness`` config defaults to 15, so every other process on the node (a Tune trial,
  a CRF pool, a notebook) took the CPU from training. Ray reads the config from the
  worker's ``RAY_worker_niceness`` variable, which the job's runtime_env sets to 0 (Ray's job
  supervisor does the same for its own actor); set it in the environment to choose another;
- without "Exception ignored ... SystemExit: 1" in the stage's log (:func:`worker_process_setup`);
- without Ray Train's pre-emption watcher (:data:`PREEMPTION_WATCHER_ENV`). Ray Train 2.60 starts
  one actor per worker group that polls for draining nodes and only logs what it sees (and hands
  it to ``ray.train.get_preemption_info()``, which segflow does not read: a lost node is a
  worker failure, restarted from the last checkpoint). Creating it made Ray's C++ core print an
  ERROR line into every training log (``core_worker.cc ... Actor with class name:
  'PreemptionWatcher' ... has constructor arguments in the object store and max_restarts > 0``,
  about a restart that never happens here). ``RAY_BACKEND_LOG_LEVEL`` cannot hide only that line
  and makes every Ray process print one of its own; not starting the actor removes it. Export
  ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1`` to have it back.

The driver prints what Ray forwards from the workers: without colour codes around Ray's
``(pid=...)`` prefixes when its stdout is not a terminal (a CI log, ``| tee``, a file), where
they would show as ``[36m ... [0m`` (:func:`connect_ray` sets ``RAY_COLOR_PREFIX=0``).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from pathlib import Path

#: Ray reads the GCS port of a Ray it starts from this variable (ray._private.node).
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"
#: Ray's config of the niceness its worker processes add to their own (Ray's default: 15).
WORKER_NICENESS_ENV = "RAY_worker_niceness"
#: Ray Train's switch of its per-worker-group pre-emption watcher actor (Ray's default: on).
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
#: Ray's switch of the colour codes around the prefixes of forwarded worker lines.
COLOR_PREFIX_ENV = "RAY_COLOR_PREFIX"


def worker_runtime_env() -> dict:
    """The part of the job's runtime_env that sets up each of its worker processes (Ray Train's
    controller, which reads the watcher switch, is one of them). A value exported in the
    driver's environment wins over segflow's."""
    return {
        "env_vars": {
            WORKER_NICENESS_ENV: os.environ.get(WORKER_NICENESS_ENV, "0"),
            PREEMPTION_WATCHER_ENV: os.environ.get(PREEMPTION_WATCHER_ENV, "0"),
        },
        "worker_process_setup_hook": f"{__name__}.worker_process_setup",
    }


def worker_process_setup() -> None:
    """Run by Ray in each worker process of segflow's job, before its first task.

    The raylet ends a worker it no longer needs (a Tune trial's actor, once its placement group
    is removed) with SIGTERM, then SIGKILL 200 ms later. Ray's worker handler raises SystemExit
    wherever the worker is; when that is inside a weakref callback or ``__del__`` (the garbage
    collector runs them often), Python cannot raise it and prints "Exception ignored in: ...
    SystemExit: 1" with a traceback, which Ray forwards to the driver's log. The worker is being
    ended either way: that report, and only that one, is dropped.
    """
    default = sys.unraisablehook

    def hook(unraisable) -> None:  # noqa: ANN001 (sys.UnraisableHookArgs)
        if isinstance(unraisable.exc_value, SystemExit):
            return
        default(unraisable)

    sys.unraisablehook = hook


def _is_terminal(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def connect_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in $RAY_ADDRESS, else start a local Ray; reuse one already started.

    ``ray.init`` replaces the process's SIGTERM handler with its own ``sys.exit``; a handler
    the caller installed (the train stage's pre-emption) is put back.
    """
    import ray  # heavy: only the stages that use Ray pay for it

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network at run time
    if not _is_terminal(sys.stdout):
        # Read by the driver each time it prints a forwarded line (ray._private.worker).
        os.environ.setdefault(COLOR_PREFIX_ENV, "0")
    if ray.is_initialized():
        return
    sigterm = signal.getsignal(signal.SIGTERM)
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # Cluster nodes may not have this checkout: ship the segflow package with the job.
        package = Path(__file__).resolve().parent
        runtime_env = {"py_modules": [str(package)], **worker_runtime_env()}
        if "://" not in address and address != "auto":
            # The GCS address itself: the job's workers join this cluster by it, whatever other
            # Ray runs on their host (Ray's state API, which Ray Train's placement-group cleaner
            # calls, otherwise looks for "the" local Ray and fails when it finds two).
            runtime_env["env_vars"]["RAY_ADDRESS"] = address
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        start_local_ray(num_cpus)
    if callable(sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)


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
    runtime_env = worker_runtime_env()
    runtime_env["env_vars"]["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
    try:
        ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            runtime_env=runtime_env,
            # Without the dashboard, Ray Train's placement-group cleaner cannot reach the state
            # API and warns every few seconds; errors still show, progress lines are stdout.
            logging_config=ray.LoggingConfig(log_level="ERROR"),
        )
    finally:
        if saved is None:
            os.environ.pop(GCS_PORT_ENV, None)
        else:
            os.environ[GCS_PORT_ENV] = saved
