"""Scheduled retraining: new data -> ``dvc repro`` -> promotion gate -> one audit record.

``segflow retrain`` (pipelines/retrain.py) is what a scheduler runs in the project checkout:

1. Bring the data to its latest version: ``dvc update`` of the targets in ``retrain.update``
   (imported data sources) and ``dvc pull`` when ``retrain.pull``; a ``folder`` dataset needs
   neither (new files in its root are a changed dependency of the ingest stage), nor does the
   synthetic default (its params are the synthesize stage's).
2. Run the data stages (``dvc repro shard``) and compare the shards' content hash with the data
   the newest registered version was trained on. Equal: no new data, nothing is retrained.
3. Otherwise ``dvc repro``: DVC re-runs only the stages whose inputs changed, through train,
   evaluate and register, where the gate scores the new model and the champion on the same
   images of its decision split (``gate.split``: dev, else val; never test) and promotes only
   on a paired-bootstrap interval above ``gate.min_gain``.
4. Append the audit record (time, data hash, code commit, the decision split (name, hash,
   size), both scores on it and the interval, the decision, the test figures for information,
   the MLflow run and model version) to reports/retrain_log.jsonl and, as tags, to an
   MLflow run of experiment ``retrain.experiment`` (one run per attempt) and to the training run.

A failing stage stops the flow: the champion alias is only ever moved by the register stage,
so it stays where it was; the record says which stage failed and the exit code is 1. A lock
file (``reports/retrain.lock``, an flock the kernel releases when the process dies, so a crash
leaves no stale lock) makes a second retrain exit at once with code 75 (EX_TEMPFAIL). So does
DVC's own lock: another ``dvc`` command running in the checkout (a ``dvc repro`` by hand) makes
DVC refuse, and the attempt is recorded as ``locked``, not as a failure, and exits 75 too.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segflow.config import Params, load_params
from segflow.data.shards import read_index
from segflow.errors import SegflowError
from segflow.io import read_json
from segflow.logs import console, print_error
from segflow.paths import PARAMS, REGISTRY_RECORD, RETRAIN_LOCK, RETRAIN_LOG, SHARDS

EXIT_OK, EXIT_FAILED, EXIT_LOCKED = 0, 1, 75
NO_NEW_DATA, FAILED, LOCKED = "no_new_data", "failed", "locked"
#: DVC's refusals while another dvc process holds the repository (.dvc/tmp/lock) or a stage's
#: paths (.dvc/tmp/rwlock): "Unable to acquire lock. Most likely another DVC process is
#: running ..." and "'<path>' is busy, it is being blocked by: (PID n): dvc repro".
DVC_LOCKED = re.compile(r"Unable to acquire lock|is busy, it is being blocked by")
#: The stages up to and including the shards: what "new data" is measured on.
DATA_TARGET = "shard"


class RetrainLocked(SegflowError):
    """Another retrain holds the lock."""


class StageFailed(SegflowError):
    def __init__(self, message: str, stage: str | None) -> None:
        super().__init__(message)
        self.stage = stage


class DvcLocked(StageFailed):
    """Another dvc process holds the checkout: nothing failed, try again later."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextmanager
def retrain_lock(path: str | Path = RETRAIN_LOCK) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block; raise RetrainLocked if it is taken.

    The file stays (removing it would let a third process lock a new inode while the second
    still waits on the old one); it holds who has the lock, for the refusal message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "unknown process"
            raise RetrainLocked(
                f"{path}: another retrain is running ({holder}); this one does nothing. "
                "Retry when it has finished."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _dvc_env() -> dict[str, str]:
    # Stage commands are `python pipelines/...`: the python of this environment, also when a
    # scheduler runs .venv/bin/segflow with a PATH that does not include .venv/bin.
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}


