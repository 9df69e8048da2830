"""The train stage's outputs: the model, the learning curve (CSV for ``dvc plots``), summary
metrics and models/run.json, replaced together at the end of a run.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segflow.io import atomic_path, write_json
from segflow.run_info import write_run_info

CURVE_COLUMNS = (
    "epoch",
    "train_loss",
    "val_miou",
    "val_pixel_accuracy",
    "val_mean_accuracy",
    "dev_miou",
    "selection_miou",
    "lr",
    "images_per_second",
    "epoch_seconds",
    "data_wait_share",
    "peak_memory_mb",
    "skipped_steps",
)


def finite_or_none(value: object) -> object:
    """``value``, or None for a float that is not finite: JSON has no NaN (``json.dumps`` writes
    a bare ``NaN`` that other readers reject), and a learning curve has a gap there."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_curve(history: list[dict], path: str | Path) -> None:
    """One row per epoch; DVC draws the mIoUs and ``train_loss`` against ``epoch``."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for record in history:
            writer.writerow({k: finite_or_none(record.get(k, "")) for k in CURVE_COLUMNS})


def selection_miou(record: dict) -> float:
    """The mIoU an epoch is chosen by: dev's with a dev split, else val's (a record written
    before the dev split existed has only val's)."""
    return record.get("selection_miou", record["val_miou"])


def best_record(history: list[dict]) -> dict:
    """The epoch with the highest selection mIoU (the first of equals, as the checkpoints keep
    it)."""
    if not history:
        raise ValueError("empty training history")
    return max(history, key=lambda r: (selection_miou(r), -r["epoch"]))


def summary(history: list[dict]) -> dict:
    """The run in a few numbers (reports/train_metrics.json); a value that is not finite is
    null."""
    best, last = best_record(history), history[-1]
    data = {
        "epochs": last["epoch"],
        "best_epoch": best["epoch"],
        "best_val_miou": best["val_miou"],
        "best_val_pixel_accuracy": best["val_pixel_accuracy"],
        **({"best_dev_miou": best["dev_miou"]} if "dev_miou" in best else {}),
        "selected_on": "dev" if "dev_miou" in best else "val",
        "final_train_loss": last["train_loss"],
        "final_val_miou": last["val_miou"],
        "images_per_second": sum(r["images_per_second"] for r in history) / len(history),
    }
    return {key: finite_or_none(value) for key, value in data.items()}


def write_metrics(history: list[dict], path: str | Path) -> dict:
    data = summary(history)
    write_json(path, data)
    return data


#: Where a finished training's best model waits while the run is logged to MLflow.
STAGING = ".staging"


@contextmanager
def staging(models_dir: str | Path) -> Iterator[Path]:
    """A scratch directory under ``models_dir`` for the new best model until it is published.

    Under models/ so the final copy stays on one file system; a kill leaves it behind, and the
    next run clears it first.
    """
    path = Path(models_dir) / STAGING
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def publish(
    staged_best: Path,
    history: list[dict],
    run_info: dict,
    *,
    best: Path,
    curve: Path,
    metrics: Path,
    info: Path,
) -> dict:
    """Replace the stage's outputs with one run's, run.json last; returns the summary metrics.

    Each file is replaced atomically; a kill part-way leaves run.json describing the previous
    model, which :func:`segflow.run_info.read_run_info` detects by the model's sha256.
    """
    with atomic_path(best) as tmp:
        shutil.copyfile(staged_best, tmp)
    write_curve(history, curve)
    data = write_metrics(history, metrics)
    write_run_info(run_info, info, best)
    return data
