"""Fault injection for tests: a process that dies right after an epoch's checkpoint is saved,
and a loss that turns non-finite part-way.

Production code carries no test hooks. A test that needs a crash wraps the core loop
(:func:`segflow.train.loop.train_epochs` or :func:`segflow.search.loop.search_epochs`, both
``(params, shard_dir, device, on_epoch, **kwargs)``) so that the process exits hard
(``os._exit(1)``, no clean-up, like a kill) on rank 0 just after ``on_epoch`` of the chosen
epoch has saved or reported its checkpoint: in this process with ``monkeypatch``, or inside Ray
Train's worker processes with :func:`crashing_ray_worker`. A test that needs a diverging run
wraps :func:`segflow.train.loop.build_loss` with :func:`nan_loss_from`.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable


def crash_after_epoch(core: Callable, epoch: int, wait_s: float = 0.0) -> Callable:
    """``core`` whose process exits with code 1 right after rank 0's ``on_epoch`` of ``epoch``.

    ``wait_s`` sleeps first: Ray Train's controller collects a report only at its next health
    check, and the crash must land after a checkpoint Ray knows about.
    """

    def wrapped(params, shard_dir, device, on_epoch, **kwargs):
        def hook(state, *rest):
            on_epoch(state, *rest)
            if state.epoch == epoch and kwargs.get("rank", 0) == 0:
                time.sleep(wait_s)
                sys.stdout.write(f"fault: exiting after epoch {epoch}\n")
                sys.stdout.flush()
                os._exit(1)

        return core(params, shard_dir, device, hook, **kwargs)

    return wrapped


def patched_in_worker(
    worker: Callable, module: str, name: str, wrap: Callable[[Callable], Callable]
) -> Callable:
    """``worker`` (a Ray Train worker function or a Tune trainable) that runs with
    ``module.name`` replaced by ``wrap(module.name)`` in the worker's own process, and put back
    after. Pickled by value (see :func:`register_by_value`), so Ray's workers need not import
    tests/."""

    def run(*args, **kwargs):
        target = importlib.import_module(module)
        original = getattr(target, name)
        setattr(target, name, wrap(original))
        try:
            return worker(*args, **kwargs)
        finally:
            setattr(target, name, original)

    return run


def crashing_ray_worker(
    worker: Callable[[dict], dict], module: str, name: str, epoch: int, wait_s: float
) -> Callable[[dict], dict]:
    """A Ray Train worker function that runs ``worker`` with ``module.name`` (the core loop it
    calls) replaced by :func:`crash_after_epoch`: every attempt that reaches ``epoch``
    crashes, so a restart that resumes after it finishes."""
    return patched_in_worker(
        worker, module, name, lambda core: crash_after_epoch(core, epoch, wait_s)
    )


def register_by_value() -> None:
    """Make Ray pickle this module's functions by value (workers do not import tests/)."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def nan_loss_from(
    build_loss: Callable,
    step: int,
    steps: int | None = None,
    on_first: Callable[[], None] | None = None,
) -> Callable:
    """``build_loss`` whose loss is nan from training step ``step`` (1-based, counted over the
    run) on, for ``steps`` steps (None: for good); ``on_first`` runs just before the first nan.

    The nan is the real loss times nan, so its gradients are nan too, as in a diverged run.
    """

    def wrapped(*args, **kwargs):
        loss_fn = build_loss(*args, **kwargs)
        forward = loss_fn.forward
        calls = 0

        def faulty(*inputs):
            nonlocal calls
            calls += 1
            value = forward(*inputs)
            if calls == step and on_first is not None:
                on_first()
            if calls >= step and (steps is None or calls < step + steps):
                return value * float("nan")
            return value

        loss_fn.forward = faulty  # nn.Module.__call__ calls the instance's forward
        return loss_fn

    return wrapped
