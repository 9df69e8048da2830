"""Stage crf_tune: models/best.pt + val shards -> data/probs/val, reports/crf_params.json.

Predicts val (mode: params.evaluate), keeps the compact probabilities, and sweeps the dense-CRF
settings of params.crf over them with Ray Tune (trial files under ray_results/).
"""

from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.evaluate.evaluation import tune_crf
from segflow.paths import BEST_MODEL, CRF_PARAMS, RAY_RESULTS, SHARDS, VAL_PROBS
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    verify_shards(SHARDS)  # a damaged shard: one line naming it, before any worker starts
    result = tune_crf(params, BEST_MODEL, SHARDS, VAL_PROBS, RAY_RESULTS, CRF_PARAMS)
    console.print(
        f"crf_tune: {len(result.trials)} settings, best val mIoU {result.best_metrics['miou']:.4f} "
        f"with {result.best.to_dict()} -> {CRF_PARAMS}"
    )


if __name__ == "__main__":
    run_stage(main)
