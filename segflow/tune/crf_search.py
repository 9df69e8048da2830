"""Ray Tune sweep over dense-CRF parameters on a split's saved probabilities, maximising mIoU.

Each trial scores one :class:`CRFParams` over the whole split with :func:`crf_over_files`: the
trials are the parallelism (one CPU each by default), so a trial runs its images one after
another instead of nesting Ray tasks inside Ray trials. The driver reads the saved files once
and hands their bytes to every trial through Ray's object store (``tune.with_parameters``), so a
trial on a node that cannot see the driver's disk scores exactly the same images.

The default space follows DeepLab v2's cross-validation on VOC val: Gaussian kernel fixed at
w_gauss = 3, sigma_gamma = 3, 10 mean-field iterations; bilateral w_bilateral in 3..6,
sigma_alpha in 30..100, sigma_beta in 3..6. ``search="grid"`` runs that grid (128 points; on a
small machine pass a smaller ``space``); ``search="optuna"`` samples ``num_samples`` points with
Optuna's TPE over the same ranges.

A space maps each CRFParams field to a fixed value, a list (grid points, or a categorical
choice for Optuna) or a ``(low, high)`` tuple (a continuous range; Optuna only; an integer
range for ``iterations``). Fields left out keep their CRFParams default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from segflow.errors import SegflowError
from segflow.evaluate.crf_split import SavedProbs, crf_over_files, read_split
from segflow.postprocess.crf_params import CRFParams
from segflow.postprocess.probs import list_ids
from segflow.raycluster import connect_ray
from segflow.storage import check_storage, open_storage

METRIC = "miou"
SEARCHES = ("grid", "optuna")
_REPORTED = ("miou", "pixel_accuracy", "mean_accuracy", "fwiou")


def default_space(search: str = "grid") -> dict[str, Any]:
    """DeepLab v2's CRF search space: a grid, or the same bounds as ranges for Optuna."""
    fixed = {"w_gauss": 3.0, "sigma_gamma": 3.0, "iterations": 10}
    if search == "optuna":
        return {**fixed, "w_bilateral": (3.0, 6.0), "sigma_alpha": (30.0, 100.0),
                "sigma_beta": (3.0, 6.0)}  # fmt: skip
    return {
        **fixed,
        "w_bilateral": [3.0, 4.0, 5.0, 6.0],
        "sigma_alpha": [float(a) for a in range(30, 101, 10)],
        "sigma_beta": [3.0, 4.0, 5.0, 6.0],
    }


def _check_value(name: str, value: Any) -> None:
    # Every point the sweep can reach must be a valid CRFParams (the one CRF schema, whose
    # errors name crf.<field>): fail before any trial starts.
    CRFParams.from_dict({name: value})


def to_param_space(space: dict[str, Any], search: str) -> dict[str, Any]:
    """The simple space format above, checked, as a Ray Tune ``param_space``."""
    from ray import tune

    if search not in SEARCHES:
        raise SegflowError(f"crf.search: {search!r} must be one of {SEARCHES}")
    known = {f.name for f in fields(CRFParams)}
    unknown = sorted(set(space) - known)
    if unknown:
        raise SegflowError(f"crf: unknown field(s) {unknown}; known: {sorted(known)}")
    out: dict[str, Any] = {}
    for name, value in space.items():
        if isinstance(value, list):
            if not value:
                raise SegflowError(f"crf.{name}: empty list")
            for v in value:
                _check_value(name, v)
            out[name] = tune.grid_search(value) if search == "grid" else tune.choice(value)
        elif isinstance(value, tuple):
            if search == "grid":
                raise SegflowError(
                    f"crf.{name}: a (low, high) range needs search 'optuna'; "
                    "a grid needs a list of values"
                )
            if len(value) != 2 or not value[0] < value[1]:
                raise SegflowError(f"crf.{name}: {value!r} must be (low, high) with low < high")
            for v in value:
                _check_value(name, v)
            if name == "iterations":
                out[name] = tune.randint(int(value[0]), int(value[1]) + 1)
            else:
                out[name] = tune.uniform(float(value[0]), float(value[1]))
        else:
            _check_value(name, value)
            out[name] = value
    return out


