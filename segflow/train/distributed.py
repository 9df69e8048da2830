"""Ray Train wiring: the core loop of loop.py on N workers with DDP, checkpoints and restarts.

Ray is a thin shell here. Each worker runs :func:`segflow.train.loop.train_epochs` unchanged;
Ray Train has already set up torch.distributed (gloo on CPU, NCCL on GPU), so the loop wraps the
model in DDP and each rank reads its own part of the shards through the rank-split
``ShardDataset``. After every epoch the workers call ``ray.train.report`` with the epoch's
metrics and rank 0 attaches a checkpoint (model, optimizer, LR schedule, epoch, best mIoU and
history). ``CheckpointConfig`` keeps the best by val mIoU and Ray always keeps the latest;
``FailureConfig`` restarts a crashed worker group from that latest checkpoint, and rerunning
with the same ``run_name`` + ``storage_path`` resumes a stopped run the same way.

Everything that can be checked before a worker starts is checked in :func:`preflight`, so a bad
model name, too few samples or too small a cluster is one SegflowError, not a worker traceback.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from segflow.config import Params
from segflow.data.shards import read_index
from segflow.errors import SegflowError
from segflow.io import atomic_path
from segflow.logs import is_verbose, quiet_ray_train_worker
from segflow.raycluster import connect_ray
from segflow.train import loop

CHECKPOINT_FILE = "checkpoint.pt"
SCORE = "val_miou"
#: Test hook (real code path): rank 0 exits hard after reporting this epoch, once per attempt
#: that reaches it, to exercise FailureConfig recovery.
FAIL_AFTER_EPOCH_ENV = "SEGFLOW_FAIL_AFTER_EPOCH"

Echo = Callable[[str], None]


@dataclass
class TrainOutcome:
    """What a finished training hands to the stage: history, best checkpoint, where it ran."""

    history: list[dict]
    best_checkpoint: Path  # a local copy of the best epoch's checkpoint file
    run_name: str
    run_path: str
    node_ids: list[str] = field(default_factory=list)
    #: Epochs already done when the final attempt started: 0 for a run that never restarted,
    #: k after a worker crash (FailureConfig) or a resumed named run.
    resumed_from: int = 0


def _echo(line: str) -> None:
    # Not print(): Ray Train patches print in its workers to log *and* tee each line, which
    # shows every progress line twice in the driver's log.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def default_run_name(section: str = "train") -> str:
    return time.strftime(f"{section}-%Y%m%d-%H%M%S")


def with_run_name(params: Params, section: str = "train") -> Params:
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


def preflight(params: Params, shard_dir: Path) -> dict:
    """Check what would otherwise fail inside every worker; returns the shard index."""
    p = params.train
    index = read_index(shard_dir)
    splits = index.get("splits", {})
    for split in ("train", "val"):
        if not splits.get(split, {}).get("num_samples"):
            raise SegflowError(f"{Path(shard_dir) / 'index.json'}: split {split!r} has no samples")
    per_rank = math.ceil(splits["train"]["num_samples"] / p.num_workers)
    if per_rank < p.batch_size:
        raise SegflowError(
            f"params.yaml: train.batch_size: {p.batch_size} is more than the "
            f"{per_rank} training samples each of the {p.num_workers} workers gets"
        )
    if p.use_gpu and p.launcher == "local" and not torch.cuda.is_available():
        raise SegflowError("params.yaml: train.use_gpu: true but this machine has no CUDA GPU")
    loop.build_model(p, int(index["num_classes"]))  # unknown model/option: SegflowError here
    return index


def check_cluster(params: Params, section: str = "train") -> None:
    """More workers than the cluster can place would wait forever: fail now, naming the field.

    ``section`` (``train`` or ``search``) names the workers' params: num_workers,
    cpus_per_worker, use_gpu, gpus_per_worker.
    """
    import ray

    p = getattr(params, section)
    have = ray.cluster_resources()
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


def train_func(config: dict) -> dict:
    """The per-worker entry point of TorchTrainer: plain PyTorch around ``train_epochs``."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    if not config.get("verbose"):
        quiet_ray_train_worker()
    params = Params.model_validate(config["params"])
    shard_dir = Path(config["shard_dir"])
    torch.set_num_threads(params.train.cpus_per_worker)
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL and the DDP bucket allocations use the current one
    node_id = ray.get_runtime_context().get_node_id()
    node_ids = [node_id]
    if dist.is_available() and dist.is_initialized():
        node_ids = [None] * world_size
        dist.all_gather_object(node_ids, node_id)

    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    extra = loop.checkpoint_extra(params, read_index(shard_dir))
    fail_after = config.get("fail_after_epoch")

    def on_epoch(state: loop.TrainState, record: dict, is_best: bool) -> None:
        metrics = {**record, "is_best": is_best}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                loop.save_checkpoint(Path(d) / CHECKPOINT_FILE, state, extra)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(d),
                    checkpoint_dir_name=f"epoch-{state.epoch:04d}",
                )
        else:
            ray.train.report(metrics)
        if fail_after is not None and state.epoch == fail_after and rank == 0:
            # Give the controller time to collect the report (it polls every health-check
            # interval), so the crash lands after a checkpoint Ray knows about.
            interval = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))
            time.sleep(2.5 * interval)
            _echo(f"train: {FAIL_AFTER_EPOCH_ENV}={fail_after}: rank 0 exits now")
            os._exit(1)

    if rank == 0 and world_size > 1:
        _echo(f"train: {world_size} workers on {len(set(node_ids))} node(s)")
    state = loop.train_epochs(
        params,
        shard_dir,
        device,
        on_epoch,
        rank=rank,
        world_size=world_size,
        resume=resume,
        echo=_echo,
    )
    resumed_from = int(resume["epoch"]) if resume is not None else 0
    return {"history": state.history, "node_ids": node_ids, "resumed_from": resumed_from}


