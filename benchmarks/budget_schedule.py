"""A time budget spent two ways, side by side in one run (not a test): the budget-aware schedule
against the preset's fixed-epoch schedule cut at the same deadline.

Both sides train the camvid-cpu preset's model and recipe (configs/presets/camvid-cpu.yaml, its
own ``train.epochs``, from the same seed) with the Ray-free core loop
(``segflow.train.loop.fit``, the loop the train stage's worker runs) on shards built here at the
preset's settings, for the same ``--minutes`` of wall time from the call of ``fit``:

  * ``budget``     ``train.time_budget_min: --minutes``: the poly LR decays with the fraction of
                   the budget spent and reaches its floor at the last epoch that fits
                   (segflow.train.budget);
  * ``truncated``  ``train.time_budget_min: null``: poly over the preset's ``train.epochs``, the
                   run stopped between two steps once the deadline has passed (what a fixed-epoch
                   run does when its machine is slower than the one it was tuned on); the epochs
                   checkpointed by then count.

Each side is scored by its per-epoch mIoU at the shard scale on the split the train stage picks
its best epoch by: val as the preset stands (it has no dev split), or, with ``--holdout 0006R0``,
``dev``: those CamVid sequences held out of train (segflow.data.groups), which share no scene with
it; val is then reported beside it. The best epoch, the last, and the mean of the last five.
The two sides run at once (``--parallel``, one process each, ``--threads`` torch threads each,
so both meet the same machine) or one after the other. Prints one JSON line per side and a
markdown table, with the load average around the runs.

    nice -n 10 python benchmarks/budget_schedule.py --root ../shared/datasets/camvid \\
        --work /tmp/budget_bench --minutes 12 --threads 1 --parallel
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from segflow.config import Params, parse_params
from segflow.data.datasets import open_dataset
from segflow.data.shards import read_index, write_shards
from segflow.presets import preset_text, with_dataset_root
from segflow.stages.ingest import held_out_manifest
from segflow.train.loop import TrainingStopped, fit
from segflow.train.state import LAST

SIDES = ("budget", "truncated")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("../shared/datasets/camvid"))
    ap.add_argument("--work", type=Path, required=True, help="shards, runs and logs go here")
    ap.add_argument("--preset", default="camvid-cpu")
    ap.add_argument("--minutes", type=float, required=True, help="wall budget of each side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each side")
    ap.add_argument("--parallel", action="store_true", help="run the two sides at once")
    ap.add_argument("--seed", type=int, default=None, help="the run's seed (default: the preset's)")
    ap.add_argument(
        "--holdout", nargs="*", default=[], metavar="GROUP",
        help="train groups held out as the dev split the sides are scored on (e.g. 0006R0)",
    )  # fmt: skip
    ap.add_argument(
        "--group-pattern", default=r"^([^_]+)_",
        help="a sample id's group (CamVid's ids are <sequence>_<frame>)",
    )  # fmt: skip
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # a child process
    return ap.parse_args(argv)


def preset_params(
    name: str, root: Path, holdout: list[str], group_pattern: str, seed: int | None
) -> Params:
    """The preset's params: ``holdout`` groups of train as the dev split, and ``seed``, if given."""
    raw = yaml.safe_load(with_dataset_root(preset_text(name), root.expanduser().resolve()))
    if holdout:
        raw["dataset"] |= {"group_pattern": group_pattern, "holdout_groups": list(holdout)}
    if seed is not None:
        raw["seed"] = seed
    return parse_params(raw, source=f"preset {name}")


