"""Training loaders side by side in one run: ``loader.backend`` mmap against ray_data (not a test).

A consumer that stands for one training worker pulls the epoch's uint8 training batches (the
loop's ``training_loader``, exactly what ``train_one_epoch`` iterates) and spends a fixed
``--step-ms`` per batch on the "step", a sleep: a GPU step costs the host CPU almost nothing,
so the sleep leaves the cores to the loader as a GPU node would. Measured per whole epoch, as
training pays it (worker start-up and Ray Data's per-epoch planning included):

  mmap/0   ``loader.num_workers: 0``: decode and augment in the consumer, between steps;
  mmap/K   ``loader.num_workers: K`` (``--workers``) DataLoader processes beside it;
  ray_data Ray Data tasks on a local Ray of ``--ray-cpus`` CPUs, streamed to the consumer.

Printed per loader: images/s delivered, the share of the epoch the consumer waited for data
(the loop's ``data_wait_share``), and the ratio of images/s to mmap/0. Configurations are
interleaved ``--repeats`` times and medians reported; the first epoch of each (start-up) is
reported apart from the later ones.

    nice -n 10 .venv/bin/python benchmarks/loader_backends.py --root ../shared/datasets/camvid
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import cv2
import torch

from segflow.config import LoaderParams, SyntheticParams
from segflow.data.datasets import open_dataset_by_name
from segflow.data.manifest import Manifest, build_manifest
from segflow.data.ray_loader import training_loader
from segflow.data.shards import write_shards
from segflow.data.synthetic import generate_dataset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default="../shared/datasets/camvid", help="CamVid root")
    ap.add_argument(
        "--synthetic",
        type=int,
        default=0,
        help="N > 0: N generated 96x128 training scenes instead of CamVid (a quick check)",
    )
    ap.add_argument("--samples", type=int, default=0, help="training images used (0: all)")
    ap.add_argument("--crop-height", type=int, default=360)
    ap.add_argument("--crop-width", type=int, default=480)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--step-ms", type=float, default=100.0, help="consumer cost per batch")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per measurement")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of mmap/K")
    ap.add_argument("--ray-cpus", type=int, default=2, help="CPUs of the local Ray")
    return ap.parse_args(argv)


def make_shards(args: argparse.Namespace, out: Path) -> tuple[Path, int, tuple[int, int]]:
    """Train-split shards of CamVid (or of generated scenes); (shard dir, images, crop)."""
    if args.synthetic:
        root = out / "synthetic"
        generate_dataset(root, SyntheticParams(num_train=args.synthetic))
        adapter = open_dataset_by_name("synthetic", root)
        crop = (96, 128)
    else:
        adapter = open_dataset_by_name("camvid", args.root)
        crop = (args.crop_height, args.crop_width)
    full = build_manifest(adapter)
    train = full.split("train")
    if args.samples:
        train = train.iloc[: args.samples]
    manifest = Manifest(train, full.classes, full.dataset)
    t0 = time.perf_counter()
    index = write_shards(manifest, adapter, out / "shards", rows_per_shard=64)
    n = index["splits"]["train"]["num_samples"]
    print(f"sharded {n} training images in {time.perf_counter() - t0:.1f} s")
    return out / "shards", n, crop


def epoch(loader, number: int, step_s: float) -> tuple[float, float]:
    """(images/s, data-wait share) of one epoch, timed as ``train_one_epoch`` times it."""
    loader.dataset.set_epoch(number)
    images, waited = 0, 0.0
    start = tick = time.perf_counter()
    for batch in loader:
        waited += time.perf_counter() - tick
        images += batch["image"].shape[0]
        time.sleep(step_s)  # the training step, off the CPU (a GPU's)
        tick = time.perf_counter()
    seconds = time.perf_counter() - start
    return images / seconds, waited / seconds


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import ray
    from ray.data import DataContext

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="segflow-bench-") as tmp:
        shard_dir, n, crop = make_shards(args, Path(tmp))
        ray.init(
            num_cpus=args.ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=str(Path(tmp) / "ray"),
        )
        DataContext.get_current().enable_progress_bars = False
        loaders = {
            "mmap/0": ("mmap", 0),
            f"mmap/{args.workers}": ("mmap", args.workers),
            "ray_data": ("ray_data", 0),
        }
        first: dict[str, list[tuple[float, float]]] = defaultdict(list)
        later: dict[str, list[tuple[float, float]]] = defaultdict(list)
        t0 = time.perf_counter()
        try:
            for repeat in range(args.repeats):
                for name, (backend, workers) in loaders.items():
                    params = LoaderParams(
                        crop_height=crop[0],
                        crop_width=crop[1],
                        num_workers=workers,
                        backend=backend,
                    )
                    loader = training_loader(shard_dir, params, args.batch_size, 0, 1, 0)
                    for e in range(args.epochs):
                        rate, wait = epoch(loader, repeat * args.epochs + e, args.step_ms / 1e3)
                        (first if e == 0 else later)[name].append((rate, wait))
                        line = f"{rate:6.1f} img/s, data wait {100 * wait:3.0f}%"
                        print(f"  repeat {repeat + 1} {name:>8} epoch {e + 1}: {line}", flush=True)
        finally:
            ray.shutdown()
        wall = time.perf_counter() - t0

    print(
        f"\n{n} training images, crop {crop[0]}x{crop[1]}, batch {args.batch_size}, "
        f"step {args.step_ms:g} ms (sleep), {args.epochs} epochs x {args.repeats} repeats, "
        f"local Ray of {args.ray_cpus} CPUs; {wall:.0f} s measuring; "
        f"load {os.getloadavg()[0]:.1f}; {os.cpu_count()} CPUs"
    )
    ideal = args.batch_size / (args.step_ms / 1e3)
    print(f"a loader that never makes the step wait: {ideal:.1f} img/s\n")
    base = {key: statistics.median(r for r, _ in runs[next(iter(loaders))]) for key, runs in
            (("first", first), ("later", later)) if runs}  # fmt: skip
    print("| loader | img/s, epoch 1 | data wait, epoch 1 | img/s, later epochs | "
          "data wait, later | img/s vs mmap/0 (later) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name in loaders:
        cells = []
        for runs in (first[name], later[name]):
            if runs:
                cells += [f"{statistics.median(r for r, _ in runs):.1f}",
                          f"{100 * statistics.median(w for _, w in runs):.0f}%"]  # fmt: skip
            else:
                cells += ["-", "-"]
        key = "later" if later[name] else "first"
        runs = later[name] or first[name]
        ratio = statistics.median(r for r, _ in runs) / base[key]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
