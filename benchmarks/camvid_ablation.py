"""What each change of a recipe buys: the same training, one lever switched, side by side (no test).

Takes a params.yaml (e.g. the camvid-cpu preset's, as written by ``segflow init``) and the
shards its pipeline built, and trains one run per variant and seed with the Ray-free core loop
(``segflow.train.loop.fit``, the loop the train stage's workers run), every variant the same
number of epochs on the same shards from the same seeds (``--seeds 0,1``). Each variant
changes exactly one thing against the recipe:

  * ``recipe``        the params file as it is;
  * ``no_ema``        ``train.ema_decay: 0`` (the raw weights are scored and kept);
  * ``median_freq``   ``train.class_weights: median_frequency`` (unclipped; the old default);
  * ``no_rare_crop``  ``loader.rare_class_crop: 0`` (uniform crops);
  * ``fp32``          ``train.bf16: false`` (same epochs: the accuracy of bf16 against fp32;
                      its speed is ``benchmarks/training_step.py``'s figure);
  * ``ema_warmup``    ``train.ema_warmup: true`` (the EMA's decay warmed up from 0);
  * ``no_jitter``     ``loader.color_jitter: 0`` (no photometric augmentation);
  * ``jitter_0.4``    ``loader.color_jitter: 0.4`` (twice the default's strength);
  * ``scale_0.5_2``   ``loader.scale_min: 0.5``, ``scale_max: 2.0`` (a wider scale range).

Scores are the loop's per-epoch mIoU at the shard scale on the split the train stage selects
its checkpoint by: ``dev`` when the shards have one (``dataset.holdout_groups``: CamVid
sequences held out of train, which share no scene with it; build them with
``--holdout 0006R0`` of ``benchmarks/budget_schedule.py`` or a pipeline whose params set it),
else val. The best epoch counts, and val is read at that epoch too. Prints one JSON line per
run and two markdown tables: every run (wall time, load around it), and per variant the mean
and range over the seeds.

    python benchmarks/camvid_ablation.py --params /work/recipe/params.yaml \\
        --shards /work/recipe/data/shards --epochs 10 --out /tmp/ablation --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from segflow.config import load_params
from segflow.data.groups import decision_split
from segflow.data.shards import read_index
from segflow.train.loop import fit

VARIANTS: dict[str, dict[str, dict]] = {
    "recipe": {},
    "no_ema": {"train": {"ema_decay": 0.0}},
    "median_freq": {"train": {"class_weights": "median_frequency"}},
    "no_rare_crop": {"loader": {"rare_class_crop": 0.0}},
    "fp32": {"train": {"bf16": False}},
    "ema_warmup": {"train": {"ema_warmup": True}},
    "no_jitter": {"loader": {"color_jitter": 0.0}},
    "jitter_0.4": {"loader": {"color_jitter": 0.4}},
    "scale_0.5_2": {"loader": {"scale_min": 0.5, "scale_max": 2.0}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, required=True)
    p.add_argument("--shards", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="one checkpoint directory per variant")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0", help="comma-separated; every variant runs each")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def variant_params(base, changes: dict[str, dict], epochs: int, seed: int | None = None):
    """``base`` with ``changes`` applied section by section, ``train.epochs`` and the seed set."""
    train = {**changes.get("train", {}), "epochs": epochs}
    update = {"train": base.train.model_copy(update=train)}
    if seed is not None:
        update["seed"] = seed
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
    split = decision_split(read_index(args.shards)["splits"])
    seeds = [int(x) for x in args.seeds.split(",")]
    rows = []
    for name in args.variants.split(","):
        for seed in seeds:
            params = variant_params(base, VARIANTS[name], args.epochs, seed)
            before, started = load(), time.time()
            state = fit(params, args.shards, args.out / f"{name}_seed{seed}", "cpu", echo=None)
            wall = time.time() - started
            curve = [round(r["selection_miou"], 4) for r in state.history]
            best = max(range(len(curve)), key=curve.__getitem__)
            row = {
                "variant": name,
                "seed": seed,
                "split": split,
                "best_miou": curve[best],
                "best_epoch": best + 1,
                "val_miou_at_best": round(state.history[best]["val_miou"], 4),
                "wall_s": round(wall),
                "load_before": before,
                "load_after": load(),
                "curve": curve,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{args.epochs} epochs each, seeds {seeds}, {args.params}, shards {args.shards}")
    print(f"| variant | seed | best {split} mIoU (shard scale) | epoch | val mIoU there | wall (s) "
          "| load before / after |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['seed']} | {r['best_miou']:.4f} | {r['best_epoch']} "
            f"| {r['val_miou_at_best']:.4f} | {r['wall_s']} "
            f"| {r['load_before']} / {r['load_after']} |"
        )
    print(f"\n| variant | {split} mIoU, mean (range) over seeds | val mIoU there, mean |")
    print("|---|---:|---:|")
    for name in dict.fromkeys(r["variant"] for r in rows):
        best = [r["best_miou"] for r in rows if r["variant"] == name]
        val = [r["val_miou_at_best"] for r in rows if r["variant"] == name]
        print(
            f"| {name} | {statistics.mean(best):.4f} ({min(best):.4f}-{max(best):.4f}) "
            f"| {statistics.mean(val):.4f} |"
        )


if __name__ == "__main__":
    main()
