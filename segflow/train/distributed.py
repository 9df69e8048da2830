"""The one Ray Train launcher: a per-worker function on N workers with DDP, checkpoints, restarts.

Training (:mod:`segflow.train.run`) and the architecture search (:mod:`segflow.search.run`) both
run their plain-PyTorch core loop through it. Ray is a thin shell:

* driver side, :func:`launch` builds the ``TorchTrainer`` from a :class:`RayRunParams` section
  (workers, CPUs/GPUs per worker, ``storage_path``, ``run_name``, ``max_failures``), runs it,
  and turns a failure into one exception naming the run; an object-store ``storage_path``
  (``s3://``, :mod:`segflow.storage`) is checked first and handed to Ray as a filesystem, so a
  worker on any node writes checkpoints there and a restarted one reads them back;
* worker side, :func:`worker_context` gives the rank, world size and device (Ray Train has set
  up torch.distributed: gloo on CPU, NCCL on GPU), :func:`resume_payload` the checkpoint to
  continue from, and :func:`report_epoch` reports an epoch, rank 0 attaching the checkpoint.

``CheckpointConfig`` keeps one checkpoint (the best by ``score`` when given; Ray always keeps
the latest too); ``FailureConfig`` restarts a crashed worker group from the latest one, and
rerunning with the same ``run_name`` + ``storage_path`` resumes a stopped run the same way.
Checkpoints are plain tensors and containers, saved with ``torch.save`` and read back with
``weights_only=True`` (:func:`segflow.models.checkpoint.read_checkpoint`): a file planted in the
storage cannot run code. The local launcher's directory (no Ray) is :func:`local_run_dir`.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segflow.config import Params, RayRunParams
from segflow.errors import SegflowError
from segflow.logs import is_verbose, quiet_ray_train_worker
from segflow.models.checkpoint import read_checkpoint
from segflow.raycluster import connect_ray
from segflow.storage import check_storage, display, open_storage

Echo = Callable[[str], None]


def echo_line(line: str) -> None:
    """A progress line on stdout, flushed.

    Not print(): Ray Train patches print in its workers to log *and* tee each line, which
    shows every progress line twice in the driver's log.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# -- names and places --------------------------------------------------------------------------


def default_run_name(section: str) -> str:
    return time.strftime(f"{section}-%Y%m%d-%H%M%S")


def with_run_name(params: Params, section: str) -> Params:
    """``params`` with ``<section>.run_name`` set (a fresh time-stamped name when it is null).

    ``section`` is a params section with a Ray run: ``train`` or ``search``.
    """
    current = getattr(params, section)
    if current.run_name:
        return params
    named = current.model_copy(update={"run_name": default_run_name(section)})
    return params.model_copy(update={section: named})


def resolve_storage(storage_path: str) -> str:
    """A URI (s3://, gs://, ...) as is; a local path made absolute (Ray requires it)."""
    if "://" in storage_path:
        return storage_path
    return str(Path(storage_path).expanduser().resolve())


def local_run_dir(p: RayRunParams, section: str, run_name: str) -> Path:
    """The run directory of the local launcher: ``<storage_path>/<run_name>`` on this disk."""
    if "://" in p.storage_path:
        raise SegflowError(
            f"params.yaml: {section}.storage_path: {p.storage_path!r}: the local launcher "
            f"({section}.launcher: local) needs a local directory"
        )
    return Path(resolve_storage(p.storage_path)) / run_name


# -- what can be checked before any worker starts ----------------------------------------------


def check_workers(
    p: RayRunParams, section: str, num_samples: int, batch_size: int, source: str
) -> None:
    """Each of the ``section.num_workers`` workers must get a full batch of the ``num_samples``
    it shares (``source`` says which samples), and a local GPU run needs a GPU here.

    The part of a stage's preflight that train and search share: both would otherwise fail
    inside every worker, after Ray has started.
    """
    per_rank = math.ceil(num_samples / p.num_workers)
    if per_rank < batch_size:
        raise SegflowError(
            f"params.yaml: {section}.batch_size: {batch_size} is more than the {per_rank} "
            f"samples each of the {p.num_workers} worker(s) gets from {source}"
        )
    if p.use_gpu and p.launcher == "local" and not torch.cuda.is_available():
        raise SegflowError(f"params.yaml: {section}.use_gpu: true but this machine has no CUDA GPU")


def check_cluster(p: RayRunParams, section: str, data_cpus: int = 0) -> None:
    """More workers than the cluster can place would wait forever: fail now, naming the field.

    ``data_cpus``: CPUs the run needs beside its workers' (Ray Data's decoding tasks with
    ``loader.backend: ray_data``); without one free CPU those tasks never start.
    """
    import ray

    have = ray.cluster_resources()
    need = p.num_workers * p.cpus_per_worker
    if data_cpus and have.get("CPU", 0) < need + data_cpus:
        raise SegflowError(
            f"params.yaml: loader.backend: ray_data decodes in Ray tasks beside the "
            f"{section} workers, but their {section}.num_workers x {section}.cpus_per_worker = "
            f"{need} CPUs leave none of the Ray cluster's {have.get('CPU', 0):g} (add CPUs or "
            f"nodes, or use fewer workers)"
        )
    for kind, per_worker, used in (
        ("CPU", p.cpus_per_worker, True),
        ("GPU", p.gpus_per_worker, p.use_gpu),
    ):
        need = p.num_workers * per_worker
        if used and have.get(kind, 0) < need:
            raise SegflowError(
                f"params.yaml: {section}.num_workers x {section}.{kind.lower()}s_per_worker = "
                f"{p.num_workers} x {per_worker:g} = {need:g} {kind}s, but the Ray cluster has "
                f"{have.get(kind, 0):g}"
            )


