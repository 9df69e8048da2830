"""Running the search: in this process (``search.launcher: local``) or on Ray Train workers.

Each Ray worker runs :func:`segflow.search.loop.search_epochs` unchanged through the launcher
that training uses (:mod:`segflow.train.distributed`): torch.distributed set up by Ray Train,
rank 0 attaching a checkpoint to every epoch's report, FailureConfig restarting a crashed
worker group from the latest one, and a rerun with the same ``search.run_name`` +
``storage_path`` resuming a stopped search. The local launcher keeps
``<storage_path>/<run_name>/last.pt`` and resumes from it the same way. Search checkpoints are
plain tensors, numbers, strings and containers: they load with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from segflow.config import Params
from segflow.data.shards import read_index, shard_index_path
from segflow.data.store import location
from segflow.errors import SegflowError
from segflow.io import atomic_path
from segflow.models.checkpoint import default_device, read_checkpoint
from segflow.search.loop import SearchState, search_epochs
from segflow.train.distributed import (
    check_workers,
    default_run_name,
    echo_line,
    launch,
    local_run_dir,
    report_epoch,
    resume_payload,
    worker_context,
)

CHECKPOINT_FILE = "search.pt"
LAST = "last.pt"

Echo = Callable[[str], None]


@dataclass
class SearchOutcome:
    """What a finished search hands to the stage."""

    history: list[dict]
    arch_history: list[dict]  # alpha and beta after each epoch; the last is the result
    run_name: str
    run_path: str


def preflight(params: Params, shard_dir: str | Path) -> dict:
    """What would otherwise fail inside every worker: empty train, too small halves."""
    sp = params.search
    index = read_index(shard_dir)
    n = int(index.get("splits", {}).get("train", {}).get("num_samples", 0))
    source = f"half of the {n} training samples ({shard_index_path(shard_dir)})"
    check_workers(sp, "search", n // 2, sp.batch_size, source)
    coarsest = math.ceil(sp.crop_height / 32) * math.ceil(sp.crop_width / 32)
    if sp.batch_size * coarsest < 2:
        raise SegflowError(
            f"params.yaml: search.batch_size: 1 with a {sp.crop_height}x{sp.crop_width} crop "
            "leaves one value per channel at stride 32, where BatchNorm cannot train; use a "
            "larger crop or batch"
        )
    return index


def search_local(params: Params, shard_dir: str | Path, echo: Echo = echo_line) -> SearchOutcome:
    """The search in this process; ``last.pt`` after every epoch, resumed when present."""
    sp = params.search
    run_name = sp.run_name or default_run_name("search")
    run_dir = local_run_dir(sp, "search", run_name)
    last = run_dir / LAST
    resume = read_checkpoint(last) if last.is_file() else None
    echo(f"search: local run {run_name!r} in {run_dir}")
    torch.set_num_threads(sp.cpus_per_worker)

    def on_epoch(state: SearchState, record: dict) -> None:
        with atomic_path(last) as tmp:
            torch.save(state.payload(), tmp)

    device = default_device() if sp.use_gpu else torch.device("cpu")
    state = search_epochs(params, shard_dir, device, on_epoch, resume=resume, echo=echo)
    return SearchOutcome(state.history, state.arch_history, run_name, str(run_dir))


def search_func(config: dict) -> dict:
    """The per-worker entry point of TorchTrainer: plain PyTorch around ``search_epochs``."""
    params = Params.model_validate(config["params"])
    rank, world_size, device = worker_context(config, params.search.cpus_per_worker)
    resume = resume_payload(CHECKPOINT_FILE)

    def on_epoch(state: SearchState, record: dict) -> None:
        metrics = {k: v for k, v in record.items() if isinstance(v, int | float)}  # no lists
        payload = state.payload() if rank == 0 else None
        report_epoch(metrics, state.epoch, payload, CHECKPOINT_FILE)

    state = search_epochs(
        params, config["shard_dir"], device, on_epoch,
        rank=rank, world_size=world_size, resume=resume, echo=echo_line,
    )  # fmt: skip
    # Every rank returns its architecture so the driver can check they agree.
    return {"history": state.history, "arch_history": state.arch_history, "rank": rank}


def search_distributed(
    params: Params, shard_dir: str | Path, echo: Echo = echo_line
) -> SearchOutcome:
    """Run :func:`search_func` under the Ray launcher on ``search.num_workers`` workers."""
    sp = params.search
    run_name = sp.run_name or default_run_name("search")
    config = {"params": params.model_dump(mode="json"), "shard_dir": location(shard_dir)}
    run = launch(search_func, config, sp, "search", run_name, echo=echo)
    history, arch_history = run.value.get("history"), run.value.get("arch_history")
    if history is None:  # a resumed run that had already finished: the checkpoint has it
        payload = run.read(run.latest, CHECKPOINT_FILE)
        history, arch_history = payload["history"], payload["arch_history"]
    return SearchOutcome(history, arch_history, run_name, run.path)


def search(params: Params, shard_dir: str | Path, echo: Echo = echo_line) -> SearchOutcome:
    """Search with the launcher named in ``search.launcher``."""
    run = search_distributed if params.search.launcher == "ray" else search_local
    return run(params, shard_dir, echo)
