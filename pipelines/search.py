"""Stage search: data/shards -> reports/search/genotype.json, reports/search/history/; MLflow run.

Off by default (``search.enabled: false``): the stage then writes the paper's architecture as
the genotype and an empty history, without starting Ray. Enabled, it runs Auto-DeepLab's
architecture search (:mod:`segflow.search`) and, with ``train.model: autodeeplab``, the train
stage trains the genotype it finds.
"""

from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.paths import GENOTYPE, SEARCH_HISTORY, SHARDS
from segflow.search.outputs import disabled_outputs, final_genotype, log_search_run, write_outputs
from segflow.search.run import preflight, search
from segflow.stage import console, run_stage
from segflow.train.distributed import with_run_name


def main(params: Params) -> None:
    if not params.search.enabled:
        disabled_outputs(GENOTYPE, SEARCH_HISTORY)
        console.print(
            f"search: disabled (search.enabled: false); the paper's genotype -> {GENOTYPE}"
        )
        return
    verify_shards(SHARDS)  # a damaged shard: one line naming it, before any worker starts
    params = with_run_name(params, "search")
    index = preflight(params, SHARDS)
    outcome = search(params, SHARDS)
    genotype = final_genotype(outcome.arch_history)
    write_outputs(genotype, outcome.history, outcome.arch_history, GENOTYPE, SEARCH_HISTORY)
    run_id = log_search_run(params, index, outcome.history, GENOTYPE, SEARCH_HISTORY)
    console.print(
        f"search: path {'-'.join(map(str, genotype.path))} -> {GENOTYPE} (MLflow run {run_id})"
    )


if __name__ == "__main__":
    run_stage(main)