def dvc(*args: str) -> list[str]:
    """Run ``dvc args`` here, echo its output as it comes, return the output lines.

    A non-zero exit is a StageFailed naming the stage DVC reports (``failed to reproduce
    'train'``) and DVC's last error lines.
    """
    exe = Path(sys.executable).parent / "dvc"
    cmd = [str(exe) if exe.exists() else "dvc", *args]
    print(f"retrain: $ {' '.join(['dvc', *args])}", flush=True)
    proc = subprocess.Popen(
        cmd, env=_dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line.rstrip("\n"))
    sys.stdout.flush()
    if proc.wait() != 0:
        text = "\n".join(lines)
        stage = re.findall(r"failed to reproduce '([^']+)'", text)
        errors = [ln for ln in lines if ln.startswith("ERROR") or ln.startswith("error:")]
        detail = "; ".join(errors[-3:]) or (lines[-1] if lines else "no output")
        failed = DvcLocked if DVC_LOCKED.search(text) else StageFailed
        raise failed(f"dvc {' '.join(args)} exited with {proc.returncode}: {detail}",
                     stage[-1] if stage else None)  # fmt: skip
    return lines


def stages_run(lines: list[str]) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", "\n".join(lines))


def update_data(params: Params) -> list[str]:
    """Step 1: ``dvc update`` each of ``retrain.update``, ``dvc pull`` when ``retrain.pull``."""
    lines: list[str] = []
    for target in params.retrain.update:
        if not Path(target).exists():
            raise StageFailed(f"retrain.update: {target}: no such .dvc file", "update")
        lines += dvc("update", target)
    if params.retrain.pull:
        lines += dvc("pull")
    return lines


def _latest_data_hash(name: str) -> tuple[str | None, str | None]:
    """(version, data hash) of the newest registered version of ``name``, or (None, None)."""
    import mlflow

    from segflow.lifecycle.registration import DATA_HASH, latest_version
    from segflow.tracking import store_errors, tracking_uri

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_errors(uri):
        latest = latest_version(name)
    if latest is None:
        return None, None
    return str(latest.version), latest.tags.get(DATA_HASH)


def _champion(name: str) -> str | None:
    from segflow.lifecycle.registration import champion_version
    from segflow.tracking import store_errors

    with store_errors():
        current = champion_version(name)
    return None if current is None else str(current.version)


def _gate_fields(registry: dict) -> dict:
    """The audit fields of the register stage's record: version, the decision split (name,
    hash, size), both scores and the interval on it, the decision, and the test figures for
    information (they decide nothing)."""
    d = registry["decision"]
    boot = d.get("bootstrap") or {}
    test = d.get("test") or {}
    return {
        "decision": d["decision"],
        "reason": d["reason"],
        "model_version": registry["version"],
        "mlflow_run_id": registry["mlflow_run_id"],
        "champion_before": d.get("champion_before"),
        "champion_after": d.get("champion_after"),
        "decision_split": d.get("split"),
        "decision_split_hash": d.get("split_hash"),
        "decision_images": d.get("num_images"),
        "decision_groups": d.get("num_groups"),
        "new_miou": boot.get("new_miou"),
        "champion_miou": boot.get("old_miou"),
        "miou_diff": boot.get("diff"),
        "ci_low": boot.get("low"),
        "ci_high": boot.get("high"),
        "confidence": boot.get("confidence"),
        "bootstrap_samples": boot.get("samples"),
        "min_gain": d.get("min_gain"),
        "min_images": d.get("min_images"),
        "test_split_hash": test.get("test_split_hash"),
        "test_miou": test.get("test_miou", d.get("test_miou")),
        "champion_test_miou": test.get("champion_test_miou"),
    }


