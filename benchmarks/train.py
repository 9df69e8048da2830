"""Training speed side by side in one run, same data and model (not a test).

CPU mode (default), on the synthetic default dataset and the train section of params.yaml:

  (a) core: ``segflow.train.loop.fit`` called directly, one process, torch on ``--cpus`` threads;
  (b) Ray 1: ``train_distributed`` with 1 worker x ``--cpus`` CPUs (TorchTrainer, checkpoint and
      report every epoch);
  (c) Ray 2: 2 workers x ``--cpus // 2`` CPUs, DDP over gloo, the same per-worker batch.

An epoch's wall time runs from one epoch's start to the next one's, so it includes validation
and, under Ray, the checkpoint upload and report. The first epoch is a warm-up and is left
out. Printed: the Ray overhead b/a - 1 (target <= 10%) and the 2-worker speed-up in images/s.

Precision mode (``--precision``): the core loop (a) twice per repeat, ``train.bf16: false`` and
``true`` (CPU bf16 autocast), on the same shards from the same seed: epoch times, their ratio
and the val mIoU each reaches, i.e. the accuracy cost of bf16 next to its speed.

GPU mode (``--gpu``): CamVid 360x480 shards, DeepLab v3+ ResNet-50, bf16 autocast, channels_last,
1 GPU worker: images/s and the share of step time spent waiting for data.

    .venv/bin/python benchmarks/train.py --epochs 4
    .venv/bin/python benchmarks/train.py --precision --epochs 8 --repeats 1
    .venv/bin/python benchmarks/train.py --gpu --camvid ../shared/datasets/camvid
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from segflow.config import Params, SyntheticParams, load_params
from segflow.data.datasets import open_dataset_by_name
from segflow.data.manifest import build_manifest
from segflow.data.shards import write_shards
from segflow.data.synthetic import generate_dataset
from segflow.raycluster import connect_ray
from segflow.train.loop import fit
from segflow.train.run import train_distributed


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--shards", help="existing shard dir (default: build the synthetic default)")
    ap.add_argument("--epochs", type=int, default=6, help="per run; the first is a warm-up")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of (a), (b), (c)")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="GPU mode (CamVid, ResNet-50, bf16)")
    ap.add_argument("--precision", action="store_true", help="fp32 vs bf16 core loop on the CPU")
    ap.add_argument("--camvid", default="../shared/datasets/camvid")
    ap.add_argument("--batch-size", type=int, help="override train.batch_size")
    return ap.parse_args(argv)


def build_shards(work: Path, dataset: str, root: Path | None) -> Path:
    if dataset == "synthetic":
        root = work / "synthetic"
        generate_dataset(root, SyntheticParams())
    adapter = open_dataset_by_name(dataset, root)
    out = work / "shards"
    write_shards(build_manifest(adapter), adapter, out, rows_per_shard=64)
    return out


def with_train(params: Params, **train) -> Params:
    return params.model_copy(update={"train": params.train.model_copy(update=train)})


def epoch_walls(history: list[dict]) -> list[float]:
    """Start-to-start wall seconds of every epoch but the first (warm-up) and the last."""
    starts = [r["epoch_start_time"] for r in history]
    return [b - a for a, b in zip(starts[1:-1], starts[2:], strict=True)]


def summarise(name: str, runs: list[tuple[list[dict], float]]) -> dict:
    """Medians over the timed epochs of every repeat of one setting."""
    timed = [r for history, _ in runs for r in history[1:]]
    total = statistics.median(t for _, t in runs)
    row = {
        "name": name,
        "epoch_wall_s": statistics.median(w for history, _ in runs for w in epoch_walls(history)),
        "train_s": statistics.median(r["epoch_seconds"] for r in timed),
        "images_per_s": statistics.median(r["images_per_second"] for r in timed),
        "data_wait_share": statistics.median(r["data_wait_share"] for r in timed),
        "val_miou": runs[-1][0][-1]["val_miou"],
        "total_s": total,
    }
    print(
        f"{name:28s} epoch {row['epoch_wall_s']:7.2f} s  train {row['train_s']:7.2f} s  "
        f"{row['images_per_s']:7.1f} img/s  data wait {row['data_wait_share']:5.1%}  "
        f"mIoU {row['val_miou']:.3f}  run {total:6.1f} s (median of {len(runs)})",
        flush=True,
    )
    return row


def timed(fn) -> tuple[list[dict], float]:
    """(epoch history, wall seconds of the whole run, Ray start-up of the workers included)."""
    start = time.perf_counter()
    history = fn().history
    return history, time.perf_counter() - start


def cpu_mode(args: argparse.Namespace, params: Params, shards: Path, work: Path) -> None:
    base = with_train(params, epochs=args.epochs, log_every=10_000, storage_path=str(work / "ray"))
    if args.batch_size:
        base = with_train(base, batch_size=args.batch_size)
    p = base.train
    print(
        f"model {p.model}/{p.backbone} {p.model_options}, batch {p.batch_size}/worker, "
        f"{args.epochs} epochs (first = warm-up) x {args.repeats} repeats, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs visible",
        flush=True,
    )
    torch.set_num_threads(args.cpus)
    connect_ray(num_cpus=args.cpus)
    names = [f"core, 1 process x {args.cpus} thr"]
    names += [f"ray, {w} worker(s) x {args.cpus // w} CPU" for w in (1, 2)]
    runs: dict[str, list] = {name: [] for name in names}
    for repeat in range(args.repeats):  # interleaved: load from other users hits all alike
        core = with_train(base, run_name=f"core{repeat}")
        runs[names[0]].append(
            timed(lambda p=core: fit(p, shards, work / p.train.run_name, "cpu", echo=None))
        )
        for name, workers in zip(names[1:], (1, 2), strict=True):
            pw = with_train(
                base,
                num_workers=workers,
                cpus_per_worker=args.cpus // workers,
                run_name=f"r{workers}-{repeat}",
            )
            runs[name].append(
                timed(lambda p=pw: train_distributed(p, shards, work / p.train.run_name))
            )
    rows = [summarise(name, runs[name]) for name in names]
    a, r1, r2 = rows
    wall, train = r1["epoch_wall_s"] / a["epoch_wall_s"] - 1, r1["train_s"] / a["train_s"] - 1
    print(f"Ray overhead, 1 worker vs core: epoch wall {wall:+.1%}, train time {train:+.1%}")
    print(f"2 workers vs 1: images/s x{r2['images_per_s'] / r1['images_per_s']:.2f}, "
          f"epoch wall x{r1['epoch_wall_s'] / r2['epoch_wall_s']:.2f} faster")  # fmt: skip


def precision_mode(args: argparse.Namespace, params: Params, shards: Path, work: Path) -> None:
    base = with_train(params, epochs=args.epochs, log_every=10_000)
    torch.set_num_threads(args.cpus)
    load = os.getloadavg()[0]
    print(
        f"model {base.train.model}/{base.train.backbone} {base.train.model_options}, "
        f"{args.epochs} epochs (first = warm-up) x {args.repeats} repeats, core loop, "
        f"{args.cpus} threads, torch {torch.__version__}; load average {load:.2f}",
        flush=True,
    )
    runs: dict[bool, list] = {False: [], True: []}
    for repeat in range(args.repeats):
        for bf16 in (False, True):
            p = with_train(base, bf16=bf16)
            out = work / f"bf16-{bf16}-{repeat}"
            runs[bf16].append(timed(lambda p=p, out=out: fit(p, shards, out, "cpu", echo=None)))
    fp32, bf16 = (summarise(name, runs[on]) for name, on in (("fp32", False), ("bf16", True)))
    print(
        f"bf16 vs fp32: train time x{fp32['train_s'] / bf16['train_s']:.2f} faster, "
        f"val mIoU {bf16['val_miou'] - fp32['val_miou']:+.3f}; "
        f"load average now {os.getloadavg()[0]:.2f}"
    )


def gpu_mode(args: argparse.Namespace, params: Params, shards: Path, work: Path) -> None:
    if not torch.cuda.is_available():
        sys.exit("--gpu: no CUDA device here")
    gpu = with_train(
        params,
        model="deeplabv3plus",
        backbone="resnet50",
        output_stride=16,
        model_options={},
        batch_size=args.batch_size or 16,
        epochs=args.epochs,
        bf16=True,
        channels_last=True,
        use_gpu=True,
        num_workers=1,
        cpus_per_worker=max(1, (os.cpu_count() or 2) - 1),
        storage_path=str(work / "ray"),
        run_name="gpu",
        log_every=20,
    )
    loader = params.loader.model_copy(
        update={"crop_height": 360, "crop_width": 480, "num_workers": 8}
    )
    gpu = gpu.model_copy(update={"loader": loader})
    connect_ray()
    run = timed(lambda: train_distributed(gpu, shards, work / "gpu"))
    summarise("gpu, 1 worker, bf16, channels_last", [run])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    params = load_params(args.params)
    with tempfile.TemporaryDirectory(prefix="segflow-bench-") as tmp:
        work = Path(tmp)
        if args.shards:
            shards = Path(args.shards)
        elif args.gpu:
            shards = build_shards(work, "camvid", Path(args.camvid))
        else:
            shards = build_shards(work, "synthetic", None)
        mode = gpu_mode if args.gpu else precision_mode if args.precision else cpu_mode
        mode(args, params, shards.resolve(), work)


if __name__ == "__main__":
    main()
