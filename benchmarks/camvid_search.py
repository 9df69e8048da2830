"""Auto-DeepLab on CamVid: search, train the found network and DeepLab v3+ R18 alike (no test).

What issue 13 asks of a small machine, end to end through the real pipeline: a copy of the
pipeline in ``--dir`` (a fresh git + DVC repo), the camvid-cpu preset pointed at ``--camvid``,
shards at 180x240, then

1. ``dvc repro train`` with ``search.enabled`` and ``train.model: autodeeplab``: the search
   stage searches a reduced supernet on CamVid train (trainA / trainB halves), train trains the
   decoded network from scratch;
2. ``dvc repro train`` again with ``train.model: deeplabv3plus`` on ResNet-18: the same shards,
   crop, epochs, schedule, bf16 and EMA, from scratch.

Both are scored by the train stage's per-epoch val mIoU (101 val images at the shard scale,
180x240; the best epoch counts). Prints one table; every figure comes from the reports the
stages wrote. The search is reduced (``--layers``, ``--filters``, ``--crop``, ``--epochs``)
because the paper's supernet (L 12, F 8, 321x321) needs more than 10 GB and ~160 s a step on
these 2 cores (RESULTS.md "One search step").

    python benchmarks/camvid_search.py --dir /tmp/camvid-search --train-epochs 12
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="new project directory")
    p.add_argument("--camvid", type=Path, default=REPO.parent / "shared" / "datasets" / "camvid")
    p.add_argument("--layers", type=int, default=6, help="search L (paper 12)")
    p.add_argument("--filters", type=int, default=2, help="search F (paper 8)")
    p.add_argument("--blocks", type=int, default=5, help="search B (paper 5)")
    p.add_argument("--crop", type=int, default=64, help="search crop, square (paper 321)")
    p.add_argument("--epochs", type=int, default=4, help="search epochs (paper 40)")
    p.add_argument("--warmup", type=int, default=2, help="search warm-up epochs (paper 20)")
    p.add_argument("--search-cpus", type=int, default=2, help="search threads")
    p.add_argument("--train-cpus", type=int, default=2, help="training threads")
    p.add_argument("--train-epochs", type=int, default=12)
    p.add_argument("--train-filters", type=int, default=8, help="F of the found network")
    return p.parse_args(argv)


def run(cwd: Path, *cmd: str) -> float:
    """Run ``cmd`` in ``cwd`` with this interpreter's bin first on PATH; its wall seconds."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(cwd)}
    started = time.time()
    done = subprocess.run(cmd, cwd=cwd, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {cwd} (exit {done.returncode})")
    return time.time() - started


def set_params(root: Path, **sections: dict) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        params[key].update(value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(root: Path, camvid: Path) -> None:
    if root.exists():
        sys.exit(f"{root}: exists; pick a new --dir")
    root.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipelines", "segflow", "configs"):
        shutil.copytree(REPO / name, root / name, ignore=ignore)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    run(root, "git", "init", "-q")
    run(root, str(BIN / "dvc"), "init", "-q", "-f")
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # over the one dvc init wrote
    run(root, str(BIN / "segflow"), "init", "--preset", "camvid-cpu", "--root", str(camvid))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = args.dir.resolve()
    make_project(root, args.camvid)
    # No EMA: in a run this short the average would still carry the random initial weights.
    common_train = {
        "epochs": args.train_epochs,
        "ema_decay": 0.0,
        "launcher": "ray",
        "cpus_per_worker": args.train_cpus,
    }
    set_params(
        root,
        shard={"resize_height": 180, "resize_width": 240},
        loader={"crop_height": 176, "crop_width": 224},
        search={
            "enabled": True,
            "layers": args.layers,
            "filter_multiplier": args.filters,
            "blocks": args.blocks,
            "crop_height": args.crop,
            "crop_width": args.crop,
            "epochs": args.epochs,
            "warmup_epochs": args.warmup,
            "cpus_per_worker": args.search_cpus,
        },
        train={
            **common_train,
            "model": "autodeeplab",
            "backbone": None,
            "output_stride": None,
            "model_options": {"filter_multiplier": args.train_filters},
        },
    )
    rows = []
    seconds = run(root, str(BIN / "dvc"), "repro", "train")
    search = json.loads((root / "reports/search/genotype.json").read_text())
    rows.append(("autodeeplab (found)", seconds, _metrics(root)))
    set_params(
        root,
        train={
            **common_train,
            "model": "deeplabv3plus",
            "backbone": "resnet18",
            "output_stride": 16,
            "model_options": {"aspp_channels": 128},
        },
    )
    seconds = run(root, str(BIN / "dvc"), "repro", "train")
    rows.append(("deeplabv3plus resnet18", seconds, _metrics(root)))

    print(f"\nfound network path (strides per layer): {search.get('path')}")
    print("| model | params (M) | best val mIoU (180x240) | epoch | s / epoch | stage wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, wall, m in rows:
        print(
            f"| {name} | {m['params_m']:.2f} | {m['best_val_miou']:.4f} | {m['best_epoch']} "
            f"| {m['seconds_per_epoch']:.0f} | {wall:.0f} |"
        )
    for name, _, m in rows:
        print(f"val mIoU by epoch, {name}: {m['curve']}")


def _metrics(root: Path) -> dict:
    metrics = json.loads((root / "reports/train_metrics.json").read_text())
    with (root / "reports/train_curve.csv").open() as f:
        curve = list(csv.DictReader(f))
    from segflow.models.checkpoint import load_model  # this checkout's, as the stages ran

    model = load_model(root / "models/best.pt")
    return {
        "best_val_miou": metrics["best_val_miou"],
        "best_epoch": metrics["best_epoch"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "seconds_per_epoch": sum(float(r["epoch_seconds"]) for r in curve) / len(curve),
        "curve": [round(float(r["val_miou"]), 4) for r in curve],
    }


if __name__ == "__main__":
    main()
