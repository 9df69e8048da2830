"""Stage train: data/shards -> models/best.pt, models/run.json, reports/train_*; one MLflow run.

With ``tune.enabled`` it trains with the best values of reports/best_train_params.yaml; with
``train.model: autodeeplab`` and ``search.enabled`` it trains the searched genotype.
An interrupted run (kill -9) of the same params and shards is continued after its last
checkpoint, the others are marked KILLED (segflow.train.resume). Ray Train (or the plain loop,
``train.launcher: local``) trains; this stage records the run in MLflow from the driver, then
replaces the stage's outputs together, models/run.json last.
"""

from __future__ import annotations

from pathlib import Path

from segflow import tracking
from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.evaluate.serving import ServingSpec
from segflow.lifecycle.registration import log_served_model
from segflow.logs import console
from segflow.models.genotype import load_genotype
from segflow.paths import (
    BEST_MODEL,
    BEST_TRAIN_PARAMS,
    GENOTYPE,
    MODELS,
    RUN_INFO,
    SHARDS,
    TRAIN_CURVE,
    TRAIN_METRICS,
)
from segflow.train.outputs import publish, staging
from segflow.train.resume import plan_run, run_tags
from segflow.train.run import preflight, train
from segflow.tune.best_params import tuned_params


def main(params: Params) -> None:
    verify_shards(SHARDS)  # a damaged shard: one line naming it, before any worker starts
    params = with_searched_genotype(params, GENOTYPE)
    params, tune_tags = tuned_params(params, BEST_TRAIN_PARAMS)
    index = preflight(params, SHARDS)
    plan = plan_run(params, index, tracking.setup(params.train.experiment))
    params = plan.params
    if plan.note:
        console.print(plan.note)
    if plan.killed:
        console.print(f"train: marked interrupted MLflow run(s) {', '.join(plan.killed)} KILLED")
    tags = {**run_tags(params), **tune_tags}
    run_id = tracking.start_training_run(params, index, run_id=plan.mlflow_run_id, tags=tags)
    try:
        with staging(MODELS) as scratch:
            outcome = train(params, SHARDS, scratch)
            tracking.log_history(outcome.history)
            # The run's model: the best checkpoint served as evaluate serves it, without the
            # CRF (crf_tune has not chosen one yet); pickle-free, as the registered one.
            serving = ServingSpec.from_params(params, index.get("resize"), None).to_dict()
            classes = index.get("classes", [])
            model_uri = log_served_model(outcome.best_checkpoint, serving, classes, name="model")
            run_info = {
                "mlflow_run_id": run_id,
                "mlflow_tracking_uri": tracking.public_uri(tracking.tracking_uri()),
                "model_uri": model_uri,
                "ray_run_name": outcome.run_name,
                "ray_run_path": outcome.run_path,
            }
            summary = publish(
                outcome.best_checkpoint,
                outcome.history,
                run_info,
                best=BEST_MODEL,
                curve=TRAIN_CURVE,
                metrics=TRAIN_METRICS,
                info=RUN_INFO,
            )
    except BaseException:
        tracking.end_run("FAILED")
        raise
    tracking.end_run()
    console.print(
        f"train: best val mIoU {summary['best_val_miou']:.4f} at epoch {summary['best_epoch']} "
        f"-> {BEST_MODEL} (MLflow run {run_id})"
    )


def with_searched_genotype(params: Params, genotype_path: Path) -> Params:
    """``params`` whose autodeeplab trains the searched genotype, when search is on.

    Only for ``train.model: autodeeplab`` with ``search.enabled`` and no genotype of the
    user's own in ``train.model_options``. The genotype goes into the options inline, not as
    a path, so the checkpoint (and the registered model) rebuilds the network it was trained
    as even after a later search rewrites the file.
    """
    p = params.train
    if p.model != "autodeeplab" or not params.search.enabled or "genotype" in p.model_options:
        return params
    options = {**p.model_options, "genotype": load_genotype(genotype_path).to_json()}
    return params.model_copy(update={"train": p.model_copy(update={"model_options": options})})
