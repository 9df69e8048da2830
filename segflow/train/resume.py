"""Which run the train stage trains: the one a kill interrupted, or a fresh one.

A ``kill -9`` (the OOM killer, a pre-empted node, a closed terminal) ends the stage without any
clean-up: its MLflow run stays RUNNING and its checkpoints stay in ``train.storage_path``. A
SIGTERM (eviction, ``docker stop``, Slurm pre-emption) ends it the same way on purpose: the
stage stops at its last checkpoint and leaves the run RUNNING, tagged
``segflow.interrupted=SIGTERM`` (:mod:`segflow.train.preemption`). The
next ``dvc repro`` starts the stage again, and this module decides what it does:

- the unfinished runs are found in MLflow: status RUNNING, started from this checkout, by a
  process that is gone (a run whose process still lives on this host is left alone);
- the latest of them is continued (same Ray run name, so training restarts after its last
  checkpoint, and the same MLflow run) when it trained with the same params (``seed``,
  ``loader``, ``train``) on the same shards and left a checkpoint; otherwise the stage starts a
  fresh run and says why in one line;
- every other unfinished run is marked KILLED, and its checkpoints are removed: nothing can
  resume it any more, and a killed run must not leave 100 MB behind each time.

Runs finished or failed long ago leave their checkpoints too: :func:`prune_runs` keeps the newest
``train.keep_runs`` of the stage's run directories.

The facts it needs are tags on the MLflow run (:func:`run_tags`), set when the stage starts.
Tags are untrusted input (anyone who can write to a shared tracking server can set them), and
one of them names a directory to resume or delete: a name is used only if it is a run name
params.yaml could hold (:data:`segflow.config.RUN_NAME_PATTERN`) and its directory, resolved,
lies inside ``train.storage_path``; anything else is ignored, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from segflow.config import RUN_NAME_PATTERN, Params
from segflow.storage import open_storage
from segflow.train.distributed import resolve_storage, with_run_name
from segflow.train.state import BEST, LAST

CHECKOUT_TAG = "segflow.checkout"
HOST_TAG = "segflow.host"
PID_TAG = "segflow.pid"
PARAMS_TAG = "segflow.train_params_sha256"
DATA_TAG = "shards_content_hash"
RAY_RUN_TAG = "segflow.ray_run_name"
#: Set (to the signal's name) on a run the stage stopped at a checkpoint to be continued.
INTERRUPTED_TAG = "segflow.interrupted"
#: The names :func:`segflow.train.distributed.default_run_name` gives the train stage's runs.
TRAIN_RUN_NAME = re.compile(r"train-\d{8}-\d{6}")
#: Files only a run directory holds: Ray Train's (its storage marker and checkpoint index) or
#: the local launcher's checkpoints.
RUN_MARKERS = (".validate_storage_marker", "checkpoint_manager_snapshot.json", LAST, BEST)


@dataclass
class RunPlan:
    """The run to train, and what was done about the runs that were interrupted."""

    params: Params  # with train.run_name set
    mlflow_run_id: str | None = None  # the interrupted MLflow run to continue, if any
    interrupted_by: str | None = None  # its INTERRUPTED_TAG: the signal that stopped it
    killed: list[str] = field(default_factory=list)  # MLflow runs marked KILLED
    note: str | None = None  # one line for the log when an interrupted run was found


def params_sha256(params: Params) -> str:
    """The params the train stage depends on (dvc.yaml: seed, loader, train), without the name
    and the retention of old runs (neither changes what is trained)."""
    train = params.train.model_dump(mode="json", exclude={"run_name", "keep_runs"})
    data = {"seed": params.seed, "loader": params.loader.model_dump(mode="json"), "train": train}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def checkout(root: str | Path = ".") -> str:
    return str(Path(root).resolve())


def run_tags(params: Params, root: str | Path = ".") -> dict[str, str]:
    """What a later stage run needs to recognise this run as its own and resumable."""
    return {
        CHECKOUT_TAG: checkout(root),
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        PARAMS_TAG: params_sha256(params),
        RAY_RUN_TAG: str(params.train.run_name),
    }


def _process_alive(run) -> bool:
    """Whether the process that started ``run`` still runs (only knowable on the same host)."""
    tags = run.data.tags
    if tags.get(HOST_TAG) != socket.gethostname():
        return False
    try:
        pid = int(tags.get(PID_TAG, ""))
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id: alive
        return True
    return True


def interrupted_runs(experiment_id: str, root: str | Path = ".") -> list:
    """RUNNING training runs of this checkout whose process is gone, newest first."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"attributes.status = 'RUNNING' and tags.`{CHECKOUT_TAG}` = '{checkout(root)}'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    return [run for run in runs if not _process_alive(run)]


def safe_run_name(name: str | None) -> str | None:
    """``name`` if it is a valid run name (no separators, no ``..``), else None."""
    if name and re.fullmatch(RUN_NAME_PATTERN, name):
        return name
    return None


def run_dir(params: Params, name: str) -> str:
    """``<storage>/<name>``, for a valid run name whose directory stays inside the storage.

    Raises ValueError otherwise: callers pass only names from :func:`safe_run_name`, and this
    check keeps a path built from a tag from ever pointing outside the storage root (a local
    storage's symlinks are resolved before comparing).
    """
    if safe_run_name(name) is None:
        raise ValueError(f"not a run name: {name!r}")
    storage = resolve_storage(params.train.storage_path).rstrip("/")
    path = f"{storage}/{name}"
    if "://" not in storage:
        root, resolved = Path(storage).resolve(), Path(path).resolve()
        if resolved.parent != root:
            raise ValueError(f"run directory {path} resolves outside {root}")
    return path


