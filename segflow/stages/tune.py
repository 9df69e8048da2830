"""Stage tune: data/shards -> reports/best_train_params.yaml (a training hyper-parameter sweep).

Off by default (``tune.enabled: false``): the stage then writes the current train/loader values
without starting Ray, so ``dvc repro`` stays fast. Enabled, it runs the Ray Tune sweep of
:mod:`segflow.tune.train_search` (trial files under ray_results/train_tune), logs it to MLflow
(a parent run with a child per trial) and writes the best values; with it on, the train stage
trains with them.
"""

from __future__ import annotations

import time
from pathlib import Path

from segflow import tracking
from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.logs import console
from segflow.paths import BEST_TRAIN_PARAMS
from segflow.tune.best_params import METRIC, disabled_result, sweep_result, write_best_params
from segflow.tune.train_search import TrainSweepResult, train_sweep


def main(params: Params) -> None:
    shards = params.shard.uri  # a local directory or an object-store prefix
    if not params.tune.enabled:
        write_best_params(BEST_TRAIN_PARAMS, disabled_result(params))
        console.print(
            f"tune: disabled (tune.enabled: false); current values -> {BEST_TRAIN_PARAMS}"
        )
        return
    verify_shards(shards)  # a damaged shard: one line naming it, before any trial starts
    result = train_sweep(params, shards, params.train.storage_path)
    result.parent_run_id = log_sweep(params, result)
    write_best_params(BEST_TRAIN_PARAMS, sweep_result(result))
    console.print(
        f"tune: {len(result.trials)} trials, best mIoU {result.best_miou:.4f} with "
        f"{result.best} -> {BEST_TRAIN_PARAMS}"
    )


def log_sweep(params: Params, result: TrainSweepResult, root: str | Path = ".") -> str:
    """A parent MLflow run for the sweep (experiment ``train.experiment``), one nested child
    per trial; returns the parent's id."""
    import mlflow

    experiment_id = tracking.setup(params.train.experiment, root)
    name = time.strftime("tune-%Y%m%d-%H%M%S")
    with mlflow.start_run(experiment_id=experiment_id, run_name=name) as parent:
        mlflow.set_tags({"stage": "tune", "git_commit": tracking.git_commit(root)})
        mlflow.log_params(tracking.flatten({"tune": params.tune.model_dump(mode="json")}))
        mlflow.log_params(tracking.flatten({"best": result.best}))
        mlflow.log_metrics(
            {"best_miou": result.best_miou, "trials": len(result.trials),
             "seconds": result.seconds}
        )  # fmt: skip
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
                mlflow.log_metrics({"final_miou": row[METRIC],
                                    "best_miou": row["best_miou"],
                                    "epochs": row["epochs"]})  # fmt: skip
        return parent.info.run_id
