"""Training launched: the core loop on Ray Train workers (``train.launcher: ray``) or in this
process (``local``), each ending with the best checkpoint copied where the stage wants it.

Each Ray worker runs :func:`segflow.train.loop.train_epochs` unchanged: it wraps the model in
DDP and reads its own part of the shards (the rank-split ``ShardDataset``; with
``loader.backend: ray_data`` its share of the epoch, decoded by Ray Data tasks on any node with
free CPUs: :mod:`segflow.data.ray_loader`). After every epoch the workers report the epoch's
metrics and rank 0 attaches the checkpoint; the launcher (:mod:`.distributed`) keeps the best
by val mIoU and the latest, and restarts crashed workers from the latest. Everything that can
be checked before a worker starts is checked once, by the stage, in :func:`preflight`.

A diverged run (:class:`segflow.train.loop.TrainingDiverged`) is not a crash to restart from:
the workers return its message and the driver raises it. A stop request (``stop``, a
:class:`segflow.train.preemption.SigtermStop`) ends the local loop between two steps and the Ray
run at once, keeping the last checkpoint of either for the next run to continue.
"""

from __future__ import annotations

import shutil
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from segflow.config import Params
from segflow.data.shards import read_index, shard_index_path
from segflow.data.store import location
from segflow.errors import SegflowError
from segflow.io import atomic_path
from segflow.models.checkpoint import initial_weights, load_initial_weights, read_checkpoint
from segflow.train import loop
from segflow.train.collectives import gather_objects
from segflow.train.distributed import (
    Echo,
    check_workers,
    default_run_name,
    echo_line,
    launch,
    local_run_dir,
    report_epoch,
    resume_payload,
    worker_context,
)
from segflow.train.preemption import SigtermStop
from segflow.train.state import BEST, LAST, checkpoint_extra, checkpoint_payload

#: The checkpoint file inside each of Ray's ``epoch-NNNN`` directories.
CHECKPOINT_FILE = "checkpoint.pt"
#: The metric the kept checkpoint is chosen by: dev's mIoU with a dev split, else val's.
SCORE = "selection_miou"


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
    #: With train.time_budget_min: what the budget allowed and why the run ended
    #: (:meth:`segflow.train.budget.TimeBudget.summary`); None without a budget.
    budget: dict | None = None


def preflight(params: Params, shard_dir: str | Path) -> dict:
    """Check what would otherwise fail inside every worker; returns the shard index."""
    p = params.train
    index = read_index(shard_dir)
    splits = index.get("splits", {})
    for split in ("train", "val"):
        if not splits.get(split, {}).get("num_samples"):
            raise SegflowError(f"{shard_index_path(shard_dir)}: split {split!r} has no samples")
    check_workers(p, "train", splits["train"]["num_samples"], p.batch_size, "the training samples")
    model = loop.build_model(p, int(index["num_classes"]))  # unknown model/option: an error
    if p.init_from is not None:  # a missing or misfit checkpoint: one line before Ray starts
        load_initial_weights(model, initial_weights(p.init_from), p.init_from)
    return index


def train_func(config: dict) -> dict:
    """The per-worker entry point of TorchTrainer: plain PyTorch around ``train_epochs``."""
    import ray

    params = Params.model_validate(config["params"])
    shard_dir = config["shard_dir"]  # a local path or an object-store URI
    rank, world_size, device = worker_context(config, params.train.cpus_per_worker)
    node_ids = gather_objects(ray.get_runtime_context().get_node_id())
    resume = resume_payload(CHECKPOINT_FILE)
    extra = checkpoint_extra(params, read_index(shard_dir))
    budget = loop.time_budget(params.train, device, config.get("since"))

    def on_epoch(state: loop.TrainState, record: dict, is_best: bool) -> None:
        payload = checkpoint_payload(state, extra) if rank == 0 else None
        report_epoch({**record, "is_best": is_best}, state.epoch, payload, CHECKPOINT_FILE)

    if rank == 0 and world_size > 1:
        echo_line(f"train: {world_size} workers on {len(set(node_ids))} node(s)")
    try:
        state = loop.train_epochs(
            params, shard_dir, device, on_epoch,
            rank=rank, world_size=world_size, resume=resume, echo=echo_line, budget=budget,
        )  # fmt: skip
    except loop.TrainingDiverged as exc:
        # Every rank stops at the same step (the decision is collective). Returned, not raised:
        # Ray Train would restart the workers from the last checkpoint to diverge again.
        return {"diverged": str(exc)}
    resumed_from = int(resume["epoch"]) if resume is not None else 0
    return {
        "history": state.history,
        "node_ids": node_ids,
        "resumed_from": resumed_from,
        "budget": budget.summary(state.epoch) if budget is not None else None,
    }


