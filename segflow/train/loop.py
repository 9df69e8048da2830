"""The training core: plain PyTorch on one device, no Ray.

Ray Train (:mod:`.run`, launched by :mod:`.distributed`) calls these same functions inside each
worker; on a GPU box without Ray, :func:`fit` runs them directly. Everything a run needs comes
from ``Params`` and the shard index, so a run is reproducible from (git commit, dvc.lock,
params.yaml). The precision policy is :mod:`.precision`'s, the checkpointed state
:mod:`.state`'s.
"""

from __future__ import annotations

import math
import os
import random
import resource
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from segflow.config import Params, TrainParams
from segflow.data.groups import DEV_SPLIT, VAL_SPLIT, decision_split
from segflow.data.loader import make_dataloader, normalize_batch
from segflow.data.ray_loader import training_loader
from segflow.data.shards import read_index
from segflow.errors import SegflowError
from segflow.evaluate.metrics import ConfusionMatrix
from segflow.io import atomic_path, remove_killed_writes
from segflow.models.checkpoint import (
    build_model,
    default_device,
    initial_weights,
    load_initial_weights,
    read_checkpoint,
)
from segflow.train.budget import TimeBudget, budget_lr, eta_seconds, format_duration
from segflow.train.collectives import any_rank, is_distributed, mean_over_ranks, rank0_value
from segflow.train.ema import ModelEMA
from segflow.train.losses import (
    SegmentationLoss,
    clip_weights,
    frequency_weights,
    median_frequency_weights,
)
from segflow.train.precision import autocast_for, grad_scaler
from segflow.train.schedules import poly_lr
from segflow.train.state import (
    BEST,
    LAST,
    TrainState,
    checkpoint_extra,
    restore_state,
    save_checkpoint,
    unwrap,
)
from segflow.train.sync_bn import convert_sync_bn


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def build_optimizer(model: nn.Module, p: TrainParams) -> Optimizer:
    """SGD with momentum (DeepLab) or AdamW; parameters frozen by the model stay frozen.

    The backbone (pretrained, ImageNet features) trains at ``lr``; everything else, freshly
    initialised, at ``lr x head_lr_mult`` (DeepLab's classifier: 10x). Two parameter groups,
    so the poly schedule scales both.
    """
    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    # "net.backbone.": the backbone of a model under a CRF-as-RNN head (train.crf_rnn)
    body = [q for n, q in named if n.startswith(("backbone.", "net.backbone."))]
    head = [q for n, q in named if not n.startswith(("backbone.", "net.backbone."))]
    groups = [g for g in ({"params": body, "lr": p.lr},) if g["params"]]
    if head:
        groups.append({"params": head, "lr": p.lr * p.head_lr_mult})
    if p.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=p.lr, weight_decay=p.weight_decay)
    return torch.optim.SGD(groups, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def build_loss(
    p: TrainParams, index: dict, split: str = "train", aux_weight: float = 0.0
) -> SegmentationLoss:
    """The loss of ``p``; ``aux_weight`` is the model's auxiliary-head weight (0: none)."""
    weight = None
    info = index["splits"][split]
    if p.class_weights == "median_frequency":
        weight = median_frequency_weights(info["class_pixels"], info.get("class_image_pixels"))
        weight = clip_weights(weight, p.class_weight_max)
    elif p.class_weights in ("inverse_log", "sqrt"):
        weight = frequency_weights(info["class_pixels"], p.class_weights, p.class_weight_max)
    return SegmentationLoss(
        p.loss, weight, p.dice_weight, p.ohem_thresh, p.ohem_min_kept, p.focal_gamma, aux_weight
    )


class TrainingDiverged(SegflowError):
    """The loss stayed non-finite for ``train.nan_patience`` steps, or the weights went non-finite:
    nothing the run does from here is worth a checkpoint."""


class TrainingStopped(Exception):
    """``should_stop`` asked the loop to stop; raised between two steps, so the last checkpoint
    (written after the last whole epoch) is the state to continue from."""

    def __init__(self, epoch: int, step: int, steps: int):
        super().__init__(f"stopped in epoch {epoch} before step {step} of {steps}")
        self.epoch, self.step, self.steps = epoch, step, steps


def diverged(p: TrainParams, what: str) -> TrainingDiverged:
    return TrainingDiverged(
        f"train: {what}: training diverged; try a lower train.lr (now {p.lr:g}) or "
        f"train.grad_clip (e.g. 1.0)"
    )


class NonFiniteGuard:
    """Counts consecutive steps whose loss (or gradient) is not finite, across epochs;
    ``train.nan_patience`` in a row raise :class:`TrainingDiverged` naming the epoch and step."""

    def __init__(self, p: TrainParams):
        self.p = p
        self.streak = 0

    def observe(self, finite: bool, loss: float, epoch: int, step: int) -> None:
        if finite:
            self.streak = 0
            return
        self.streak += 1
        if self.streak >= self.p.nan_patience:
            raise diverged(
                self.p,
                f"the loss or its gradients were not finite for {self.streak} steps in a row "
                f"(train.nan_patience), the last at epoch {epoch} step {step} (loss {loss:g})",
            )


@dataclass
class StepInfo:
    """What a progress line reports after a step (:func:`train_one_epoch`'s ``log``)."""

    step: int
    steps: int
    loss: float  # the epoch's mean so far over the steps whose loss was finite
    images_per_second: float  # this rank's
    lr: float  # of the first parameter group (the backbone's), as the history records it
    data_share: float  # of the epoch's time so far spent waiting for the loader
    elapsed: float  # seconds since the epoch started


@dataclass
class EpochStats:
    loss: float  # the mean over the steps whose loss was finite; nan if none was
    images: int
    seconds: float
    data_seconds: float  # time spent waiting for the loader: the share a faster loader can save
    lr: float
    skipped_steps: int = 0  # steps whose loss was not finite: no weight update
    steps: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


Norm = tuple[tuple[float, float, float], tuple[float, float, float]]


def device_batch(
    batch: dict,
    device: torch.device,
    norm: Norm | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, masks) on ``device``; uint8 batches are normalised there with ``norm``.

    The training loaders yield uint8 (``make_dataloader(..., uint8=True)``): a quarter of the
    bytes through worker queues and host-to-device copies, and the float work on the device.
    """
    x = batch["image"].to(device, non_blocking=True)
    y = batch["mask"].to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        if norm is None:
            raise ValueError("a uint8 batch needs the loader's (mean, std) to be normalised")
        x, y = normalize_batch(x, y, *norm)
    return x.contiguous(memory_format=memory_format), y


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[dict],
    loss_fn: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    device: torch.device,
    p: TrainParams,
    log: Callable[[StepInfo], None] | None = None,
    norm: Norm | None = None,
    ema: ModelEMA | None = None,
    *,
    epoch: int = 1,
    guard: NonFiniteGuard | None = None,
    should_stop: Callable[[], bool] | None = None,
    pace: Callable[[int, int], bool] | None = None,
) -> EpochStats:
    """One pass over ``loader``; the LR schedule steps per iteration, the EMA per step.

    A step whose loss is not finite on any rank updates nothing (its gradients are dropped on
    every rank alike, so DDP replicas stay equal) and goes to ``guard``, which stops a run that
    keeps diverging. ``should_stop`` is asked before each step; true raises
    :class:`TrainingStopped` there (``epoch`` is the 1-based epoch, for messages). It is for
    one process: DDP ranks would each have to get the same answer at the same step.
    ``pace(step, steps)`` (a time budget's :meth:`~segflow.train.budget.TimeBudget.step`) is
    called after each step, before the schedule computes the next LR; true ends the epoch
    after that step (the budget's deadline), on every rank alike.
    """
    model.train()
    memory_format = torch.channels_last if p.channels_last else torch.contiguous_format
    scaler = grad_scaler(device, p.bf16)
    guard = guard if guard is not None else NonFiniteGuard(p)
    total_loss, images, steps, finite_steps, data_seconds = 0.0, 0, 0, 0, 0.0
    start = tick = time.perf_counter()
    for batch in loader:
        data_seconds += time.perf_counter() - tick
        if should_stop is not None and should_stop():
            raise TrainingStopped(epoch, steps + 1, len(loader))
        x, y = device_batch(batch, device, norm, memory_format)
        with autocast_for(device, p.bf16):
            logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        value = loss.item()
        # The loss differs per rank, so whether to skip is agreed on; the gradients are already
        # all-reduced, the same on every rank.
        finite = not any_rank(not math.isfinite(value), device)
        if finite and p.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        elif finite and not scaler.is_enabled():
            grads = [q.grad for q in model.parameters() if q.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        else:
            grad_norm = torch.zeros(())
        # An overflow under fp16's scaler is routine: the scaler skips that step itself and
        # lowers its scale. Anywhere else a finite loss with inf/nan gradients diverged too.
        finite = finite and (scaler.is_enabled() or math.isfinite(grad_norm.item()))
        steps += 1
        if finite:
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:  # the schedule's step count survives a resume; the warm-up reads it
                ema.update(unwrap(model), step=scheduler.last_epoch)
            finite_steps += 1
            total_loss += value
        else:
            optimizer.zero_grad(set_to_none=True)
        cut = pace(steps, len(loader)) if pace is not None else False
        with warnings.catch_warnings():
            # per iteration, skipped or not (the schedule's length is fixed); a skipped first
            # step is not the ordering mistake PyTorch warns about
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            scheduler.step()
        guard.observe(finite, value, epoch, steps)
        images += x.shape[0]
        if log is not None and (steps % p.log_every == 0 or cut):
            elapsed = time.perf_counter() - start
            mean = total_loss / finite_steps if finite_steps else math.nan
            log(
                StepInfo(
                    steps, len(loader), mean, images / elapsed,
                    optimizer.param_groups[0]["lr"], data_seconds / elapsed, elapsed,
                )
            )  # fmt: skip
        if cut:
            break
        tick = time.perf_counter()
    return EpochStats(
        loss=total_loss / finite_steps if finite_steps else (math.nan if steps else 0.0),
        images=images,
        seconds=time.perf_counter() - start,
        data_seconds=data_seconds,
        lr=optimizer.param_groups[0]["lr"],
        skipped_steps=steps - finite_steps,
        steps=steps,
    )


def all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite."""
    return all(
        bool(torch.isfinite(t).all())
        for t in model.state_dict().values()
        if torch.is_tensor(t) and t.is_floating_point()
    )


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Iterable[dict],
    num_classes: int,
    device: torch.device,
    bf16: str | bool = "auto",
    distributed: bool = False,
    norm: Norm | None = None,
) -> dict:
    """Full-image predictions on a split -> confusion-matrix metrics (mIoU, PA, ...)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, device)
    for batch in loader:
        x, y = device_batch(batch, device, norm)
        with autocast_for(device, bf16):
            logits = model(x)
        cm.update(y, logits.argmax(1))
    if distributed:
        cm.all_reduce()
    return cm.compute()


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated CUDA memory, or the process's peak RSS on CPU (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_state(
    params: Params,
    num_classes: int,
    iters_per_epoch: int,
    device: torch.device,
    budget: TimeBudget | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> TrainState:
    """Model, optimizer and LR schedule: poly over ``train.epochs`` epochs, or with a ``budget``
    poly over the fraction of it spent (:mod:`segflow.train.budget`). ``init_weights`` (another
    run's trained model) replaces the freshly initialised weights
    (:func:`~segflow.models.checkpoint.load_initial_weights`), as ``train.init_from``'s do."""
    p = params.train
    model = build_model(p, num_classes)
    if init_weights is None and p.init_from is not None:
        init_weights = initial_weights(p.init_from)
    if init_weights is not None:
        load_initial_weights(model, init_weights, p.init_from or "init_weights")
    model = model.to(device)
    if p.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, p)
    if budget is not None:
        scheduler = budget_lr(optimizer, budget, p.poly_power, p.warmup_iters)
    else:
        scheduler = poly_lr(optimizer, p.epochs * iters_per_epoch, p.poly_power, p.warmup_iters)
    return TrainState(model, optimizer, scheduler, budget=budget)


def time_budget(
    p: TrainParams, device: torch.device, since: float | None = None
) -> TimeBudget | None:
    """The run's :class:`~segflow.train.budget.TimeBudget` when ``train.time_budget_min`` is
    set (None: epochs as usual). ``since`` (a ``time.time()``) is when the stage started: its
    start-up counts against the budget too. Under DDP every rank reads rank 0's clock."""
    if p.time_budget_min is None:
        return None
    return TimeBudget(
        p.time_budget_min, p.epochs, after_minutes=p.time_budget_after_min,
        reference_ips=p.time_budget_reference_ips, since=since,
        batch_images=p.batch_size * (dist.get_world_size() if is_distributed() else 1),
        agree=lambda s: rank0_value(s, device),
    )  # fmt: skip


EpochHook = Callable[[TrainState, dict, bool], None]


def train_epochs(
    params: Params,
    shard_dir: str | Path,
    device: torch.device,
    on_epoch: EpochHook,
    *,
    rank: int = 0,
    world_size: int = 1,
    resume: dict | None = None,
    echo: Callable[[str], None] | None = print,
    should_stop: Callable[[], bool] | None = None,
    budget: TimeBudget | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> TrainState:
    """The whole training of one rank: loaders, model, epochs from ``resume`` to the end.

    Called as-is by :func:`fit` (one process) and by every Ray Train worker, where
    torch.distributed is already initialised: the model is then wrapped in DDP, each rank reads
    its own part of the shards, and validation sums the ranks' confusion matrices. After each
    epoch ``on_epoch(state, record, is_best)`` persists the state (a file, or a Ray report).

    With a ``budget`` (:func:`time_budget`) the LR decays with the budget spent and the run
    stops at the last epoch that fits it; ``train.epochs`` is then an upper bound. Without one,
    the poly schedule runs over ``train.epochs`` epochs.

    Never persisted: an epoch that ends with non-finite weights, or one cut short by a
    diverging loss (:class:`TrainingDiverged`) or by ``should_stop`` (:class:`TrainingStopped`,
    asked between steps): the last checkpoint stays the last good one.

    Rank 0 prints (``echo``) a line every ``train.log_every`` steps (loss, LR, images/s, the
    share of time spent waiting for data, peak memory, the run's ETA), a line when validation
    starts and one when the epoch ends (its mIoUs and how long validation took).
    """
    p = params.train
    seed_everything(params.seed + rank, p.deterministic)
    index = read_index(shard_dir)
    num_classes = int(index["num_classes"])
    lp = params.loader
    norm = (lp.mean, lp.std)
    # Validation reads with the mmap loader whatever loader.backend says (segflow.data.ray_loader)
    train_loader = training_loader(shard_dir, lp, p.batch_size, rank, world_size, params.seed)
    val_loader = make_dataloader(
        shard_dir, "val", lp, False, p.batch_size, rank, world_size, params.seed, uint8=True
    )
    # With a dev split (groups held out of train) the best epoch is chosen on dev, which shares
    # no scene with train; val is still scored and recorded (segflow.data.groups).
    selection = decision_split(index["splits"])
    dev_loader = None
    if selection == DEV_SPLIT:
        dev_loader = make_dataloader(
            shard_dir, DEV_SPLIT, lp, False, p.batch_size, rank, world_size, params.seed,
            uint8=True,
        )  # fmt: skip
    # Every rank builds the same initial weights (DDP also broadcasts rank 0's at wrap time).
    torch.manual_seed(params.seed)
    state = make_state(params, num_classes, len(train_loader), device, budget, init_weights)
    if resume is not None:
        restore_state(state, resume)
    if p.ema_decay > 0:
        state.ema = ModelEMA(state.model, p.ema_decay, warmup=p.ema_warmup)
        if resume is not None and "raw_model" in resume:  # "model" holds the average
            state.model.load_state_dict(resume["raw_model"])
    aux_weight = float(getattr(state.model, "aux_weight", 0.0))
    if p.compile:
        state.model.compile()  # in place: parameter names (and checkpoints) stay the same
    if p.sync_bn and is_distributed():
        state.model = convert_sync_bn(state.model)
    if is_distributed():
        state.model = DistributedDataParallel(
            state.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    loss_fn = build_loss(p, index, aux_weight=aux_weight).to(device)
    say = echo if (echo is not None and rank == 0) else None
    guard = NonFiniteGuard(p)
    if say and state.epoch > 0:
        say(
            f"train: resuming after epoch {state.epoch} (best {selection} mIoU "
            f"{state.best_miou:.4f})"
        )
    if say and budget is not None:
        say(
            f"train: time budget {budget.minutes:g} min (train.time_budget_min), "
            f"{budget.seconds - budget.local_spent():.0f} s left: the LR decays with the budget "
            f"spent; train.epochs ({p.epochs}) is an upper bound"
        )
    splits = index["splits"]
    scored = f"{VAL_SPLIT} ({splits[VAL_SPLIT]['num_samples']} images)" + (
        f", {DEV_SPLIT} ({splits[DEV_SPLIT]['num_samples']} images)" if dev_loader else ""
    )
    past: list[tuple[float, float]] = []  # this process's (training s, validation s) per epoch
    for epoch in range(state.epoch, p.epochs):
        plan = budget.next_epoch(state.epoch) if budget is not None else None
        if budget is not None and plan is None:
            break
        started = time.time()  # wall clock: epoch walls include the checkpoint/report after it
        epoch_t0 = time.perf_counter()
        train_loader.dataset.set_epoch(epoch)
        # "3/48" counts against train.epochs; "3/~37" against the epochs a budget's plan allows
        # (re-estimated every epoch; the first epoch, before any estimate, shows train.epochs).
        planned = plan is not None and plan.epochs is not None
        shown = f"~{plan.epochs}" if planned else str(p.epochs)

        def progress(info: StepInfo, epoch: int = epoch, shown: str = shown) -> None:
            if not say:
                return
            if budget is not None:
                eta = budget.eta()
            else:
                eta = eta_seconds(info.step, info.steps, info.elapsed, p.epochs - epoch - 1, past)
            say(
                f"train: epoch {epoch + 1}/{shown} step {info.step}/{info.steps} "
                f"loss {info.loss:.4f} lr {info.lr:.3g} "
                f"images/s {info.images_per_second * world_size:.1f} "
                f"data {100 * info.data_share:.0f}% mem {peak_memory_mb(device):.0f} MiB "
                f"eta {format_duration(eta)}"
            )

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        stats = train_one_epoch(
            state.model, train_loader, loss_fn, state.optimizer, state.scheduler, device, p,
            progress, norm, state.ema, epoch=epoch + 1, guard=guard, should_stop=should_stop,
            pace=budget.step if budget is not None else None,
        )  # fmt: skip
        if budget is not None:
            budget.trained()
        # DDP keeps the replicas equal, so every rank takes the same decision here.
        if not all_finite(state.scored_model):
            raise diverged(p, f"the weights are not finite after epoch {epoch + 1}")
        if say:
            say(f"train: epoch {epoch + 1}/{shown} validating on {scored}")
        val_t0 = time.perf_counter()
        # Validate the plain model: DDP's forward would broadcast buffers, a collective that
        # hangs when ranks hold different numbers of validation images.
        val = validate(
            state.scored_model, val_loader, num_classes, device, p.bf16, is_distributed(), norm
        )
        dev = None
        if dev_loader is not None:
            dev = validate(
                state.scored_model, dev_loader, num_classes, device, p.bf16, is_distributed(),
                norm,
            )  # fmt: skip
        val_seconds = time.perf_counter() - val_t0
        # A NaN mIoU (no labelled pixel) scores nothing: 0 in the record (JSON has no NaN),
        # and never the best epoch.
        chosen = dev if dev is not None else val
        scored_ok = math.isfinite(chosen["miou"])
        miou = chosen["miou"] if scored_ok else 0.0
        val_miou = val["miou"] if math.isfinite(val["miou"]) else 0.0
        is_best = scored_ok and miou > state.best_miou
        state.epoch = epoch + 1
        state.best_miou = max(state.best_miou, miou) if scored_ok else state.best_miou
        train_loss = mean_over_ranks(stats.loss, stats.images, device)
        record = {
            "epoch": state.epoch,
            # None (null in JSON, empty in the CSV) when no step of the epoch had a finite loss
            "train_loss": train_loss if math.isfinite(train_loss) else None,
            "skipped_steps": stats.skipped_steps,
            "val_miou": val_miou,
            "val_pixel_accuracy": val["pixel_accuracy"],
            "val_mean_accuracy": val["mean_accuracy"],
            **(
                {"dev_miou": miou, "dev_pixel_accuracy": dev["pixel_accuracy"]}
                if dev is not None
                else {}
            ),
            # the mIoU the best epoch is chosen by: dev's when there is a dev split, else val's
            "selection_miou": miou,
            "lr": stats.lr,
            "images_per_second": stats.images_per_second * world_size,
            "epoch_seconds": stats.seconds,
            "data_wait_share": stats.data_seconds / stats.seconds if stats.seconds else 0.0,
            "peak_memory_mb": peak_memory_mb(device),
            "epoch_start_time": started,
            "validation_seconds": val_seconds,
        }
        if budget is not None:
            spent = budget.validated(len(train_loader), record["images_per_second"])
            # the budget spent when the epoch was scored, and the epochs its plan then expected
            record["budget_spent_s"] = spent
            if plan is not None and plan.epochs is not None:
                record["budget_planned_epochs"] = plan.epochs
        state.history.append(record)
        if say:
            cut = "" if stats.steps >= len(train_loader) else f" (cut at step {stats.steps})"
            spent_note = (
                f" budget {format_duration(record['budget_spent_s'])}/"
                f"{format_duration(budget.seconds)}"
                if budget is not None
                else ""
            )
            say(
                f"train: epoch {state.epoch}/{shown} loss {train_loss:.4f} "
                f"val mIoU {val_miou:.4f} PA {val['pixel_accuracy']:.4f} "
                + (f"dev mIoU {miou:.4f} " if dev is not None else "")
                + f"images/s {record['images_per_second']:.1f} time {stats.seconds:.1f}s"
                + f"{cut} validation {val_seconds:.1f}s{spent_note}"
                + (" (best)" if is_best else "")
            )
        on_epoch(state, record, is_best)
        if budget is not None:
            budget.done()
        past.append((val_t0 - epoch_t0, time.perf_counter() - val_t0))
    else:
        if budget is not None:
            budget.stopped_by = "epochs"
    if say and budget is not None and budget.stopped_by is not None:
        say(budget.stop_reason(state.epoch))
    state.model = unwrap(state.model)
    return state


def fit(
    params: Params,
    shard_dir: str | Path,
    out_dir: str | Path,
    device: torch.device | str | None = None,
    *,
    resume: bool = True,
    echo: Callable[[str], None] | None = print,
    should_stop: Callable[[], bool] | None = None,
    since: float | None = None,
    init_weights: dict[str, torch.Tensor] | None = None,
) -> TrainState:
    """Single-process training (no Ray): ``out_dir/last.pt`` every epoch, ``best.pt`` on a new
    best val mIoU, both written atomically.

    With ``resume`` an existing ``last.pt`` continues where it stopped (same epoch, optimizer
    momentum, LR schedule, best metric and time budget spent); a finished run returns at once.
    ``should_stop`` (asked between steps, e.g. after a SIGTERM) ends it with
    :class:`TrainingStopped`. ``train.time_budget_min`` trains to that budget
    (:func:`time_budget`), counted from ``since`` (a ``time.time()``; None: from this call).
    ``init_weights`` starts the network from another run's trained weights (a checkpoint's
    ``model``; ignored when ``last.pt`` resumes the run).
    """
    out_dir = Path(out_dir)
    device = torch.device(device) if device is not None else default_device()
    index = read_index(shard_dir)
    extra = checkpoint_extra(params, index)
    last, best = out_dir / LAST, out_dir / BEST
    payload = None
    if resume and last.is_file():
        payload = read_checkpoint(last)
        remove_killed_writes(out_dir)  # a killed run's half-written best.pt or last.pt

    def on_epoch(state: TrainState, record: dict, is_best: bool) -> None:
        save_checkpoint(last, state, extra)
        if is_best:
            with atomic_path(best) as tmp:
                shutil.copyfile(last, tmp)

    return train_epochs(
        params, shard_dir, device, on_epoch, resume=payload, echo=echo, should_stop=should_stop,
        budget=time_budget(params.train, device, since), init_weights=init_weights,
    )  # fmt: skip
