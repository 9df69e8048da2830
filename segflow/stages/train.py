"""Stage train: data/shards -> models/best.pt, models/run.json, reports/train_*; one MLflow run.

With ``tune.enabled`` it trains with the best values of reports/best_train_params.yaml; with
``train.model: autodeeplab`` and ``search.enabled`` it trains the searched genotype.
An interrupted run (kill -9) of the same params and shards is continued after its last
checkpoint, the others are marked KILLED (segflow.train.resume). Ray Train (or the plain loop,
``train.launcher: local``) trains; this stage records the run in MLflow from the driver, then
replaces the stage's outputs together, models/run.json last.

SIGTERM is a pre-emption (segflow.train.preemption): training stops at its last checkpoint, no
output is replaced, the MLflow run stays RUNNING (tagged ``segflow.interrupted``) for the next
run to continue, and the stage exits 143 (128 + SIGTERM, what a shell reports for it).

With ``train.time_budget_min`` the budget counts from this stage's start (segflow.train.budget),
and the run records what it allowed: metrics ``budget_epochs``, ``budget_images_per_second``,
``budget_epoch_seconds``, ``budget_spent_min``, ``budget_deadline_min`` (earlier than the
budget when training ran slower than ``train.time_budget_reference_ips``), ``budget_slowdown``
and the tag ``segflow.budget_stopped_by``, beside the param ``train.time_budget_min``; the log
says it in one line.
"""

from __future__ import annotations

import time
from pathlib import Path

from segflow import tracking
from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.logs import console
from segflow.models.genotype import load_genotype
from segflow.paths import (
    BEST_MODEL,
    BEST_TRAIN_PARAMS,
    GENOTYPE,
    MODELS,
    RUN_INFO,
    TRAIN_CURVE,
    TRAIN_METRICS,
)
from segflow.storage import is_uri
from segflow.train.loop import TrainingStopped
from segflow.train.outputs import publish, staging
from segflow.train.precision import describe_precision
from segflow.train.preemption import SigtermStop
from segflow.train.resume import INTERRUPTED_TAG, plan_run, prune_runs, run_tags
from segflow.train.run import preflight, train
from segflow.tune.best_params import tuned_params

#: The exit status of a stage stopped by SIGTERM: 128 + 15, as if the signal had ended it.
EXIT_SIGTERM = 143


