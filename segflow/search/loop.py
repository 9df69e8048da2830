"""The search core: first-order DARTS on the supernet, plain PyTorch, no Ray.

Each step (Liu et al. 2019, sec. 4.1, after DARTS):

1. architecture step (from epoch ``warmup_epochs`` on): a trainB batch, the loss's gradient
   w.r.t. alpha and beta only, one Adam step (betas 0.5, 0.999, as in DARTS' code). First
   order: the network weights are treated as constants (DARTS' first-order approximation,
   which the paper uses);
2. weight step: a trainA batch, one SGD step on the network weights, cosine LR.

Before the warm-up ends the supernet's weights train alone (the paper: 20 of 40 epochs), so
alpha and beta are not ranked by ops whose weights are still random. The trainB loss is then
still measured (no gradient) so every epoch reports both losses.

trainA and trainB are the two halves of the train split, drawn by ``seed`` (:func:`split_train`):
disjoint, together all of train. On several ranks (Ray Train, torch.distributed initialised)
each rank reads its own part of each half and the gradients of both steps are averaged over the
ranks before the optimizer steps (:func:`average_gradients`); starting from the same seeded
weights, every rank then holds the same alpha, beta and weights after every step. The
weights' gradients are averaged by hand rather than through DDP because the two steps
back-propagate through the same network with different optimizers; one explicit all-reduce per
step is simpler than DDP's bucket hooks firing on both passes.

**Why alpha and beta barely moved (issue 22).** The gradients are not too small (on a fresh
L = 3 supernet, mean |grad| ~1e-2 for alpha, ~1e-3 for beta, far above Adam's eps); Adam
normalises them away and moves each entry by at most about ``arch_lr`` per step. The paper's
3e-3 is sized for its ~15,000 architecture steps; a CPU search takes tens to hundreds, so the
softmaxes stay uniform and the decoded path is whatever the 1e-3 initial noise and near-ties
make it. Measured on tests/search/test_search_learns.py's checkerboard task (L 3, F 4, B 1,
32x32, 1 warm-up + 2 architecture epochs of 20 steps, 2 busy cores): arch_lr 3e-3 moves alpha
and beta by <= 0.07 per epoch, their entropies end >= 0.99 and the chain's P(ending at
stride 4) at 0.34-0.42 (3 runs; seed 0 decodes 4-4-8: wrong); arch_lr 0.1 moves them by
0.4-2.5 per epoch and alpha's entropy falls to 0.47-0.80. With the paper's summed heads beta
stays near uniform even then (seed 2: entropy 0.88, P(stride 4) 0.36); with ``head_weights:
marginal`` (supernet.py) it decides (4 seeds: entropy 0.50-0.78, P 0.78-0.97; the path
4-4-4 in 3 seeds, 8-4-4 in the fourth). The warm-up's length did not matter there: 0, 1 or 2
warm-up epochs before the same 40 architecture steps all gave 4-4-4 with P 0.96 (seed 2).
Temperature is no separate knob: dividing the logits by T under Adam is the same as
multiplying ``arch_lr`` by 1/T. The diagnostics of every epoch (diagnostics.py) show which case
a search is in.

``search_epochs`` is called as-is by :func:`segflow.search.run.search_local` and by each Ray
worker; after each epoch ``on_epoch(state, record)`` persists the state. The gradient average
and the other collectives are :mod:`segflow.train.collectives`', shared with training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader

from segflow.config import Params
from segflow.data.loader import ShardDataset, batches_of
from segflow.data.shards import read_index
from segflow.data.transforms import train_transform
from segflow.errors import SegflowError
from segflow.search.decode import decode
from segflow.search.diagnostics import epoch_diagnostics
from segflow.search.supernet import Supernet
from segflow.train.collectives import average_gradients, max_divergence_from_rank0, mean_over_ranks
from segflow.train.loop import device_batch, seed_everything
from segflow.train.losses import SegmentationLoss


def split_train(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(trainA, trainB): a seeded permutation of the train indices cut in two halves."""
    order = np.random.default_rng([seed, 13]).permutation(num_samples)
    half = num_samples // 2
    return np.sort(order[:half]), np.sort(order[half:])


class SubsetShardDataset(ShardDataset):
    """A :class:`ShardDataset` over a fixed subset of a split's samples (trainA or trainB).

    The rank/worker split and the per-epoch order work as in the parent, over the subset.
    """

    def __init__(self, shard_dir: str | Path, split: str, indices: np.ndarray, **kwargs) -> None:
        super().__init__(shard_dir, split, **kwargs)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.num_samples = len(self.indices)

    def epoch_order(self) -> np.ndarray:
        return self.indices[super().epoch_order()]