# -- worker side -------------------------------------------------------------------------------


def worker_context(config: dict, threads: int) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this Ray Train worker, with its torch thread count set.

    Quiets Ray Train's per-report log line unless the driver was verbose (a worker on another
    node has not got the driver's environment, so :func:`launch` passes the flag in ``config``).
    """
    import ray.train
    import ray.train.torch

    if not config.get("verbose"):
        quiet_ray_train_worker()
    torch.set_num_threads(threads)
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the DDP bucket allocations use the current one
    return ctx.get_world_rank(), ctx.get_world_size(), device


def resume_payload(filename: str) -> dict | None:
    """The checkpoint this worker (re)starts from: Ray's latest, after a crash or for a named
    run being resumed; None for a fresh run."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return read_checkpoint(Path(d) / filename)


def report_epoch(metrics: dict, epoch: int, payload: dict | None, filename: str) -> None:
    """Report one epoch's metrics; with ``payload`` (rank 0 only) attach it as the checkpoint
    ``epoch-NNNN/<filename>``. Every rank must call this once per epoch."""
    import ray.train

    if payload is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        torch.save(payload, Path(d) / filename)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"epoch-{epoch:04d}",
        )


# -- driver side -------------------------------------------------------------------------------


@dataclass
class RayRun:
    """A finished Ray Train run: where it is, rank 0's return value, its checkpoints."""

    name: str
    path: str
    value: dict  # {} when a resumed run had already finished (no epoch ran)
    best: Any  # ray.train.Checkpoint | None: the best by score (None without a score)
    latest: Any  # ray.train.Checkpoint | None

    def read(self, checkpoint: Any, filename: str) -> dict:
        """The payload of one of this run's checkpoints (``weights_only=True``)."""
        if checkpoint is None:
            raise RuntimeError(f"run {self.name!r} reported no checkpoint")
        with checkpoint.as_directory() as d:
            return read_checkpoint(Path(d) / filename)

    def copy(self, checkpoint: Any, filename: str, dst: Path) -> Path:
        """Copy one checkpoint's file to ``dst`` (atomically); returns ``dst``."""
        import shutil

        from segflow.io import atomic_path

        if checkpoint is None:
            raise RuntimeError(f"run {self.name!r} reported no checkpoint")
        dst.parent.mkdir(parents=True, exist_ok=True)
        with checkpoint.as_directory() as d, atomic_path(dst) as tmp:
            shutil.copyfile(Path(d) / filename, tmp)
        return dst


def launch(
    worker: Callable[[dict], dict],
    config: dict,
    p: RayRunParams,
    section: str,
    run_name: str,
    *,
    score: str | None = None,
    echo: Echo = echo_line,
    data_cpus: int = 0,
) -> RayRun:
    """Run ``worker(config)`` on ``p.num_workers`` Ray Train workers; the run named
    ``run_name`` under ``p.storage_path`` is resumed from its latest checkpoint if it exists.

    ``score`` is the reported metric the kept checkpoint is chosen by (higher is better);
    ``data_cpus`` the CPUs the run needs beside its workers' (:func:`check_cluster`).
    A failed run raises RuntimeError naming it (after ``max_failures`` restarts).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    check_storage(p.storage_path, f"{section}.storage_path")
    connect_ray()
    check_cluster(p, section, data_cpus)
    filesystem, storage = open_storage(p.storage_path)
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = p.gpus_per_worker
    keep = ray.train.CheckpointConfig(num_to_keep=1)
    if score is not None:
        keep = ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=score, checkpoint_score_order="max"
        )
    trainer = TorchTrainer(
        worker,
        train_loop_config={**config, "verbose": is_verbose()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=p.max_failures),
            checkpoint_config=keep,
            # Ray Train's per-report INFO lines would drown the progress lines in a CI log.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    each = ", ".join(f"{amount:g} {name}" for name, amount in resources.items())
    where = display(p.storage_path, storage)
    echo(f"{section}: ray run {run_name!r} in {where}: {p.num_workers} worker(s), {each} each")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise RuntimeError(f"{section} run {run_name!r} failed: {exc}") from exc
    if result.error is not None:
        raise RuntimeError(f"{section} run {run_name!r} failed: {result.error}")
    # No checkpoint at all: a worker function that returned before its first report (a run
    # that diverged in its first epoch); the caller reads why from the return value.
    has_checkpoint = result.checkpoint is not None
    best = result.get_best_checkpoint(score, "max") if score and has_checkpoint else None
    path = display(p.storage_path, str(result.path))
    return RayRun(run_name, path, result.return_value or {}, best, result.checkpoint)
