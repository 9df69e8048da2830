"""Throughput of ``segflow predict-many`` with 1 and 2 actors, side by side (not a test).

The model is the camvid-cpu recipe's (DeepLab v3+ ResNet-18, 128-channel ASPP, 11 classes, random
weights: the time does not depend on them) served as that recipe scores it (240x320, flip + 3
scales) or single-scale (``--mode single``). The images are the first ``--images`` CamVid val
images (``--camvid ROOT``) or as many smooth random 360x480 PNGs.

Each configuration is a whole ``predict_many`` run into a fresh folder on the same local Ray
(started before the first run, so no run pays for it): ``1x2`` is one actor with 2 torch
threads, ``2x1`` two actors with one thread each (this machine has 2 cores). ``--rounds``
rounds run the configurations in turn, so load from other processes spreads over both. Printed
per run: wall seconds (actor start and model load included), images/s, and the median ms one
image took inside its actor; then the median images/s per configuration, relative to ``1x2``.

    python benchmarks/predict_many.py
    python benchmarks/predict_many.py --camvid ../shared/datasets/camvid --mode single
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segflow.config import TrainParams
from segflow.deploy.batch import ModelFiles, predict_many
from segflow.evaluate.serving import ServingSpec

CONFIGS = {"1x2": (1, 2), "2x1": (2, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--camvid", type=Path, help="CamVid root: its val images")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--mode", default="multiscale", choices=("multiscale", "single"))
    p.add_argument("--rounds", type=int, default=2)
    return p.parse_args(argv)


def model(mode: str) -> ModelFiles:
    """The camvid-cpu network in the train stage's checkpoint format, with its serving spec."""
    from segflow.models.checkpoint import build_model

    p = TrainParams(
        model="deeplabv3plus", backbone="resnet18", model_options={"aspp_channels": 128}
    )
    torch.manual_seed(0)
    network = build_model(p, 11)
    payload = {
        "model": network.state_dict(),
        "train_params": p.model_dump(mode="json"),
        "num_classes": 11,
        "classes": [{"id": i, "name": f"class{i}", "color": [20 * i, 80, 160]} for i in range(11)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(payload, Path(tmp) / "model.pt")
        data = (Path(tmp) / "model.pt").read_bytes()
    options = {"scales": [0.75, 1.0, 1.25], "flip": True} if mode == "multiscale" else {}
    spec = ServingSpec(mode=mode, options=options, input_size=(240, 320))
    return ModelFiles(data, spec.to_dict(), payload["classes"])


def images(args: argparse.Namespace, folder: Path) -> Path:
    folder.mkdir(parents=True)
    if args.camvid is not None:
        for path in sorted((args.camvid / "val").glob("*.png"))[: args.images]:
            (folder / path.name).write_bytes(path.read_bytes())
        return folder
    rng = np.random.default_rng(0)
    for i in range(args.images):
        noise = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), cv2.GaussianBlur(noise, (0, 0), 3.0))
    return folder


def main(argv: list[str] | None = None) -> None:
    from segflow.raycluster import connect_ray

    args = parse_args(argv)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    start = time.perf_counter()
    connect_ray()
    files = model(args.mode)
    rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        source = images(args, Path(tmp) / "images")
        what = "CamVid val" if args.camvid else "random 360x480"
        print(f"{args.images} {what} images, camvid-cpu model, {args.mode} inference at 240x320")
        print(f"{'run':10s} {'wall s':>7s} {'images/s':>9s} {'ms/image in actor':>18s}")
        for round_ in range(args.rounds):
            for name, (actors, threads) in CONFIGS.items():
                out = Path(tmp) / f"out-{name}-{round_}"
                outcome = predict_many(
                    files, [str(source)], out, actors=actors, threads=threads, progress=False
                )
                assert outcome.written == args.images, outcome.failed
                rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
                ms = statistics.median(r["ms"] for r in rows)
                rate = outcome.images_per_second
                rates[name].append(rate)
                print(f"{name} r{round_ + 1:<5d} {outcome.seconds:7.1f} {rate:9.3f} {ms:18.0f}")
    base = statistics.median(rates["1x2"])
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name}: median {rate:.3f} images/s, {rate / base:.2f}x of 1x2")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
