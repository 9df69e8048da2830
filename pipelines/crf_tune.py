"""Stage crf_tune: models/best.pt + val shards -> data/probs/val, reports/crf_params.json.

Predicts val at its original resolution (mode: params.evaluate), keeps the compact
probabilities, sweeps the dense-CRF settings of params.crf over them with Ray Tune (trial files
under ray_results/), and decides on those val images whether the served model applies the CRF.
"""

from segflow.config import Params
from segflow.data.shards import verify_shards
from segflow.evaluate.evaluation import tune_crf
from segflow.paths import BEST_MODEL, CRF_PARAMS, RAY_RESULTS, SHARDS, VAL_PROBS
from segflow.stage import console, run_stage


def main(params: Params) -> None:
    verify_shards(SHARDS)  # a damaged shard: one line naming it, before any worker starts
    choice = tune_crf(params, BEST_MODEL, SHARDS, VAL_PROBS, RAY_RESULTS, CRF_PARAMS)
    console.print(
        f"crf_tune: best setting {choice.params.to_dict()}: val mIoU {choice.val_miou_crf} with, "
        f"{choice.val_miou} without ({choice.num_images} images): CRF "
        f"{'on' if choice.apply else 'off'} -> {CRF_PARAMS}"
    )


if __name__ == "__main__":
    run_stage(main)
