"""Stage train: data/shards -> models/best.pt, models/run.json, reports/train_*; one MLflow run.

With ``tune.enabled`` it trains with the best values of reports/best_train_params.yaml.

Ray Train (or the plain loop, ``train.launcher: local``) trains; this script then records the
run in MLflow from the driver and writes the stage's outputs, each atomically.
"""

import torch

from segflow import tracking
from segflow.config import Params
from segflow.io import write_json
from segflow.paths import (
    BEST_MODEL,
    BEST_TRAIN_PARAMS,
    MODELS,
    RUN_INFO,
    SHARDS,
    TRAIN_CURVE,
    TRAIN_METRICS,
)
from segflow.stage import console, run_stage
from segflow.train.distributed import preflight, train, with_run_name
from segflow.train.loop import load_model
from segflow.train.outputs import write_curve, write_metrics
from segflow.tune.train_search import tuned_params


def main(params: Params) -> None:
    params, tune_tags = tuned_params(with_run_name(params), BEST_TRAIN_PARAMS)
    index = preflight(params, SHARDS)
    run_id = tracking.start_training_run(params, index, tags=tune_tags)
    try:
        outcome = train(params, SHARDS, MODELS)
        write_curve(outcome.history, TRAIN_CURVE)
        summary = write_metrics(outcome.history, TRAIN_METRICS)
        tracking.log_history(outcome.history)
        example = torch.randn(1, 3, params.loader.crop_height, params.loader.crop_width)
        model_uri = tracking.log_model(load_model(BEST_MODEL), example)
    except BaseException:
        tracking.end_run("FAILED")
        raise
    tracking.end_run()
    write_json(
        RUN_INFO,
        {
            "mlflow_run_id": run_id,
            "mlflow_tracking_uri": tracking.tracking_uri(),
            "model_uri": model_uri,
            "ray_run_name": outcome.run_name,
            "ray_run_path": outcome.run_path,
        },
    )
    console.print(
        f"train: best val mIoU {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']} "
        f"-> {BEST_MODEL} (MLflow run {run_id})"
    )


if __name__ == "__main__":
    run_stage(main)
