"""Stage tune: data/shards -> reports/best_train_params.yaml (a training hyper-parameter sweep).

Off by default (``tune.enabled: false``): the stage then writes the current train/loader values
without starting Ray, so ``dvc repro`` stays fast. Enabled, it runs the Ray Tune sweep of
:mod:`segflow.tune.train_search` (trial files under ray_results/train_tune, MLflow parent run
with a child per trial). With it on, the train stage trains with the best values.
"""

from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.paths import BEST_TRAIN_PARAMS, RAY_RESULTS, SHARDS
from segflow.stage import console, run_stage
from segflow.tune.train_search import (
    disabled_result,
    sweep_result,
    train_sweep,
    write_best_params,
)


def main(params: Params) -> None:
    if not params.tune.enabled:
        write_best_params(BEST_TRAIN_PARAMS, disabled_result(params))
        console.print(
            f"tune: disabled (tune.enabled: false); current values -> {BEST_TRAIN_PARAMS}"
        )
        return
    verify_shards(SHARDS)  # a damaged shard: one line naming it, before any trial starts
    result = train_sweep(params, SHARDS, RAY_RESULTS)
    write_best_params(BEST_TRAIN_PARAMS, sweep_result(result))
    console.print(
        f"tune: {len(result.trials)} trials, best val mIoU {result.best_miou:.4f} with "
        f"{result.best} -> {BEST_TRAIN_PARAMS}"
    )


if __name__ == "__main__":
    run_stage(main)