def retrain(params: Params) -> dict:
    """Steps 1-3 in the working directory; the audit record (also for a failure)."""
    from segflow.lifecycle.registration import registered_name
    from segflow.tracking import git_commit

    record: dict = {"time": _now(), "code_commit": git_commit(), "retrained": False}
    start = time.monotonic()
    ran: list[str] = []
    try:
        ran += stages_run(update_data(params))
        ran += stages_run(dvc("repro", DATA_TARGET))
        index = read_index(SHARDS)
        data_hash = str(index["content_hash"])
        name = registered_name(str(index.get("dataset", params.dataset.name)),
                               params.register.model_name_prefix)  # fmt: skip
        last_version, last_hash = _latest_data_hash(name)
        record.update(data_hash=data_hash, model_name=name, previous_data_hash=last_hash)
        if last_hash == data_hash:
            record.update(
                decision=NO_NEW_DATA,
                reason=f"no new data: shards {data_hash[:12]} are what {name} v{last_version} "
                "was trained on; nothing retrained",
                model_version=last_version,
                champion_after=_champion(name),
            )
        else:
            ran += stages_run(dvc("repro"))
            registry = read_json(REGISTRY_RECORD, "the register stage did not write it")
            if registry.get("data_hash") != data_hash:
                raise StageFailed(
                    f"{REGISTRY_RECORD}: describes data {registry.get('data_hash')!s:.12}, not "
                    f"{data_hash:.12}; the register stage did not run for the new data", "register"
                )  # fmt: skip
            record.update(_gate_fields(registry), retrained=True)
    except DvcLocked as exc:
        record.update(decision=LOCKED, reason=f"another dvc process holds this checkout: {exc}")
    except StageFailed as exc:
        record.update(decision=FAILED, reason=str(exc), failed_stage=exc.stage)
    except SegflowError as exc:
        record.update(decision=FAILED, reason=str(exc), failed_stage=None)
    record["stages_run"] = ran
    record["duration_s"] = round(time.monotonic() - start, 1)
    return record


def append_record(record: dict, path: str | Path = RETRAIN_LOG) -> None:
    """One JSON line per attempt; appended with one write, so a crash cannot leave half a line
    after a complete one, and earlier lines are never rewritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def tag_mlflow(record: dict, experiment: str) -> str:
    """One MLflow run per attempt in ``experiment`` whose tags are the record (``retrain.*``);
    the same tags on the training run the attempt produced. Returns the audit run's id."""
    import mlflow

    from segflow.tracking import setup

    experiment_id = setup(experiment)
    client = mlflow.MlflowClient()
    tags = {f"retrain.{k}": json.dumps(v) if isinstance(v, list) else str(v)
            for k, v in record.items()}  # fmt: skip
    run = client.create_run(experiment_id, run_name=f"retrain-{record['time']}", tags=tags)
    status = "FAILED" if record["decision"] == FAILED else "FINISHED"
    client.set_terminated(run.info.run_id, status=status)
    if record.get("retrained") and record.get("mlflow_run_id"):
        for key, value in tags.items():
            client.set_tag(record["mlflow_run_id"], key, value)
        client.set_tag(record["mlflow_run_id"], "retrain.audit_run_id", run.info.run_id)
    return run.info.run_id


def run_retrain(params_path: str | Path = PARAMS) -> int:
    """The whole flow under the lock; prints the decision; returns the exit code."""
    try:
        with retrain_lock(RETRAIN_LOCK):
            params = load_params(params_path)
            # The stages read it from the same params.yaml; this is for the flow's own calls.
            os.environ.update(params.mlflow.environ())
            record = retrain(params)
            try:
                record["mlflow_audit_run_id"] = tag_mlflow(record, params.retrain.experiment)
            except Exception as exc:  # the JSONL record must be written whatever MLflow does
                record["mlflow_audit_run_id"] = None
                record["mlflow_error"] = f"{type(exc).__name__}: {exc}"
            append_record(record)
    except RetrainLocked as exc:
        print_error(str(exc))
        return EXIT_LOCKED
    except SegflowError as exc:  # params that do not load: nothing ran, nothing to record
        print_error(str(exc))
        return EXIT_FAILED
    summary = f"retrain: {record['decision']}: {record['reason']} -> {RETRAIN_LOG}"
    if record["decision"] == LOCKED:
        print_error(summary)
        return EXIT_LOCKED
    if record["decision"] == FAILED:
        print_error(summary)
        return EXIT_FAILED
    console.print(summary)
    return EXIT_OK
