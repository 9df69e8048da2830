"""``segflow baseline NAME``: train a baseline on the train shards, score a split, log one run.

The run is an MLflow run like a training run: in the experiment ``train.experiment`` of
params.yaml, with the params that matter to a baseline (seed, dataset, shard and the loader's
normalisation, plus the baseline's own options as ``baseline.*``), the tags every segflow run
has (git commit, the shards' content hash, dataset) with ``stage: baseline``, and the scores of
:mod:`segflow.baselines.scoring` under the evaluate stage's names (``pa``, ``mpa``, ``miou``,
``fwiou``, ...), per-class IoU (``iou.<class>``), ``ms_per_image`` and ``train_seconds``. The
run is opened before training, so a baseline that fails shows up as a FAILED run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from segflow.baselines.options import parse_options
from segflow.baselines.patch_classifier import (
    PatchClassifier,
    PatchOptions,
    train_patch_classifier,
)
from segflow.baselines.scoring import SplitScore, at_training_scale, score_split
from segflow.baselines.split_and_merge import (
    SplitAndMerge,
    SplitMergeOptions,
    train_split_and_merge,
)
from segflow.config import Params, load_params
from segflow.data.shards import verify_shards
from segflow.errors import SegflowError
from segflow.evaluate.scores import flat_metrics
from segflow.paths import SHARDS
from segflow.tracking import flatten, git_commit, setup

OPTIONS = {"patch_classifier": PatchOptions, "split_and_merge": SplitMergeOptions}
BASELINES = tuple(OPTIONS)


@dataclass
class BaselineRun:
    """What one ``segflow baseline`` run measured (``metrics`` as logged), where it went, and
    the trained baseline (its ``label_map`` works at the training scale)."""

    name: str
    options: dict
    split: str
    metrics: dict
    score: SplitScore
    run_id: str
    model: PatchClassifier | SplitAndMerge


def baseline_options(name: str, items: Sequence[str] = ()) -> PatchOptions | SplitMergeOptions:
    """The options of baseline ``name`` from ``KEY=VALUE`` strings; an unknown name is an error."""
    if name not in OPTIONS:
        raise SegflowError(f"baseline {name!r} is unknown; known baselines: {', '.join(BASELINES)}")
    return parse_options(OPTIONS[name], items, f"baseline {name}")


def train_baseline(
    options: PatchOptions | SplitMergeOptions,
    shard_dir: str | Path,
    params: Params,
    echo: Callable[[str], None] | None = None,
) -> PatchClassifier | SplitAndMerge:
    """Train the baseline ``options`` belong to on the train split of ``shard_dir``."""
    if isinstance(options, PatchOptions):
        mean, std = params.loader.mean, params.loader.std
        return train_patch_classifier(shard_dir, options, mean, std, params.seed, echo)
    return train_split_and_merge(shard_dir, options, echo)


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def run_baseline(
    name: str,
    params: Params,
    shard_dir: str | Path = SHARDS,
    split: str | None = None,
    option_items: Sequence[str] = (),
    root: str | Path = ".",
    echo: Callable[[str], None] | None = None,
) -> BaselineRun:
    """Train baseline ``name``, score ``split`` (default ``dataset.test_split``) at native
    resolution, log the MLflow run; returns what was logged."""
    import mlflow

    options = baseline_options(name, option_items)
    index = verify_shards(shard_dir)  # a damaged shard: one line naming it, before work
    split = split or params.dataset.test_split
    if split not in index["splits"]:
        raise SegflowError(
            f"{shard_dir}: no split {split!r} to score (has {', '.join(index['splits'])})"
        )
    num_classes = int(index["num_classes"])
    experiment_id = setup(params.train.experiment, root)
    logged = {
        "baseline": name,
        "split": split,
        **flatten({"baseline": asdict(options)}),
        **flatten(params.model_dump(mode="json", include={"seed", "dataset", "shard"})),
        "loader.mean": str(list(params.loader.mean)),
        "loader.std": str(list(params.loader.std)),
    }
    tags = {
        "stage": "baseline",
        "baseline": name,
        "git_commit": git_commit(root),
        "shards_content_hash": index.get("content_hash", "unknown"),
        "dataset": index.get("dataset", "unknown"),
    }
    np.random.seed(params.seed % 2**32)
    torch.manual_seed(params.seed)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"baseline-{name}") as run:
        mlflow.log_params(logged)
        mlflow.set_tags(tags)
        started = time.perf_counter()
        model = train_baseline(options, shard_dir, params, echo)
        train_seconds = time.perf_counter() - started
        predict = at_training_scale(model.label_map, index.get("resize"))
        score = score_split(predict, shard_dir, split, num_classes)
        metrics = {k: v for k, v in flat_metrics(score.metrics).items() if v is not None}
        metrics |= {
            "ms_per_image": round(score.ms_per_image, 3),
            "train_seconds": round(train_seconds, 3),
            "num_images": score.num_images,
        }
        names = [c["name"] for c in index["classes"]]
        per_class = {
            f"iou.{_metric_name(n)}": round(v, 6)
            for n, v in zip(names, score.metrics["iou"], strict=True)
            if v == v  # NaN: class absent from truth and prediction (undefined)
        }
        mlflow.log_metrics({**metrics, **per_class})
    return BaselineRun(name, asdict(options), split, metrics, score, run.info.run_id, model)


def baseline_main(
    name: str, params_path: str | Path, split: str | None, option_items: Sequence[str]
) -> BaselineRun:
    """The command: params.yaml and the shards of this project (data/shards)."""
    from segflow.logs import console

    baseline_options(name, option_items)  # option errors before params and shards are read
    params = load_params(params_path)
    return run_baseline(
        name, params, params.shard.uri, split, option_items, echo=lambda line: console.print(line)
    )
