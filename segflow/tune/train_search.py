"""Ray Tune sweep over training hyper-parameters (lr, weight decay, batch, crop, model).

Each trial is one process running the plain loop (:func:`segflow.train.loop.train_epochs`) for
``tune.max_epochs`` epochs and reporting val mIoU after every epoch; no Ray Train inside Tune,
so a trial costs one process and ``cpus_per_trial`` threads. ASHA stops the weak trials at its
rungs; the search is Optuna's TPE (seeded) or random sampling.

Crop and model choices are sampled as indices into the params lists: Optuna's categorical
choices must be plain scalars, not lists or mappings.

MLflow gets one parent run for the sweep and a nested child run per trial, logged from the
driver after ``tuner.fit()`` from Tune's results (the workers never touch the store).

The sweep feeds the train stage: with ``tune.enabled: true`` the train stage reads
reports/best_train_params.yaml (a DVC dependency, so ``dvc repro`` runs tune -> train) and
trains with the best trial's values (:func:`tuned_params`); the epochs stay params.yaml's, since
a trial's epochs are the sweep's budget, not the training length.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from segflow.config import Params, TuneModelChoice
from segflow.data.shards import read_index
from segflow.errors import SegflowError
from segflow.io import atomic_path

METRIC = "val_miou"
#: The train/loader keys a sweep can change, i.e. what best_train_params.yaml holds.
TRAIN_KEYS = ("model", "backbone", "output_stride", "model_options", "lr", "weight_decay",
              "batch_size", "epochs")  # fmt: skip
LOADER_KEYS = ("crop_height", "crop_width")


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


def train_values(params: Params) -> dict:
    """The sweepable keys of ``params`` as ``{"train": {...}, "loader": {...}}``."""
    train = params.train.model_dump(mode="json")
    loader = params.loader.model_dump(mode="json")
    return {
        "train": {k: train[k] for k in TRAIN_KEYS},
        "loader": {k: loader[k] for k in LOADER_KEYS},
    }


def _run_trial(config: dict, params: Params, shard_dir: str) -> None:
    import torch
    from ray import tune

    from segflow.train.loop import train_epochs

    trial_params = apply_trial(params, config)
    torch.set_num_threads(max(1, int(params.tune.cpus_per_trial)))
    use_gpu = params.tune.gpus_per_trial > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_gpu else "cpu")

    def on_epoch(state, record: dict, is_best: bool) -> None:
        # ASHA reads training_iteration (one per report = one per epoch); a stopped trial
        # ends inside this call.
        tune.report({k: v for k, v in record.items() if isinstance(v, int | float)})

    train_epochs(trial_params, Path(shard_dir), device, on_epoch, echo=None)


@dataclass
class TrainSweepResult:
    """The best trial's values (train/loader keys) and score, and every trial, best first."""

    best: dict
    best_miou: float
    trials: list[dict]
    parent_run_id: str | None = None


def _score(value: Any) -> float:
    return -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else value


def train_sweep(
    params: Params,
    shard_dir: str | Path,
    storage_path: str | Path,
    name: str = "train_tune",
    num_cpus: int | None = None,
    track: bool = True,
    root: str | Path = ".",
) -> TrainSweepResult:
    """Sweep ``params.tune``'s space on the shards; the trial with the best final val mIoU wins.

    Each trial row holds its sampled ``config``, the resulting ``train``/``loader`` values, its
    final ``val_miou``, ``best_val_miou`` over its epochs and ``epochs`` run (fewer than
    max_epochs when ASHA stopped it). With ``track`` the sweep is logged to MLflow (experiment
    ``train.experiment``): a parent run plus one nested run per trial.
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from segflow.raycluster import connect_ray

    t = params.tune
    shard_dir = Path(shard_dir).resolve()
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
            storage_path=str(Path(storage_path).resolve()), name=name, verbose=0
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
                "best_val_miou": max(mious) if mious else float(result.metrics[METRIC]),
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
    if track:
        out.parent_run_id = log_sweep(params, out, time.time() - started, root)
    return out


def log_sweep(params: Params, result: TrainSweepResult, seconds: float, root: str | Path) -> str:
    """A parent MLflow run for the sweep, one nested child per trial; returns the parent's id."""
    import mlflow

    from segflow import tracking

    experiment_id = tracking.setup(params.train.experiment, root)
    name = time.strftime("tune-%Y%m%d-%H%M%S")
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as parent:
        mlflow.set_tags({"stage": "tune", "git_commit": tracking.git_commit(root)})
        mlflow.log_params(tracking.flatten({"tune": params.tune.model_dump(mode="json")}))
        mlflow.log_params(tracking.flatten({"best": result.best}))
        mlflow.log_metrics(
            {"best_val_miou": result.best_miou, "trials": len(result.trials), "seconds": seconds}
        )
        for row in result.trials:
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=f"trial-{row['trial_id']}", nested=True
            ):
                mlflow.set_tags({"stage": "tune", "trial_id": row["trial_id"]})
                mlflow.log_params(
                    tracking.flatten({"train": row["train"], "loader": row["loader"]})
                )
                for epoch, miou in enumerate(row["history"], start=1):
                    mlflow.log_metric(METRIC, miou, step=epoch)
                mlflow.log_metrics({"final_val_miou": row[METRIC],
                                    "best_val_miou": row["best_val_miou"],
                                    "epochs": row["epochs"]})  # fmt: skip
        return parent.info.run_id