def _run_trial(config: dict, files: list[SavedProbs], num_classes: int) -> None:
    from ray import tune

    result = crf_over_files(files, len(files), CRFParams.from_dict(config), num_classes)
    tune.report({k: result.metrics[k] for k in _REPORTED})


@dataclass
class SweepResult:
    """The best setting, its metrics, and every trial (config + metrics), best first."""

    best: CRFParams
    best_metrics: dict
    trials: list[dict]


def crf_sweep(
    prob_dir: str | Path,
    num_classes: int,
    storage_path: str | Path,
    space: dict[str, Any] | None = None,
    search: str = "grid",
    num_samples: int = 20,
    max_concurrent: int | None = None,
    cpus_per_trial: float = 1.0,
    name: str = "crf_tune",
    seed: int = 0,
    num_cpus: int | None = None,
    ids: list[str] | None = None,
) -> SweepResult:
    """Sweep CRF parameters over the saved probabilities in ``prob_dir``; best mIoU wins.

        ``num_samples`` is the number of Optuna trials (a grid runs each point once).
        ``max_concurrent`` caps trials running at once (default: as many as the CPUs allow).
        Tune's files go to ``storage_path/name`` (a local path or ``s3://``); ``prob_dir`` is
    read here, and its bytes go to the trials. Ties are broken by trial order, so a grid sweep
        picks the same best every run. ``num_cpus`` sizes a local Ray started here. ``ids`` limits
    the sweep to those images (default: all in ``prob_dir``), e.g. a fixed subset of a large val.
    """
    from ray import tune

    if num_samples < 1:
        raise SegflowError(f"crf.num_samples: {num_samples} must be >= 1")
    if max_concurrent is not None and max_concurrent < 1:
        raise SegflowError(f"crf.max_concurrent: {max_concurrent} must be >= 1")
    param_space = to_param_space(default_space(search) if space is None else space, search)
    ids = list_ids(prob_dir) if ids is None else list(ids)
    if not ids:
        raise SegflowError(f"{prob_dir}: no saved probabilities (*.npz) to tune on")

    check_storage(str(storage_path), "train.storage_path")
    filesystem, storage = open_storage(str(storage_path))
    connect_ray(num_cpus)
    search_alg = None
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=seed)
    trainable = tune.with_resources(
        tune.with_parameters(_run_trial, files=read_split(prob_dir, ids), num_classes=num_classes),
        {"cpu": cpus_per_trial},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="max",
            search_alg=search_alg,
            num_samples=num_samples if search == "optuna" else 1,
            max_concurrent_trials=max_concurrent,
        ),
        run_config=tune.RunConfig(
            storage_path=storage, storage_filesystem=filesystem, name=name, verbose=0
        ),
    )
    results = tuner.fit()
    if results.errors:
        raise SegflowError(f"crf_tune: {len(results.errors)} trial(s) failed: {results.errors[0]}")

    trials = []
    for result in results:  # trial creation order: grid order for a grid
        trials.append({**CRFParams.from_dict(result.config).to_dict(),
                       **{k: result.metrics[k] for k in _REPORTED}})  # fmt: skip
    # max() keeps the first of equal scores, so ties go to the earlier trial.
    best_row = max(trials, key=lambda row: _score(row[METRIC]))
    best = CRFParams.from_dict({f.name: best_row[f.name] for f in fields(CRFParams)})
    trials.sort(key=lambda row: -_score(row[METRIC]))  # stable: ties keep trial order
    return SweepResult(best, {k: best_row[k] for k in _REPORTED}, trials)


def _score(value: float) -> float:
    return -math.inf if value is None or math.isnan(value) else value


__all__ = [
    "SweepResult",
    "crf_sweep",
    "default_space",
    "to_param_space",
]
