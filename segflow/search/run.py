"""Running the search: in this process (``search.launcher: local``) or on Ray Train workers.

The Ray wiring mirrors :mod:`segflow.train.distributed`: each worker runs
:func:`segflow.search.loop.search_epochs` unchanged (torch.distributed set up by Ray Train, gloo
on CPU), rank 0 attaches a checkpoint to every epoch's ``ray.train.report``, FailureConfig
restarts a crashed worker group from the latest one, and rerunning with the same
``search.run_name`` + ``storage_path`` resumes a stopped search. The local launcher keeps
``<storage_path>/<run_name>/last.pt`` and resumes from it the same way.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from segflow.config import Params
from segflow.data.shards import read_index
from segflow.errors import SegflowError
from segflow.io import atomic_path
from segflow.raycluster import connect_ray
from segflow.search.loop import SearchState, search_epochs
from segflow.train.distributed import check_cluster, resolve_storage, with_run_name
from segflow.train.loop import default_device

CHECKPOINT_FILE = "search.pt"
LAST = "last.pt"
#: Test hook (real code path): the search process exits hard after this epoch's checkpoint.
FAIL_AFTER_EPOCH_ENV = "SEGFLOW_SEARCH_FAIL_AFTER_EPOCH"

Echo = Callable[[str], None]


@dataclass
class SearchOutcome:
    """What a finished search hands to the stage."""

    history: list[dict]
    arch_history: list[dict]  # alpha and beta after each epoch; the last is the result
    run_name: str
    run_path: str


def _echo(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def preflight(params: Params, shard_dir: Path) -> dict:
    """What would otherwise fail inside every worker: empty train, too small halves."""
    sp = params.search
    index = read_index(shard_dir)
    n = int(index.get("splits", {}).get("train", {}).get("num_samples", 0))
    per_rank = math.ceil((n // 2) / sp.num_workers)
    if per_rank < sp.batch_size:
        raise SegflowError(
            f"params.yaml: search.batch_size: {sp.batch_size} is more than the {per_rank} "
            f"samples each of the {sp.num_workers} worker(s) gets from half of the "
            f"{n} training samples ({Path(shard_dir) / 'index.json'})"
        )
    coarsest = math.ceil(sp.crop_height / 32) * math.ceil(sp.crop_width / 32)
    if sp.batch_size * coarsest < 2:
        raise SegflowError(
            f"params.yaml: search.batch_size: 1 with a {sp.crop_height}x{sp.crop_width} crop "
            "leaves one value per channel at stride 32, where BatchNorm cannot train; use a "
            "larger crop or batch"
        )
    if sp.use_gpu and sp.launcher == "local" and not torch.cuda.is_available():
        raise SegflowError("params.yaml: search.use_gpu: true but this machine has no CUDA GPU")
    return index


def _fail_after(state: SearchState) -> None:
    fail = os.environ.get(FAIL_AFTER_EPOCH_ENV)
    if fail and state.epoch == int(fail):
        _echo(f"search: {FAIL_AFTER_EPOCH_ENV}={fail}: exiting now")
        os._exit(1)


def search_local(params: Params, shard_dir: str | Path, echo: Echo = _echo) -> SearchOutcome:
    """The search in this process; ``last.pt`` after every epoch, resumed when present."""
    shard_dir = Path(shard_dir)
    preflight(params, shard_dir)
    sp = params.search
    if "://" in sp.storage_path:
        raise SegflowError("params.yaml: search.storage_path: the local launcher needs a path")
    run_name = sp.run_name or with_run_name(params, "search").search.run_name
    run_dir = Path(resolve_storage(sp.storage_path)) / run_name
    last = run_dir / LAST
    resume = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    echo(f"search: local run {run_name!r} in {run_dir}")
    torch.set_num_threads(sp.cpus_per_worker)

    def on_epoch(state: SearchState, record: dict) -> None:
        with atomic_path(last) as tmp:
            torch.save(state.payload(), tmp)
        _fail_after(state)

    device = default_device() if sp.use_gpu else torch.device("cpu")
    state = search_epochs(params, shard_dir, device, on_epoch, resume=resume, echo=echo)
    return SearchOutcome(state.history, state.arch_history, run_name, str(run_dir))


def search_func(config: dict) -> dict:
    """The per-worker entry point of TorchTrainer: plain PyTorch around ``search_epochs``."""
    import ray.train
    import ray.train.torch

    params = Params.model_validate(config["params"])
    torch.set_num_threads(params.search.cpus_per_worker)
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)

    def on_epoch(state: SearchState, record: dict) -> None:
        metrics = {k: v for k, v in record.items() if k != "path"}
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save(state.payload(), Path(d) / CHECKPOINT_FILE)
                ray.train.report(
                    metrics,
                    checkpoint=ray.train.Checkpoint.from_directory(d),
                    checkpoint_dir_name=f"epoch-{state.epoch:04d}",
                )
            _fail_after(state)
        else:
            ray.train.report(metrics)

    state = search_epochs(
        params,
        Path(config["shard_dir"]),
        device,
        on_epoch,
        rank=rank,
        world_size=world_size,
        resume=resume,
        echo=_echo,
    )
    # Every rank returns its architecture so the driver can check they agree.
    return {"history": state.history, "arch_history": state.arch_history, "rank": rank}


def search_distributed(params: Params, shard_dir: str | Path, echo: Echo = _echo) -> SearchOutcome:
    """Run ``search_func`` under TorchTrainer on ``search.num_workers`` workers."""
    import ray.train
    from ray.train.torch import TorchTrainer

    sp = params.search
    shard_dir = Path(shard_dir).resolve()
    preflight(params, shard_dir)
    connect_ray()
    check_cluster(params, "search")
    run_name = sp.run_name or with_run_name(params, "search").search.run_name
    storage = resolve_storage(sp.storage_path)
    resources = {"CPU": sp.cpus_per_worker}
    if sp.use_gpu:
        resources["GPU"] = sp.gpus_per_worker
    trainer = TorchTrainer(
        search_func,
        train_loop_config={"params": params.model_dump(mode="json"), "shard_dir": str(shard_dir)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=sp.num_workers, use_gpu=sp.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=sp.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    echo(f"search: ray run {run_name!r} in {storage}: {sp.num_workers} worker(s), {resources}")
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        raise RuntimeError(f"search run {run_name!r} failed: {exc}") from exc
    if result.error is not None:
        raise RuntimeError(f"search run {run_name!r} failed: {result.error}")
    value = result.return_value or {}
    history, arch_history = value.get("history"), value.get("arch_history")
    if history is None:  # a resumed run that had already finished: the checkpoint has it
        with result.checkpoint.as_directory() as d:
            payload = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=False)
        history, arch_history = payload["history"], payload["arch_history"]
    return SearchOutcome(history, arch_history, run_name, str(result.path))


def search(params: Params, shard_dir: str | Path, echo: Echo = _echo) -> SearchOutcome:
    """Search with the launcher named in ``search.launcher``."""
    run = search_distributed if params.search.launcher == "ray" else search_local
    return run(params, shard_dir, echo)
