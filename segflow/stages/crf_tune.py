"""Stage crf_tune: models/best.pt + val (or dev) shards -> data/probs/decision,
reports/crf_params.json.

Every choice is made on the decision split, dev (held out of train by group, see
segflow.data.groups) when the shards have it, else val, never test: the stage predicts (a
capped number of) its images at their original resolution through the served path's network
part (``evaluate.mode``), keeps the compact probabilities, sweeps the dense-CRF settings of
``params.crf`` over them with Ray Tune (trial files under ray_results/), and decides whether
the served model applies the best setting at all: only if it beats the plain prediction on
those images.
"""

from __future__ import annotations

import time
from pathlib import Path

from segflow.config import Params
from segflow.data.groups import decision_split
from segflow.data.shards import read_index, verify_shards
from segflow.evaluate.metrics import metrics_from_confusion
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.logs import console
from segflow.paths import BEST_MODEL, CRF_PARAMS, DECISION_PROBS
from segflow.postprocess.crf_params import CRFChoice, decide_crf, write_crf_choice
from segflow.tune.crf_search import crf_sweep


def main(params: Params) -> None:
    shards = params.shard.uri  # a local directory or an object-store prefix
    verify_shards(shards)  # a damaged shard: one line naming it, before any worker starts
    choice = tune_crf(
        params, BEST_MODEL, shards, DECISION_PROBS, params.train.storage_path, CRF_PARAMS
    )
    console.print(summary_line(choice))


def summary_line(choice: CRFChoice) -> str:
    """The stage's one line: the decision first, then the figures it rests on, rounded as the
    training log rounds mIoU (4 decimals), the setting as ``name value`` pairs."""
    setting = ", ".join(f"{name} {value:g}" for name, value in choice.params.to_dict().items())
    return (
        f"crf_tune: CRF {'on' if choice.apply else 'off'}: {choice.split} mIoU "
        f"{_miou(choice.val_miou_crf)} with the best setting, {_miou(choice.val_miou)} without "
        f"({choice.num_images} images; {setting}) -> {CRF_PARAMS}"
    )


def _miou(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def tune_crf(
    params: Params,
    model_path: str | Path,
    shard_dir: str | Path,
    prob_dir: str | Path,
    storage_path: str | Path,
    out_path: str | Path,
) -> CRFChoice:
    """Predict the decision split (dev when the shards have it, else val) into ``prob_dir``,
    sweep ``params.crf`` over it, decide CRF on or off on those images and write the choice to
    ``out_path`` (reports/crf_params.json)."""
    index = read_index(shard_dir)
    split = decision_split(index["splits"])
    num_classes = int(index["num_classes"])
    c = params.crf
    predictor = load_predictor(
        model_path, ServingSpec.from_params(params, index.get("resize"), None)
    )
    pred = predict_split(predictor, shard_dir, split, prob_dir, num_classes, c.max_images)
    del predictor  # the sweep's Ray workers need the memory, not the model
    result = crf_sweep(
        prob_dir, num_classes, storage_path, space=c.space(), search=c.search,
        num_samples=c.num_samples, cpus_per_trial=c.cpus_per_trial, seed=params.seed,
        name=f"crf_tune_{time.strftime('%Y%m%d-%H%M%S')}",
    )  # fmt: skip
    without = metrics_from_confusion(pred.confusion)
    choice = decide_crf(result.best, result.best_metrics, without, len(pred.sample_ids), split)
    write_crf_choice(out_path, choice)
    return choice