def build_shards(params: Params, out: Path) -> Path:
    """The preset's shards of ``dataset.root`` (kept in ``out`` for a second run)."""
    if (out / "index.json").is_file():
        return out
    s = params.shard
    write_shards(
        held_out_manifest(params), open_dataset(params), out, rows_per_shard=s.rows_per_shard,
        resize=(s.resize_height, s.resize_width) if s.resize_height else None,
        image_codec=s.image_codec, jpeg_quality=s.jpeg_quality,
    )  # fmt: skip
    return out


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_side(side: str, params: Params, shards: Path, out: Path, minutes: float) -> dict:
    """Train one side for ``minutes`` of wall time from now; its scores and timings."""
    budget = minutes if side == "budget" else None
    # Both sides get the same training time: no share kept back for later stages
    # (train.time_budget_after_min is for a whole dvc repro, which this is not).
    train = {"time_budget_min": budget, "time_budget_after_min": 0.0}
    params = params.model_copy(update={"train": params.train.model_copy(update=train)})
    before, started = load(), time.time()
    deadline = started + minutes * 60.0

    def echo(line: str) -> None:
        print(f"[{side} {time.time() - started:7.1f}s] {line}", flush=True)

    summary = None
    try:
        state = fit(
            params, shards, out, "cpu", echo=echo, since=started,
            should_stop=None if budget is not None else (lambda: time.time() >= deadline),
        )  # fmt: skip
        history = state.history
        if state.budget is not None:
            summary = state.budget.summary(state.epoch)
    except TrainingStopped as stopped:
        echo(f"deadline: {stopped}")
        last = out / LAST  # none: no epoch ended before the deadline
        history = torch.load(last, weights_only=True)["history"] if last.is_file() else []
    wall = time.time() - started
    split = "dev" if params.dataset.holdout_groups else "val"
    curve = [round(r["selection_miou"], 4) for r in history]  # the split the best epoch is on
    val_curve = [round(r["val_miou"], 4) for r in history]
    best = max(range(len(curve)), key=curve.__getitem__) if curve else -1
    return {
        "side": side,
        "minutes": minutes,
        "split": split,
        "epochs": len(history),
        "best_miou": curve[best] if curve else None,
        "best_epoch": best + 1,
        "last_miou": curve[-1] if curve else None,
        "mean_last5_miou": round(sum(curve[-5:]) / len(curve[-5:]), 4) if curve else None,
        "val_miou_at_best": val_curve[best] if curve else None,
        "last_lr": history[-1]["lr"] if history else None,
        "wall_s": round(wall, 1),
        "load_before": before,
        "load_after": load(),
        "images_per_second": [round(r["images_per_second"], 2) for r in history],
        "curve": curve,
        "val_curve": val_curve,
        "budget": summary,
    }


def child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    params = preset_params(args.preset, args.root, args.holdout, args.group_pattern, args.seed)
    row = run_side(args.side, params, args.work / "shards", args.work / args.side, args.minutes)
    (args.work / f"{args.side}.json").write_text(json.dumps(row))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.side is not None:
        return child(args)
    args.work.mkdir(parents=True, exist_ok=True)
    params = preset_params(args.preset, args.root, args.holdout, args.group_pattern, args.seed)
    t0 = time.time()
    build_shards(params, args.work / "shards")
    splits = {k: v["num_samples"] for k, v in read_index(args.work / "shards")["splits"].items()}
    print(f"shards {splits} in {time.time() - t0:.0f} s; load {load()}", flush=True)

    def start(side: str) -> subprocess.Popen:
        command = [
            sys.executable, __file__, "--side", side, "--work", str(args.work),
            "--root", str(args.root), "--preset", args.preset,
            "--minutes", str(args.minutes), "--threads", str(args.threads),
            "--group-pattern", args.group_pattern, "--holdout", *args.holdout,
            *(["--seed", str(args.seed)] if args.seed is not None else []),
        ]  # fmt: skip
        log = (args.work / f"{side}.log").open("w")
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    t0 = time.time()
    if args.parallel:
        procs = [start(side) for side in SIDES]
        codes = [proc.wait() for proc in procs]
    else:
        codes = [start(side).wait() for side in SIDES]
    if any(codes):
        raise SystemExit(f"a side failed (exit codes {codes}); see {args.work}/*.log")
    rows = [json.loads((args.work / f"{side}.json").read_text()) for side in SIDES]
    for row in rows:
        print(json.dumps(row))
    mode = f"at once, {args.threads} thread(s) each" if args.parallel else "one after the other"
    split = rows[0]["split"]
    print(
        f"\n{args.preset}, seed {params.seed}, {args.minutes:g} min per side ({mode}), {split} "
        f"{splits.get(split)} images at the shard scale; all of it {time.time() - t0:.0f} s"
    )
    head = (
        f"schedule | epochs | best {split} mIoU (epoch) | val mIoU there | last {split} mIoU "
        f"| mean of last 5 | last LR | wall (s)"
    )
    print(f"| {head} | load before / after |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if not r["epochs"]:
            print(f"| {r['side']} | 0 | - | - | - | - | - | {r['wall_s']:.0f} | - |")
            continue
        print(
            f"| {r['side']} | {r['epochs']} | {r['best_miou']:.4f} ({r['best_epoch']}) "
            f"| {r['val_miou_at_best']:.4f} | {r['last_miou']:.4f} | {r['mean_last5_miou']:.4f} "
            f"| {r['last_lr']:.2g} | {r['wall_s']:.0f} | {r['load_before']} / {r['load_after']} |"
        )


if __name__ == "__main__":
    main()
