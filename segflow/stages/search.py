"""Stage search: data/shards -> reports/search/genotype.json, reports/search/history/; MLflow run.

Off by default (``search.enabled: false``): the stage then writes the paper's architecture as
the genotype and an empty history, without starting Ray. Enabled, it runs Auto-DeepLab's
architecture search (:mod:`segflow.search`) and, with ``train.model: autodeeplab``, the train
stage trains the genotype it finds.
"""

from __future__ import annotations

from pathlib import Path

from segflow import tracking
from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.logs import console
from segflow.paths import GENOTYPE, SEARCH_HISTORY
from segflow.search.outputs import disabled_outputs, final_genotype, write_outputs
from segflow.search.run import preflight, search
from segflow.train.distributed import with_run_name


def main(params: Params) -> None:
    shards = params.shard.uri  # a local directory or an object-store prefix
    if not params.search.enabled:
        disabled_outputs(GENOTYPE, SEARCH_HISTORY)
        console.print(
            f"search: disabled (search.enabled: false); the paper's genotype -> {GENOTYPE}"
        )
        return
    verify_shards(shards)  # a damaged shard: one line naming it, before any worker starts
    params = with_run_name(params, "search")
    index = preflight(params, shards)
    outcome = search(params, shards)
    genotype = final_genotype(outcome.arch_history)
    write_outputs(genotype, outcome.history, outcome.arch_history, GENOTYPE, SEARCH_HISTORY)
    run_id = log_search_run(params, index, outcome.history, GENOTYPE, SEARCH_HISTORY)
    console.print(
        f"search: path {'-'.join(map(str, genotype.path))} -> {GENOTYPE} (MLflow run {run_id})"
    )


def log_search_run(
    params: Params, index: dict, outcome_history: list[dict], genotype_path: Path, history_dir: Path
) -> str:
    """One MLflow run: flattened params, both losses per epoch, the genotype and the plots."""
    import mlflow

    experiment_id = tracking.setup(params.search.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=params.search.run_name) as run:
        mlflow.log_params(
            tracking.flatten({"seed": params.seed, "search": params.search.model_dump(mode="json")})
        )
        mlflow.set_tags(
            {
                "git_commit": tracking.git_commit(),
                "shards_content_hash": index.get("content_hash", "unknown"),
                "dataset": index.get("dataset", "unknown"),
                "stage": "search",
                "genotype.path": "-".join(map(str, outcome_history[-1]["path"])),
            }
        )
        tracking.log_history(outcome_history)
        mlflow.log_artifact(str(genotype_path))
        mlflow.log_artifacts(str(history_dir), artifact_path="history")
        return run.info.run_id