def train_distributed(
    params: Params, shard_dir: str | Path, work_dir: str | Path, echo: Echo = _echo
) -> TrainOutcome:
    """Run ``train_func`` under TorchTrainer; the best checkpoint is copied into ``work_dir``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    p = params.train
    shard_dir = Path(shard_dir).resolve()
    preflight(params, shard_dir)
    connect_ray()
    check_cluster(params)
    run_name = p.run_name or default_run_name()
    storage = resolve_storage(p.storage_path)
    resources = {"CPU": p.cpus_per_worker}
    if p.use_gpu:
        resources["GPU"] = p.gpus_per_worker
    fail_after = os.environ.get(FAIL_AFTER_EPOCH_ENV)
    trainer = TorchTrainer(
        train_func,
        train_loop_config={
            "params": params.model_dump(mode="json"),
            "shard_dir": str(shard_dir),
            "fail_after_epoch": int(fail_after) if fail_after else None,
            "verbose": is_verbose(),  # a worker on another node has not got our environment
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=p.num_workers, use_gpu=p.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=p.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            # Ray Train's per-report INFO lines would drown the progress lines in a CI log.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    echo(f"train: ray run {run_name!r} in {storage}: {p.num_workers} worker(s), {resources}")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise RuntimeError(f"training run {run_name!r} failed: {exc}") from exc
    if result.error is not None:
        raise RuntimeError(f"training run {run_name!r} failed: {result.error}")
    best = result.get_best_checkpoint(SCORE, "max") or result.checkpoint
    if best is None:
        raise RuntimeError(f"training run {run_name!r} reported no checkpoint")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    local = work_dir / loop.BEST
    with best.as_directory() as d, atomic_path(local) as tmp:
        shutil.copyfile(Path(d) / CHECKPOINT_FILE, tmp)
    value = result.return_value or {}
    history = value.get("history")
    if history is None:  # e.g. a resumed run that had already finished: the checkpoint has it
        with result.checkpoint.as_directory() as d:
            history = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=True)["history"]
    return TrainOutcome(
        history,
        local,
        run_name,
        str(result.path),
        value.get("node_ids", []),
        value.get("resumed_from", 0),
    )


def train_local(
    params: Params, shard_dir: str | Path, work_dir: str | Path, echo: Echo = _echo
) -> TrainOutcome:
    """The same training in this process without Ray (``train.launcher: local``)."""
    preflight(params, Path(shard_dir))
    run_name = params.train.run_name or default_run_name()
    storage = params.train.storage_path
    if "://" in storage:
        raise SegflowError("params.yaml: train.storage_path: the local launcher needs a local path")
    run_dir = Path(resolve_storage(storage)) / run_name
    echo(f"train: local run {run_name!r} in {run_dir}")
    last = run_dir / loop.LAST
    resumed_from = torch.load(last, weights_only=True)["epoch"] if last.is_file() else 0
    state = loop.fit(params, shard_dir, run_dir, echo=echo)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    local = work_dir / loop.BEST
    with atomic_path(local) as tmp:
        shutil.copyfile(run_dir / loop.BEST, tmp)
    return TrainOutcome(state.history, local, run_name, str(run_dir), [], resumed_from)


def train(
    params: Params, shard_dir: str | Path, work_dir: str | Path, echo: Echo = _echo
) -> TrainOutcome:
    """Train with the launcher named in ``train.launcher``."""
    run = train_distributed if params.train.launcher == "ray" else train_local
    return run(params, shard_dir, work_dir, echo)
