"""A training run's state and its checkpoint: what is saved after every epoch, and read back.

A checkpoint is a plain ``torch.save`` of tensors, numbers, strings, lists and dicts (see
:mod:`segflow.models.checkpoint`, which reads it with ``weights_only=True``): the model,
optimizer and LR-schedule state, the epoch count, the best val mIoU, the history, a time
budget's state (``budget``: the time spent, the schedule's progress, the epochs' costs) when the
run has one, and the ``extra`` facts (:func:`checkpoint_extra`) that let a checkpoint alone
rebuild its network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from segflow.config import Params
from segflow.io import atomic_path
from segflow.train.budget import TimeBudget
from segflow.train.ema import ModelEMA

#: File names of a run directory (the local launcher's, and :func:`segflow.train.loop.fit`'s).
LAST, BEST = "last.pt", "best.pt"


@dataclass
class TrainState:
    """Everything needed to continue a run exactly where it stopped."""

    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    epoch: int = 0  # epochs completed
    best_miou: float = -1.0
    history: list[dict] = field(default_factory=list)
    ema: ModelEMA | None = None  # train.ema_decay > 0: the averaged weights, the model saved
    budget: TimeBudget | None = None  # train.time_budget_min: the clock the LR decays with

    @property
    def scored_model(self) -> nn.Module:
        """What is validated and saved as the model: the EMA when on, else the raw weights."""
        return self.ema.module if self.ema is not None else unwrap(self.model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP (checkpoints never hold the ``module.`` prefix)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def checkpoint_payload(state: TrainState, extra: dict | None = None) -> dict:
    """The checkpoint's dict. With an EMA, ``model`` is the average (what is scored and
    served) and ``raw_model`` the weights training continues from."""
    raw = {"raw_model": unwrap(state.model).state_dict()} if state.ema is not None else {}
    budget = {"budget": state.budget.state_dict()} if state.budget is not None else {}
    return {
        "model": state.scored_model.state_dict(),
        **raw,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "epoch": state.epoch,
        "best_miou": state.best_miou,
        "history": state.history,
        **budget,
        **(extra or {}),
    }


def save_checkpoint(path: str | Path, state: TrainState, extra: dict | None = None) -> None:
    """Write model, optimizer, schedule, epoch, best metric and history atomically.

    ``extra`` is stored beside them; :func:`segflow.train.loop.fit` and the Ray workers store
    :func:`checkpoint_extra` there so that a checkpoint alone rebuilds its model.
    """
    payload = checkpoint_payload(state, extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def restore_state(state: TrainState, payload: dict) -> None:
    """Load a :func:`checkpoint_payload` into ``state`` in place. A budget continues from the
    checkpoint's (a checkpoint without one, from a run without a budget, leaves it fresh)."""
    unwrap(state.model).load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.epoch = int(payload["epoch"])
    state.best_miou = float(payload["best_miou"])
    state.history = list(payload.get("history", []))
    if state.budget is not None and "budget" in payload:
        state.budget.load_state_dict(payload["budget"])


def checkpoint_extra(params: Params, index: dict) -> dict:
    """What a checkpoint carries besides the state: enough to rebuild and describe the model."""
    return {
        "train_params": params.train.model_dump(mode="json"),
        "num_classes": int(index["num_classes"]),
        "classes": index.get("classes", []),
        "shards_content_hash": index.get("content_hash", ""),
        "seed": params.seed,
    }
