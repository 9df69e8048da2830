"""Ray Tune sweep over training hyper-parameters (lr, weight decay, batch, crop, model).

Each trial is one process running the plain loop (:func:`segflow.train.loop.train_epochs`) for
``tune.max_epochs`` epochs and reporting val mIoU after every epoch; no Ray Train inside Tune,
so a trial costs one process and ``cpus_per_trial`` threads. ASHA stops the weak trials at its
rungs; the search is Optuna's TPE (seeded) or random sampling.

Crop and model choices are sampled as indices into the params lists: Optuna's categorical
choices must be plain scalars, not lists or mappings.

The tune stage (:mod:`segflow.stages.tune`) logs the sweep to MLflow from the driver after
``tuner.fit()`` (the workers never touch the store) and writes reports/best_train_params.yaml
(:mod:`.best_params`), which feeds the train stage when ``tune.enabled``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segflow.config import Params, TuneModelChoice
from segflow.data.shards import read_index
from segflow.data.store import location
from segflow.errors import SegflowError
from segflow.storage import check_storage, open_storage
from segflow.tune.best_params import METRIC, train_values


def param_space(params: Params) -> dict[str, Any]:
    """The Ray Tune ``param_space`` of ``params.tune`` (choices of crops/models as indices)."""
    from ray import tune

    t = params.tune
    space: dict[str, Any] = {
        "lr": tune.loguniform(*t.lr),
        "weight_decay": tune.loguniform(*t.weight_decay),
        "batch_size": tune.choice(list(t.batch_size)),
    }
    if t.crops:
        space["crop"] = tune.choice(list(range(len(t.crops))))
    if t.models:
        space["model"] = tune.choice(list(range(len(t.models))))
    return space


def apply_trial(params: Params, config: dict) -> Params:
    """``params`` with a trial's values set on ``train`` and ``loader`` (epochs = max_epochs)."""
    t = params.tune
    train: dict[str, Any] = {"epochs": t.max_epochs}
    loader: dict[str, Any] = {}
    for key in ("lr", "weight_decay", "batch_size"):
        if key in config:
            train[key] = config[key]
    if "model" in config:
        choice: TuneModelChoice = t.models[int(config["model"])]
        train.update(choice.model_dump())
    if "crop" in config:
        loader["crop_height"], loader["crop_width"] = t.crops[int(config["crop"])]
    # model_validate, not model_copy: the updated sections are validated like params.yaml.
    new_train = type(params.train).model_validate({**params.train.model_dump(), **train})
    new_loader = type(params.loader).model_validate({**params.loader.model_dump(), **loader})
    return params.model_copy(update={"train": new_train, "loader": new_loader})


def _run_trial(config: dict, params: Params, shard_dir: str) -> None:
    import torch
    from ray import tune

    from segflow.train.loop import TrainingDiverged, train_epochs

    trial_params = apply_trial(params, config)
    # A trial decodes in its own process whatever loader.backend says: Ray Data's tasks would
    # wait for CPUs that the sweep's trials hold.
    mmap = trial_params.loader.model_copy(update={"backend": "mmap"})
    trial_params = trial_params.model_copy(update={"loader": mmap})
    torch.set_num_threads(max(1, int(params.tune.cpus_per_trial)))
    use_gpu = params.tune.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")
    epochs_done = 0

    def on_epoch(state, record: dict, is_best: bool) -> None:
        nonlocal epochs_done
        epochs_done = int(record["epoch"])
        # ASHA reads training_iteration (one per report = one per epoch); a stopped trial
        # ends inside this call.
        tune.report({k: v for k, v in record.items() if isinstance(v, int | float)})

    try:
        train_epochs(trial_params, shard_dir, device, on_epoch, echo=None)
    except TrainingDiverged:
        # A setting that diverges (too high an lr) is a bad point of the space, not a failed
        # sweep: it ends with the worst mIoU there is, and the search moves away from it.
        tune.report({"epoch": epochs_done + 1, METRIC: 0.0, "diverged": 1.0})


@dataclass
class TrainSweepResult:
    """The best trial's values (train/loader keys) and score, and every trial, best first."""

    best: dict
    best_miou: float
    trials: list[dict]
    seconds: float = 0.0
    parent_run_id: str | None = None  # set by the stage once the sweep is logged to MLflow


def _score(value: Any) -> float:
    return -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else value


def train_sweep(
    params: Params,
    shard_dir: str | Path,
    storage_path: str | Path,
    name: str = "train_tune",
    num_cpus: int | None = None,
) -> TrainSweepResult:
    """Sweep ``params.tune``'s space on the shards; the trial with the best final val mIoU wins.

    Each trial row holds its sampled ``config``, the resulting ``train``/``loader`` values, its
    final ``selection_miou`` (dev, else val), ``best_miou`` over its epochs and ``epochs`` run
    (fewer than max_epochs when ASHA stopped it). ``seconds`` is the sweep's wall time.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from segflow.raycluster import connect_ray

    t = params.tune
    shard_dir = location(shard_dir)  # absolute: workers run elsewhere
    # What would fail in every trial fails here once, before Ray starts.
    index = read_index(shard_dir)
    num_train = int(index.get("splits", {}).get("train", {}).get("num_samples", 0))
    if max(t.batch_size) > num_train:
        raise SegflowError(
            f"tune.batch_size: {max(t.batch_size)} exceeds the {num_train} training samples "
            f"in {shard_dir}: no full training batch"
        )
    for i in range(len(t.models)):  # every architecture must build before a trial starts
        apply_trial(params, {"model": i})
    check_storage(str(storage_path), "train.storage_path")
    filesystem, storage = open_storage(str(storage_path))
    connect_ray(num_cpus)
    search_alg = None
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=params.seed)
    resources = {"cpu": t.cpus_per_trial}
    if t.gpus_per_trial > 0:
        resources["gpu"] = t.gpus_per_trial
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, params=params, shard_dir=str(shard_dir)), resources
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=t.max_epochs,
        grace_period=t.grace_period,
        reduction_factor=t.reduction_factor,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(params),
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=t.num_samples,
        ),
        run_config=tune.RunConfig(
            storage_path=storage, storage_filesystem=filesystem, name=name, verbose=0
        ),
    )
    started = time.time()
    results = tuner.fit()
    if results.errors:
        raise SegflowError(f"tune: {len(results.errors)} trial(s) failed: {results.errors[0]}")

    trials = []
    for result in results:
        history = result.metrics_dataframe
        mious = [float(v) for v in history[METRIC]] if history is not None else []
        trials.append(
            {
                "trial_id": result.metrics.get("trial_id", ""),
                "config": dict(result.config),
                **train_values(apply_trial(params, result.config)),
                METRIC: float(result.metrics[METRIC]),
                "best_miou": max(mious) if mious else float(result.metrics[METRIC]),
                "epochs": int(result.metrics["epoch"]),
                "history": mious,
            }
        )
    trials.sort(key=lambda row: -_score(row[METRIC]))  # stable: ties keep trial order
    best = trials[0]
    out = TrainSweepResult(
        best={"train": best["train"], "loader": best["loader"]},
        best_miou=best[METRIC],
        trials=trials,
    )
    out.seconds = time.time() - started
    return out