def train_distributed(
    params: Params,
    shard_dir: str | Path,
    work_dir: str | Path,
    echo: Echo = echo_line,
    stop: SigtermStop | None = None,
    since: float | None = None,
) -> TrainOutcome:
    """Run :func:`train_func` under the Ray launcher; the best checkpoint is copied into
    ``work_dir``. A ``stop`` request while it runs ends this driver's Ray job (its workers
    with it) and re-raises. A time budget counts from ``since`` (the stage's start)."""
    p = params.train
    shard_dir = location(shard_dir)  # absolute: workers run elsewhere
    run_name = p.run_name or default_run_name("train")
    config = {
        "params": params.model_dump(mode="json"),
        "shard_dir": str(shard_dir),
        "since": since,
    }
    try:
        with stop.interruptible() if stop is not None else nullcontext():
            run = launch(
                train_func, config, p, "train", run_name, score=SCORE, echo=echo,
                data_cpus=1 if params.loader.backend == "ray_data" else 0,
            )  # fmt: skip
    except BaseException:
        if stop is not None and stop():
            end_ray_job()
        raise
    if run.value.get("diverged"):
        raise SegflowError(run.value["diverged"])
    local = run.copy(run.best or run.latest, CHECKPOINT_FILE, Path(work_dir) / BEST)
    history = run.value.get("history")
    if history is None:  # e.g. a resumed run that had already finished: the checkpoint has it
        history = run.read(run.latest, CHECKPOINT_FILE)["history"]
    return TrainOutcome(
        history, local, run_name, run.path, run.value.get("node_ids", []),
        run.value.get("resumed_from", 0), run.value.get("budget"),
    )  # fmt: skip


def end_ray_job() -> None:
    """Stop what this driver runs on Ray: disconnecting ends its Ray job, and Ray kills the
    job's actors (Ray Train's controller and workers); a local Ray started here stops whole.
    Checkpoints already reported are complete files in storage and stay."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def train_local(
    params: Params,
    shard_dir: str | Path,
    work_dir: str | Path,
    echo: Echo = echo_line,
    stop: SigtermStop | None = None,
    since: float | None = None,
) -> TrainOutcome:
    """The same training in this process without Ray (``train.launcher: local``); ``stop``
    is asked between steps, and a time budget counts from ``since``."""
    run_name = params.train.run_name or default_run_name("train")
    run_dir = local_run_dir(params.train, "train", run_name)
    echo(f"train: local run {run_name!r} in {run_dir}")
    last = run_dir / LAST
    resumed_from = int(read_checkpoint(last)["epoch"]) if last.is_file() else 0
    state = loop.fit(params, shard_dir, run_dir, echo=echo, should_stop=stop, since=since)
    if not (run_dir / BEST).is_file():
        raise SegflowError(f"train: run {run_name!r}: no epoch had a finite val mIoU")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    local = work_dir / BEST
    with atomic_path(local) as tmp:
        shutil.copyfile(run_dir / BEST, tmp)
    budget = state.budget.summary(state.epoch) if state.budget is not None else None
    return TrainOutcome(state.history, local, run_name, str(run_dir), [], resumed_from, budget)


def train(
    params: Params,
    shard_dir: str | Path,
    work_dir: str | Path,
    echo: Echo = echo_line,
    stop: SigtermStop | None = None,
    since: float | None = None,
) -> TrainOutcome:
    """Train with the launcher named in ``train.launcher``; a time budget
    (``train.time_budget_min``) counts from ``since``, a ``time.time()`` (None: from the first
    step's set-up)."""
    run = train_distributed if params.train.launcher == "ray" else train_local
    return run(params, shard_dir, work_dir, echo, stop, since)
