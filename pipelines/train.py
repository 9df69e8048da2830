"""Stage train: data/shards -> models/best.pt, models/run.json, reports/train_*; one MLflow run.

Ray Train (or the plain loop, ``train.launcher: local``) trains; this script then records the
run in MLflow from the driver and writes the stage's outputs, each atomically.
"""

import torch

from segflow import tracking
from segflow.config import Params
from segflow.io import write_json
from segflow.paths import (
    BEST_MODEL,
    GENOTYPE,
    MODELS,
    RUN_INFO,
    SHARDS,
    TRAIN_CURVE,
    TRAIN_METRICS,
)
from segflow.search.outputs import with_searched_genotype
from segflow.stage import console, run_stage
from segflow.train.distributed import preflight, train, with_run_name
from segflow.train.loop import load_model
from segflow.train.outputs import write_curve, write_metrics


def main(params: Params) -> None:
    params = with_run_name(with_searched_genotype(params, GENOTYPE))
    index = preflight(params, SHARDS)
    run_id = tracking.start_training_run(params, index)
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