def write_best_params(path: str | Path, best: dict) -> None:
    """Write ``best`` (``enabled``, score, ``train``/``loader`` keys) as YAML, atomically."""
    text = (
        "# Best values of the tune stage; with tune.enabled the train stage trains with them.\n"
        + yaml.safe_dump(best, sort_keys=False)
    )
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def disabled_result(params: Params) -> dict:
    """What the stage writes with ``tune.enabled: false``: the current values, no sweep."""
    return {"enabled": False, **train_values(params)}


def sweep_result(result: TrainSweepResult) -> dict:
    """The stage's file for a finished sweep: best values, score and a one-line-per-trial table."""
    return {
        "enabled": True,
        METRIC: result.best_miou,
        "trial_id": result.trials[0]["trial_id"] if result.trials else None,
        "mlflow_parent_run_id": result.parent_run_id,
        **result.best,
        "trials": [
            {
                "trial_id": r["trial_id"],
                METRIC: r[METRIC],
                "epochs": r["epochs"],
                **{k: r["train"][k] for k in ("lr", "weight_decay", "batch_size", "model")},
                "crop": [r["loader"]["crop_height"], r["loader"]["crop_width"]],
            }
            for r in result.trials
        ],  # fmt: skip
    }


def tuned_params(params: Params, path: str | Path) -> tuple[Params, dict[str, str]]:
    """``params`` with the sweep's best train/loader values when ``tune.enabled`` (epochs kept),
    and the MLflow tags that say where they came from; ``params`` unchanged when it is off."""
    if not params.tune.enabled:
        return params, {}
    path = Path(path)
    hint = "run the tune stage (dvc repro tune)"
    if not path.is_file():
        raise SegflowError(f"{path}: not found; tune.enabled is true: {hint}")
    try:
        best = yaml.safe_load(path.read_text())
        enabled, train, loader = best["enabled"], dict(best["train"]), dict(best["loader"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise SegflowError(
            f"{path}: not a tune result ({type(exc).__name__}: {exc}); {hint}"
        ) from None
    if enabled is not True:
        raise SegflowError(f"{path}: written with tune.enabled false; {hint} with it on")
    train.pop("epochs", None)
    try:
        new_train = type(params.train).model_validate({**params.train.model_dump(), **train})
        new_loader = type(params.loader).model_validate({**params.loader.model_dump(), **loader})
    except ValueError as exc:
        raise SegflowError(f"{path}: tuned values do not validate: {exc}") from None
    tags = {
        "tune.trial_id": str(best.get("trial_id")),
        "tune.parent_run_id": str(best.get("mlflow_parent_run_id")),
        "tune.val_miou": str(best.get(METRIC)),
        "tune.source": str(path),
    }
    return params.model_copy(update={"train": new_train, "loader": new_loader}), tags


__all__ = [
    "TrainSweepResult",
    "apply_trial",
    "disabled_result",
    "log_sweep",
    "param_space",
    "sweep_result",
    "train_sweep",
    "train_values",
    "tuned_params",
    "write_best_params",
]