def half_loader(
    params: Params,
    shard_dir: str | Path,
    indices: np.ndarray,
    rank: int,
    world_size: int,
    salt: int,
) -> DataLoader:
    """The augmented, shuffled loader of one half at the search crop."""
    sp = params.search
    lp = params.loader.model_copy(
        update={"crop_height": sp.crop_height, "crop_width": sp.crop_width}
    )
    dataset = SubsetShardDataset(
        shard_dir,
        "train",
        indices,
        transform=train_transform(lp, normalize=False),
        shuffle=True,
        seed=params.seed * 2 + salt,  # the two halves are shuffled independently
        rank=rank,
        world_size=world_size,
        even=True,
        batch_size=sp.batch_size,
    )
    if len(dataset) < sp.batch_size:
        raise SegflowError(
            f"params.yaml: search.batch_size: {sp.batch_size} is more than the {len(dataset)} "
            f"samples each of the {world_size} worker(s) gets from half of the train split"
        )
    return batches_of(dataset, sp.batch_size, lp.num_workers, drop_last=True)


@dataclass
class SearchState:
    model: Supernet
    weight_optimizer: Optimizer
    arch_optimizer: Optimizer
    scheduler: CosineAnnealingLR
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    #: alpha (edges x ops) and beta (layers x 4 x 3) after each epoch, for plots and heat maps.
    arch_history: list[dict] = field(default_factory=list)

    def payload(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "arch_history": self.arch_history,
        }

    def restore(self, payload: dict) -> None:
        self.model.load_state_dict(payload["model"])
        self.weight_optimizer.load_state_dict(payload["weight_optimizer"])
        self.arch_optimizer.load_state_dict(payload["arch_optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.epoch = int(payload["epoch"])
        self.history = list(payload["history"])
        self.arch_history = list(payload["arch_history"])


def make_search_state(params: Params, num_classes: int, steps_per_epoch: int) -> SearchState:
    sp = params.search
    torch.manual_seed(params.seed)  # the same initial weights on every rank
    model = Supernet(
        num_classes, sp.layers, sp.filter_multiplier, sp.blocks, params.seed, sp.head_weights
    )
    weight_opt = torch.optim.SGD(
        model.weight_parameters(), lr=sp.lr, momentum=sp.momentum, weight_decay=sp.weight_decay
    )
    arch_opt = torch.optim.Adam(
        model.arch_parameters(),
        lr=sp.arch_lr,
        betas=(0.5, 0.999),
        weight_decay=sp.arch_weight_decay,
    )
    scheduler = CosineAnnealingLR(weight_opt, T_max=sp.epochs * steps_per_epoch, eta_min=sp.lr_min)
    return SearchState(model, weight_opt, arch_opt, scheduler)


def _step(
    model: Supernet,
    batch: dict,
    loss_fn: torch.nn.Module,
    optimizer: Optimizer,
    parameters: list[torch.nn.Parameter],
    device: torch.device,
    norm: tuple,
) -> float:
    x, y = device_batch(batch, device, norm)
    loss = loss_fn(model(x), y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    average_gradients(parameters)
    optimizer.step()
    return loss.item()


def arch_snapshot(model: Supernet) -> dict:
    """alpha and beta as plain lists (checkpoint-, JSON- and MLflow-friendly)."""
    return {
        "alpha": model.alpha.detach().cpu().tolist(),
        "beta": model.beta.detach().cpu().tolist(),
    }


def search_step(
    state: SearchState,
    batch_a: dict,
    batch_b: dict,
    update_arch: bool,
    loss_fn: torch.nn.Module,
    device: torch.device,
    norm: tuple,
) -> tuple[float, float]:
    """One DARTS step: the architecture on ``batch_b`` (trainB; measured only, without
    ``update_arch``), then the weights on ``batch_a`` (trainA). Returns both losses."""
    model = state.model
    if update_arch:
        arch_loss = _step(
            model, batch_b, loss_fn, state.arch_optimizer, model.arch_parameters(), device, norm
        )
    else:
        x, y = device_batch(batch_b, device, norm)
        with torch.no_grad():
            arch_loss = loss_fn(model(x), y).item()
    weight_loss = _step(
        model, batch_a, loss_fn, state.weight_optimizer, model.weight_parameters(), device, norm
    )
    state.scheduler.step()
    return weight_loss, arch_loss


def aux_skip_coefficient(start: float, step: int, total_steps: int) -> float:
    """DARTS-'s auxiliary skip weight at ``step``: ``start`` decaying linearly to 0 at the end."""
    if start == 0 or total_steps <= 0:
        return 0.0
    return start * max(0.0, 1.0 - step / total_steps)


def epoch_line(record: dict, epochs: int, update_arch: bool) -> str:
    """The log line of one search epoch: losses, diagnostics, path."""
    stable = record["path_stable_epochs"]
    return (
        f"search: epoch {record['epoch']}/{epochs} weight loss {record['weight_loss']:.4f} "
        f"arch loss {record['arch_loss']:.4f}"
        + ("" if update_arch else " (warm-up: architecture frozen)")
        + f" entropy alpha {record['alpha_entropy']:.4f} beta {record['beta_entropy']:.4f}"
        + f" move alpha {record['alpha_move']:.2g} beta {record['beta_move']:.2g}"
        + f" param-free {record['param_free_share']:.2f}"
        + f" path {'-'.join(map(str, record['path']))}"
        + f" ({'changed' if record['path_changed'] else f'same {stable} epoch(s)'})"
        + f" time {record['epoch_seconds']:.1f}s"
    )


EpochHook = Callable[[SearchState, dict], None]


def search_epochs(
    params: Params,
    shard_dir: str | Path,
    device: torch.device,
    on_epoch: EpochHook,
    *,
    rank: int = 0,
    world_size: int = 1,
    resume: dict | None = None,
    echo: Callable[[str], None] | None = print,
) -> SearchState:
    """The whole search of one rank, from ``resume`` (a :meth:`SearchState.payload`) to the end."""
    sp = params.search
    seed_everything(params.seed + rank)
    index = read_index(shard_dir)
    num_classes = int(index["num_classes"])
    train_a, train_b = split_train(int(index["splits"]["train"]["num_samples"]), params.seed)
    loader_a = half_loader(params, shard_dir, train_a, rank, world_size, 0)
    loader_b = half_loader(params, shard_dir, train_b, rank, world_size, 1)
    steps = min(len(loader_a), len(loader_b))
    state = make_search_state(params, num_classes, steps)
    state.model.to(device)
    if resume is not None:
        state.restore(resume)
    model = state.model
    arch = model.arch_parameters()
    loss_fn = SegmentationLoss("ce").to(device)
    norm = (params.loader.mean, params.loader.std)
    say = echo if (echo is not None and rank == 0) else None
    if say and state.epoch > 0:
        say(f"search: resuming after epoch {state.epoch}")
    total_steps = sp.epochs * steps
    for epoch in range(state.epoch, sp.epochs):
        start = time.perf_counter()
        loader_a.dataset.set_epoch(epoch)
        loader_b.dataset.set_epoch(epoch)
        update_arch = epoch >= sp.warmup_epochs
        before = arch_snapshot(model)
        model.train()
        weight_loss = arch_loss = 0.0
        for i, batch_a, batch_b in zip(range(steps), loader_a, loader_b, strict=False):
            model.aux_skip = aux_skip_coefficient(sp.aux_skip, epoch * steps + i, total_steps)
            w, a = search_step(state, batch_a, batch_b, update_arch, loss_fn, device, norm)
            weight_loss += w
            arch_loss += a
        genotype = decode(model.alpha, model.beta)
        state.epoch = epoch + 1
        record = {
            "epoch": state.epoch,
            "weight_loss": mean_over_ranks(weight_loss / max(steps, 1), steps, device),
            "arch_loss": mean_over_ranks(arch_loss / max(steps, 1), steps, device),
            "lr": state.weight_optimizer.param_groups[0]["lr"],
            "arch_updates": float(update_arch),
            "aux_skip": model.aux_skip,
            "epoch_seconds": time.perf_counter() - start,
            "path": list(genotype.path),
            # 0.0 unless the gradient averaging is broken: every rank holds the same alpha, beta
            "arch_rank_divergence": max_divergence_from_rank0(arch),
        }
        previous = {**before, "record": state.history[-1] if state.history else None}
        snapshot = arch_snapshot(model)
        record.update(
            epoch_diagnostics(
                np.asarray(snapshot["alpha"]), np.asarray(snapshot["beta"]), genotype, previous
            )
        )
        state.history.append(record)
        state.arch_history.append(snapshot)
        if say:
            say(epoch_line(record, sp.epochs, update_arch))
        on_epoch(state, record)
    return state
