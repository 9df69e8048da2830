"""Searched vs random architectures at equal size and equal training (issue 22's protocol).

Does the Auto-DeepLab search earn its cost? The protocol, after Li & Talwalkar (2019) and Yu et
al. (2020), "Evaluating the search phase of neural architecture search":

1. the searched genotypes: ``--search-seeds N`` searches of the shards (segflow.search.run,
   in this process, one per seed), or ``--genotype FILE`` given ones (e.g. the search
   stage's reports/search/genotype.json);
2. ``--random K`` random genotypes from the same space (segflow.search.random_arch): valid
   paths and cells with as many layers and blocks, parameters and GFLOPs of the retrained
   network within ``--tolerance`` (10%) of the first searched genotype's;
3. every candidate retrained from scratch by the core training loop
   (:func:`segflow.train.loop.fit`, no Ray) with the same params and schedule for each of
   ``--seeds S`` seeds;
4. one table: per candidate its size and the mean +- std over seeds of the last epoch's val
   mIoU (and dev mIoU when the shards have a dev split); then searched vs random, mean +- std
   over all their runs.

The params are those of ``--params`` (default: the repository's params.yaml) with
``train.model: autodeeplab``; the flags below override the sizes. Nothing is written outside
``--dir``. The shards come from ``--shards`` or, with ``--synthetic``, are generated there.

    # a minute or two on a CPU: the synthetic task at tiny settings
    python benchmarks/search_vs_random.py --dir /tmp/svr --synthetic --search-seeds 1 \\
        --random 2 --seeds 2 --layers 3 --blocks 2 --search-epochs 2 --train-epochs 1
    # CamVid (hours on a CPU): shards of the camvid-cpu preset
    python benchmarks/search_vs_random.py --dir /tmp/svr-camvid --shards data/shards \\
        --search-seeds 2 --random 5 --seeds 2 --layers 6 --search-epochs 8 --train-epochs 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from segflow.config import Params, SyntheticParams, load_params
from segflow.data.datasets import open_dataset_by_name
from segflow.data.manifest import build_manifest
from segflow.data.shards import read_index, write_shards
from segflow.data.synthetic import generate_dataset
from segflow.models.genotype import Genotype, load_genotype
from segflow.search.outputs import final_genotype
from segflow.search.random_arch import genotype_size, sample_matched
from segflow.search.run import search_local
from segflow.train.loop import fit

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="work directory (runs, shards)")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--shards", type=Path, help="an existing shard directory")
    data.add_argument("--synthetic", action="store_true", help="generate synthetic shards")
    p.add_argument("--genotype", type=Path, action="append", default=[], help="searched genotype")
    p.add_argument("--search-seeds", type=int, default=1, help="searches (without --genotype)")
    p.add_argument("--random", type=int, default=5, help="random genotypes (K)")
    p.add_argument("--seeds", type=int, default=2, help="training seeds per candidate (S)")
    p.add_argument("--tolerance", type=float, default=0.1, help="relative params/GFLOPs match")
    p.add_argument("--max-draws", type=int, default=2000)
    p.add_argument("--layers", type=int, help="search.layers")
    p.add_argument("--blocks", type=int, help="search.blocks")
    p.add_argument("--search-epochs", type=int, help="search.epochs (warm-up: half)")
    p.add_argument("--arch-lr", type=float, help="search.arch_lr")
    p.add_argument("--head-weights", choices=("sum", "marginal"), help="search.head_weights")
    p.add_argument("--train-epochs", type=int, help="train.epochs")
    p.add_argument("--train-filters", type=int, default=8, help="F of the retrained networks")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def with_section(params: Params, section: str, **values) -> Params:
    """``params`` with ``values`` in ``section``, validated again."""
    data = params.model_dump(mode="json")
    data[section] = {**data[section], **values}
    return Params.model_validate(data)


def synthetic_shards(work: Path) -> Path:
    root, out = work / "synthetic", work / "shards"
    if not (out / "index.json").is_file():
        generate_dataset(root, SyntheticParams())
        adapter = open_dataset_by_name("synthetic", root)
        write_shards(build_manifest(adapter), adapter, out, rows_per_shard=64)
    return out


def searched(args: argparse.Namespace, params: Params, shards: Path) -> list[Genotype]:
    if args.genotype:
        return [load_genotype(path) for path in args.genotype]
    found = []
    for seed in range(args.search_seeds):
        run = with_section(
            params.model_copy(update={"seed": seed}),
            "search",
            enabled=True,
            launcher="local",
            storage_path=str(args.dir / "search"),
            run_name=f"seed{seed}",
            cpus_per_worker=args.threads,
        )
        outcome = search_local(run, shards, echo=print)
        found.append(final_genotype(outcome.arch_history))
        print(f"searched (seed {seed}): {json.dumps(found[-1].to_json())}")
    return found


def retrain(
    params: Params, shards: Path, genotype: Genotype, seed: int, out: Path, threads: int
) -> dict:
    """The last epoch's val (and dev) mIoU of ``genotype`` trained from scratch with ``seed``."""
    torch.set_num_threads(threads)
    run = with_section(
        params.model_copy(update={"seed": seed}),
        "train",
        model="autodeeplab",
        backbone=None,
        output_stride=None,
        pretrained=None,
        launcher="local",
        cpus_per_worker=threads,
    )
    options = {**run.train.model_options, "genotype": genotype.to_json()}
    run = with_section(run, "train", model_options=options)
    state = fit(run, shards, out, torch.device("cpu"), resume=False, echo=None)
    last = state.history[-1]
    return {"val": last["val_miou"], "dev": last.get("dev_miou")}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {std:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    args.dir.mkdir(parents=True, exist_ok=True)
    shards = synthetic_shards(args.dir) if args.synthetic else args.shards
    params = load_params(args.params)
    warmup = None if args.search_epochs is None else args.search_epochs // 2
    search = {
        "layers": args.layers, "blocks": args.blocks,
        "epochs": args.search_epochs, "warmup_epochs": warmup,
        "arch_lr": args.arch_lr, "head_weights": args.head_weights,
    }  # fmt: skip
    params = with_section(params, "search", **{k: v for k, v in search.items() if v is not None})
    train = {"epochs": args.train_epochs} if args.train_epochs is not None else {}
    params = with_section(
        params, "train", **train, storage_path=str(args.dir / "train"),
        model_options={"filter_multiplier": args.train_filters},
    )  # fmt: skip
    index = read_index(shards)
    num_classes = int(index["num_classes"])
    size = (params.loader.crop_height, params.loader.crop_width)
    options = dict(params.train.model_options)

    candidates = [("searched", g) for g in searched(args, params, shards)]
    for sized in sample_matched(
        candidates[0][1], args.random, num_classes=num_classes, size=size, model_options=options,
        tolerance=args.tolerance, max_draws=args.max_draws, seed=params.seed,
    ):  # fmt: skip
        candidates.append(("random", sized.genotype))

    rows, scores = [], {"searched": {"val": [], "dev": []}, "random": {"val": [], "dev": []}}
    for c, (kind, genotype) in enumerate(candidates):
        size_of = genotype_size(genotype, num_classes, size, **options)
        runs = [
            retrain(
                params, shards, genotype, seed, args.dir / "train" / f"c{c}_s{seed}", args.threads
            )
            for seed in range(args.seeds)
        ]
        vals = [r["val"] for r in runs]
        devs = [r["dev"] for r in runs if r["dev"] is not None]
        scores[kind]["val"] += vals
        scores[kind]["dev"] += devs
        path = "-".join(map(str, genotype.path))
        rows.append(
            (kind, path, size_of.params / 1e6, size_of.gflops, mean_std(vals), mean_std(devs))
        )
        print(f"{kind} {path}: val mIoU {mean_std(vals)}", flush=True)

    print(f"\n{len(candidates)} candidates x {args.seeds} seeds, {time.time() - started:.0f} s")
    print(f"{'kind':9} {'path':30} {'M params':>9} {'GFLOPs':>8} {'val mIoU':>18} {'dev mIoU':>18}")
    for kind, path, mparams, gflops, val, dev in rows:
        print(f"{kind:9} {path:30} {mparams:9.3f} {gflops:8.3f} {val:>18} {dev:>18}")
    for kind, s in scores.items():
        val, dev = mean_std(s["val"]), mean_std(s["dev"])
        print(f"{kind:9} {'(all runs)':30} {'':9} {'':8} {val:>18} {dev:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
