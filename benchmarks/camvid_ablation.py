"""What each change of a recipe buys: the same training, one lever switched, side by side (no test).

Takes a params.yaml (e.g. the camvid-cpu preset's, as written by ``segflow init``) and the
shards its pipeline built, and trains one run per variant with the Ray-free core loop
(``segflow.train.loop.fit``, the loop the train stage's workers run), every variant the same
number of epochs on the same shards from the same seed. Each variant changes exactly one
thing against the recipe:

  * ``recipe``        the params file as it is;
  * ``no_ema``        ``train.ema_decay: 0`` (the raw weights are scored and kept);
  * ``median_freq``   ``train.class_weights: median_frequency`` (unclipped; the old default);
  * ``no_rare_crop``  ``loader.rare_class_crop: 0`` (uniform crops);
  * ``fp32``          ``train.bf16: false`` (same epochs: the accuracy of bf16 against fp32;
                      its speed is ``benchmarks/training_step.py``'s figure).

Scores are the loop's per-epoch val mIoU at the shard scale (the best epoch counts), the
figure the train stage selects its checkpoint by. Prints a markdown table with each run's
wall time and the load average around it.

    python benchmarks/camvid_ablation.py --params /work/recipe/params.yaml \\
        --shards /work/recipe/data/shards --epochs 10 --out /tmp/ablation
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from segflow.config import load_params
from segflow.train.loop import fit

VARIANTS: dict[str, dict[str, dict]] = {
    "recipe": {},
    "no_ema": {"train": {"ema_decay": 0.0}},
    "median_freq": {"train": {"class_weights": "median_frequency"}},
    "no_rare_crop": {"loader": {"rare_class_crop": 0.0}},
    "fp32": {"train": {"bf16": False}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, required=True)
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="one checkpoint directory per variant")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def variant_params(base, changes: dict[str, dict], epochs: int):
    """``base`` with ``changes`` applied section by section and ``train.epochs`` set."""
    train = {**changes.get("train", {}), "epochs": epochs}
    update = {"train": base.train.model_copy(update=train)}
    for section, values in changes.items():
        if section != "train":
            update[section] = getattr(base, section).model_copy(update=values)
    return base.model_copy(update=update)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    base = load_params(args.params)
    rows = []
    for name in args.variants.split(","):
        params = variant_params(base, VARIANTS[name], args.epochs)
        before, started = load(), time.time()
        state = fit(params, args.shards, args.out / name, "cpu", echo=None)
        wall = time.time() - started
        curve = [round(r["val_miou"], 4) for r in state.history]
        best = max(range(len(curve)), key=curve.__getitem__)
        row = {
            "variant": name,
            "best_val_miou": curve[best],
            "best_epoch": best + 1,
            "wall_s": round(wall),
            "load_before": before,
            "load_after": load(),
            "curve": curve,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.epochs} epochs each, {args.params}, shards {args.shards}")
    print("| variant | best val mIoU (shard scale) | epoch | wall (s) | load before / after |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['best_val_miou']:.4f} | {r['best_epoch']} | {r['wall_s']} "
            f"| {r['load_before']} / {r['load_after']} |"
        )


if __name__ == "__main__":
    main()
