"""reports/best_train_params.yaml: what the tune stage found, and how train reads it back.

The tune stage writes the sweep's best train/loader values (or, with ``tune.enabled: false``,
the current values, so the file exists for DVC); with ``tune.enabled: true`` the train stage
trains with them (:func:`tuned_params`). Writer and reader of the one file live here, away
from the sweep itself, so the train stage does not depend on Ray Tune's code.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.io import atomic_path

#: What a trial is ranked by: the mIoU on the decision split (dev, else val), as training
#: chooses its best epoch (segflow.data.groups).
METRIC = "selection_miou"
#: The train/loader keys a sweep can change, i.e. what best_train_params.yaml holds.
TRAIN_KEYS = ("model", "backbone", "output_stride", "model_options", "lr", "weight_decay",
              "batch_size", "epochs")  # fmt: skip
LOADER_KEYS = ("crop_height", "crop_width")


def train_values(params: Params) -> dict:
    """The sweepable keys of ``params`` as ``{"train": {...}, "loader": {...}}``."""
    train = params.train.model_dump(mode="json")
    loader = params.loader.model_dump(mode="json")
    return {
        "train": {k: train[k] for k in TRAIN_KEYS},
        "loader": {k: loader[k] for k in LOADER_KEYS},
    }


def write_best_params(path: str | Path, best: dict) -> None:
    """Write ``best`` (``enabled``, score, ``train``/``loader`` keys) as YAML, atomically."""
    text = (
        "# Best values of the tune stage; with tune.enabled the train stage trains with them.\n"
        + yaml.safe_dump(best, sort_keys=False)
    )
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def disabled_result(params: Params) -> dict:
    """What the stage writes with ``tune.enabled: false``: the current values, no sweep."""
    return {"enabled": False, **train_values(params)}


def sweep_result(result) -> dict:
    """The stage's file for a finished sweep: best values, score and a one-line-per-trial table."""
    return {
        "enabled": True,
        METRIC: result.best_miou,
        "trial_id": result.trials[0]["trial_id"] if result.trials else None,
        "mlflow_parent_run_id": result.parent_run_id,
        **result.best,
        "trials": [
            {
                "trial_id": r["trial_id"],
                METRIC: r[METRIC],
                "epochs": r["epochs"],
                **{k: r["train"][k] for k in ("lr", "weight_decay", "batch_size", "model")},
                "crop": [r["loader"]["crop_height"], r["loader"]["crop_width"]],
            }
            for r in result.trials
        ],  # fmt: skip
    }


def tuned_params(params: Params, path: str | Path) -> tuple[Params, dict[str, str]]:
    """``params`` with the sweep's best train/loader values when ``tune.enabled`` (epochs kept),
    and the MLflow tags that say where they came from; ``params`` unchanged when it is off."""
    if not params.tune.enabled:
        return params, {}
    path = Path(path)
    hint = "run the tune stage (dvc repro tune)"
    if not path.is_file():
        raise SegflowError(f"{path}: not found; tune.enabled is true: {hint}")
    try:
        best = yaml.safe_load(path.read_text())
        enabled, train, loader = best["enabled"], dict(best["train"]), dict(best["loader"])
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise SegflowError(
            f"{path}: not a tune result ({type(exc).__name__}: {exc}); {hint}"
        ) from None
    if enabled is not True:
        raise SegflowError(f"{path}: written with tune.enabled false; {hint} with it on")
    train.pop("epochs", None)
    try:
        new_train = type(params.train).model_validate({**params.train.model_dump(), **train})
        new_loader = type(params.loader).model_validate({**params.loader.model_dump(), **loader})
    except ValueError as exc:
        raise SegflowError(f"{path}: tuned values do not validate: {exc}") from None
    tags = {
        "tune.trial_id": str(best.get("trial_id")),
        "tune.parent_run_id": str(best.get("mlflow_parent_run_id")),
        "tune.miou": str(best.get(METRIC)),
        "tune.source": str(path),
    }
    return params.model_copy(update={"train": new_train, "loader": new_loader}), tags