def main(params: Params) -> None:
    shards = params.shard.uri  # a local directory or an object-store prefix
    since = time.time()  # a time budget counts the stage's start-up too
    stop = SigtermStop.install()  # from here on, SIGTERM stops the run at a checkpoint
    verify_shards(shards)  # a damaged shard: one line naming it, before any worker starts
    params = with_searched_genotype(params, GENOTYPE)
    params, tune_tags = tuned_params(params, BEST_TRAIN_PARAMS)
    index = preflight(params, shards)
    device = "cuda" if params.train.use_gpu else "cpu"
    console.print(f"train: {describe_precision(device, params.train.bf16)}")
    plan = plan_run(params, index, tracking.setup(params.train.experiment))
    params = plan.params
    if plan.note:
        console.print(plan.note)
    if plan.killed:
        console.print(f"train: marked interrupted MLflow run(s) {', '.join(plan.killed)} KILLED")
    if is_uri(params.train.storage_path):
        console.print(
            f"train: train.keep_runs not applied to {params.train.storage_path}: old runs in "
            "an object store are left to its lifecycle rules (e.g. an expiry on the prefix)"
        )
    pruned = prune_runs(params, params.train.keep_runs, protect=params.train.run_name)
    if pruned:
        console.print(
            f"train: deleted {len(pruned)} old run(s) from {params.train.storage_path} "
            f"(train.keep_runs: {params.train.keep_runs}): {', '.join(pruned)}"
        )
    tags = {**run_tags(params), **tune_tags}
    run_id = tracking.start_training_run(params, index, run_id=plan.mlflow_run_id, tags=tags)
    if plan.interrupted_by:
        mlflow_client().delete_tag(run_id, INTERRUPTED_TAG)  # it runs again
    try:
        with staging(MODELS) as scratch:
            outcome = train(params, shards, scratch, stop=stop, since=since)
            # The last point to stop at: what follows is bookkeeping of a finished training
            # (seconds), and a run that has replaced models/* must end FINISHED.
            stop.check()
            tracking.log_history(outcome.history)
            if outcome.budget is not None:
                tracking.log_budget(outcome.budget)
            # No model is logged here: the run gets one model, the served one (with the CRF
            # crf_tune decides on later), logged and registered by the register stage.
            # What the evaluation report's header names (segflow.stages.evaluate):
            run_info = {
                "mlflow_run_id": run_id,
                "mlflow_run_name": tracking.mlflow_run_name(params),
                "mlflow_tracking_uri": tracking.public_uri(tracking.tracking_uri()),
                "model": params.train.model,
                "backbone": params.train.backbone,
                "git_commit": tracking.git_commit(),
                "shards_content_hash": index.get("content_hash"),
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
    except BaseException as exc:
        if not stop():
            tracking.end_run("FAILED")
            raise
        # Whatever ended the training after a SIGTERM (the stop itself, or a data-loader
        # process the same signal killed) is the pre-emption.
        keep_for_resume(run_id, stop.signal)
        where = ""
        if isinstance(exc, TrainingStopped):
            where = f" in epoch {exc.epoch} (before step {exc.step} of {exc.steps})"
        console.print(
            f"train: {stop.signal}: stopped run {params.train.run_name!r}{where} at its last "
            f"checkpoint; the next `dvc repro` continues it (MLflow run {run_id})"
        )
        raise SystemExit(EXIT_SIGTERM) from None
    tracking.end_run()
    if outcome.budget is not None:
        console.print(budget_line(outcome.budget))
    console.print(
        f"train: best {summary['selected_on']} mIoU "
        f"{summary.get('best_dev_miou', summary['best_val_miou']):.4f} at epoch "
        f"{summary['best_epoch']} "
        f"-> {BEST_MODEL} (MLflow run {run_id})"
    )


def budget_line(budget: dict) -> str:
    """What the time budget allowed on this machine, in one line: why a run here trained more
    or fewer epochs than the same params elsewhere."""
    why = {"budget": "the budget", "epochs": "train.epochs"}.get(budget["budget_stopped_by"], "")
    line = (
        f"train: time budget {budget['time_budget_min']:g} min: {budget['budget_epochs']} "
        f"epoch(s) in {budget['budget_spent_min']:.1f} min"
    )
    if budget["budget_epoch_seconds"] == budget["budget_epoch_seconds"]:  # not nan: measured
        line += (
            f", {budget['budget_images_per_second']:.1f} images/s, "
            f"~{budget['budget_epoch_seconds']:.0f} s an epoch with validation"
        )
    early = budget["time_budget_min"] - budget["budget_deadline_min"]
    if early > 0:
        line += (
            f"; ended {early:.1f} min early for the later stages (training "
            f"{budget['budget_slowdown']:.1f}x slower than train.time_budget_reference_ips)"
        )
    return line + (f"; stopped by {why}" if why else "")


def mlflow_client():
    import mlflow

    return mlflow.MlflowClient()


def keep_for_resume(run_id: str, signal_name: str) -> None:
    """Leave the MLflow run RUNNING, tagged with the signal, for the next run to continue.

    Ended with status RUNNING (not left open): MLflow's exit hook would otherwise end the open
    run FINISHED, and :mod:`segflow.train.resume` continues only RUNNING runs.
    """
    import mlflow

    mlflow_client().set_tag(run_id, INTERRUPTED_TAG, signal_name)
    mlflow.end_run(status="RUNNING")


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