def _run_in_storage(params: Params, name: str):
    """(pyarrow filesystem, path) of run ``name``'s directory (:func:`run_dir` checks it)."""
    import pyarrow.fs as pafs

    run_dir(params, name)
    fs, root = open_storage(params.train.storage_path)
    return fs or pafs.LocalFileSystem(), f"{root}/{name}"


def has_checkpoint(params: Params, name: str) -> bool:
    """A checkpoint of run ``name`` in storage: Ray's ``epoch-*`` directories or ``last.pt``."""
    import pyarrow.fs as pafs

    fs, path = _run_in_storage(params, name)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return any(
        Path(info.path).name == LAST or Path(info.path).name.startswith("epoch-") for info in infos
    )


def remove_run(params: Params, name: str) -> None:
    """Delete run ``name``'s directory (checkpoints, Ray's state) from storage."""
    import pyarrow.fs as pafs

    fs, path = _run_in_storage(params, name)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def _inside_storage(params: Params, name: str) -> bool:
    try:
        run_dir(params, name)
    except ValueError:
        return False
    return True


def _mismatch(run, params: Params, index: dict) -> str | None:
    """Why ``run`` cannot be continued with these params and shards, or None if it can."""
    tags = run.data.tags
    if tags.get(PARAMS_TAG) != params_sha256(params):
        return "trained with other params (seed, loader or train changed)"
    if tags.get(DATA_TAG) != index.get("content_hash", "unknown"):
        return "trained on other data (the shards' content hash changed)"
    return None


def plan_run(params: Params, index: dict, experiment_id: str, root: str | Path = ".") -> RunPlan:
    """Continue the latest interrupted run if it matches; mark the others KILLED.

    With ``train.run_name`` set, the user chose the run: an interrupted MLflow run of that name
    is continued; interrupted runs of other names are marked KILLED all the same.
    """
    import mlflow

    orphans = interrupted_runs(experiment_id, root)
    chosen, note = None, None
    named = params.train.run_name
    if named:
        chosen = next((r for r in orphans if r.data.tags.get(RAY_RUN_TAG) == named), None)
    elif orphans:
        latest = orphans[0]
        name = safe_run_name(latest.data.tags.get(RAY_RUN_TAG))
        why = _mismatch(latest, params, index)
        if why is None and name is None:
            why = f"has no valid run name (tag {RAY_RUN_TAG}); it is not resumed or deleted"
        if why is None and not _inside_storage(params, name):
            why = f"names a run directory outside {params.train.storage_path}"
        if why is None and not has_checkpoint(params, name):
            why = "left no checkpoint"
        if why is None:
            chosen = latest
            train = params.train.model_copy(update={"run_name": name})
            params = params.model_copy(update={"train": train})
        else:
            shown = latest.data.tags.get(RAY_RUN_TAG, "")
            note = f"train: starting a fresh run: the interrupted run {shown!r} {why}"
    interrupted_by = None
    if chosen is not None:
        interrupted_by = chosen.data.tags.get(INTERRUPTED_TAG)
        how = f", stopped by {interrupted_by}" if interrupted_by else ""
        note = (
            f"train: continuing the interrupted run {params.train.run_name!r} "
            f"(MLflow run {chosen.info.run_id}{how})"
        )
    client = mlflow.MlflowClient()
    killed = []
    for run in orphans:
        if run is chosen:
            continue
        client.set_terminated(run.info.run_id, "KILLED")
        killed.append(run.info.run_id)
        name = safe_run_name(run.data.tags.get(RAY_RUN_TAG))
        if name and name != params.train.run_name and _inside_storage(params, name):
            remove_run(params, name)
    return RunPlan(
        with_run_name(params, "train"),
        chosen.info.run_id if chosen is not None else None,
        interrupted_by,
        killed,
        note,
    )


def prune_runs(params: Params, keep: int, protect: str | None = None) -> list[str]:
    """Delete all but the newest ``keep`` of the train stage's run directories (by modification
    time; ``protect``, the run about to be trained, always stays); returns the names deleted.

    Only what is certainly a run directory segflow's train stage made is ever touched: a real
    directory (not a symlink) directly inside a local ``train.storage_path`` (:func:`run_dir`),
    named as the stage names its runs, holding Ray Train's or the local launcher's files. A run
    named in params.yaml, another stage's runs (``search-*``, Tune's) and anything else in
    the storage stay. Deleting removes links inside a run, never what they point to. Object
    stores (``s3://``) are left to their own lifecycle rules (nothing is deleted there; the
    train stage says so in its log): an object store has no directories or symlinks to check,
    only key prefixes.
    """
    storage = resolve_storage(params.train.storage_path)
    root = Path(storage)
    if "://" in storage or not root.is_dir():
        return []
    runs = []
    for entry in root.iterdir():
        name = safe_run_name(entry.name)
        if name is None or not TRAIN_RUN_NAME.fullmatch(name) or name == protect:
            continue
        if entry.is_symlink() or not entry.is_dir() or not _inside_storage(params, name):
            continue
        if any(os.path.lexists(entry / marker) for marker in RUN_MARKERS):
            runs.append((entry.lstat().st_mtime, name))
    runs.sort(reverse=True)
    doomed = [name for _, name in runs[keep:]]
    for name in doomed:
        shutil.rmtree(run_dir(params, name))  # rmtree unlinks symlinks, never follows them
    return doomed
