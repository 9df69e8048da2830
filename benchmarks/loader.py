"""Training-loader throughput on CamVid, side by side in one run (not a test).

Measured, interleaved ``--repeats`` times, medians reported (the machine is shared and noisy):

  (a)  shard loader, one process: memory-mapped Arrow shards -> decode -> train augmentation ->
       tensors (``ShardDataset``), images/s;
  (a8) as (a) but without Normalize and with uint8 tensors out: the CPU cost when normalisation
       and the int64 mask move to the GPU (``make_dataloader(uint8=True)`` + ``normalize_batch``);
  (b)  per-file loader, one process: the usual torch ``Dataset`` that ``cv2.imread``s the PNG
       pair from the dataset folder, then the same augmentation and tensors;
  (c)  decode limit: ``cv2.imdecode`` of image + mask alone over the same encoded bytes held in
       memory, i.e. what (a) would reach if reading, augmentation and tensors were free;
  (d)  ``make_dataloader(train=True)`` with 0 and with ``--workers`` DataLoader workers (whole
       epochs, worker start-up included, as training pays it; always the segflow transform);
  (d8) as (d) with ``uint8=True``: a quarter of the bytes cross from the workers;
  (e)  the training transform alone on a Cityscapes-sized image (1024x2048, crop 512x1024), the
       segflow transform against the plain albumentations chain (scale -> pad -> crop).

Printed: images per wall second and per CPU second (the one to trust on a busy machine), minor
page faults per image, a/c (target >= 0.7), a/b and the worker scaling d(workers)/d(0).
``--profile`` adds the mean CPU cost of each step of the training transform; ``--baseline`` runs
(a) and (b) with the plain albumentations chain instead of the loader's transform.

    .venv/bin/python benchmarks/loader.py --root ../shared/datasets/camvid --profile
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

from segflow.config import LoaderParams
from segflow.data.datasets import open_dataset_by_name
from segflow.data.datasets.base import IGNORE_INDEX, DatasetAdapter
from segflow.data.loader import (
    ShardDataset,
    ShardReader,
    decode_image,
    decode_mask,
    make_dataloader,
    split_files,
    to_tensors,
)
from segflow.data.manifest import Manifest, build_manifest
from segflow.data.shards import write_shards
from segflow.data.transforms import reseed, train_transform


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", default="../shared/datasets/camvid", help="CamVid root")
    ap.add_argument("--split", default="train")
    ap.add_argument("--crop-height", type=int, default=360)
    ap.add_argument("--crop-width", type=int, default=480)
    ap.add_argument("--samples", type=int, default=0, help="samples per measurement (0: all)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for (d)")
    ap.add_argument("--batch-size", type=int, default=8, help="batch size for (d)")
    ap.add_argument("--codec", choices=("png", "jpg"), default="png", help="shard image codec")
    ap.add_argument("--rows-per-shard", type=int, default=64)
    ap.add_argument("--profile", action="store_true", help="per-step cost of the transform")
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="plain albumentations chain instead of the loader's transform (the 'before' figure)",
    )
    return ap.parse_args(argv)


def make_transform(params: LoaderParams, baseline: bool) -> A.Compose:
    """The loader's training transform, or with ``baseline`` the plain albumentations chain
    (RandomScale -> PadIfNeeded -> RandomCrop) that its RandomScaleCrop replaces."""
    if not baseline:
        return train_transform(params)
    j = params.color_jitter
    return A.Compose(
        [
            A.RandomScale(
                scale_limit=(params.scale_min - 1, params.scale_max - 1),
                mask_interpolation=cv2.INTER_NEAREST_EXACT,
                p=1.0,
            ),
            A.PadIfNeeded(
                params.crop_height,
                params.crop_width,
                border_mode=cv2.BORDER_CONSTANT,
                fill=tuple(255 * m for m in params.mean),
                fill_mask=IGNORE_INDEX,
            ),
            A.RandomCrop(params.crop_height, params.crop_width),
            A.HorizontalFlip(p=params.hflip),
            A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.0, p=1.0),
            A.Normalize(mean=params.mean, std=params.std),
        ],
        mask_interpolation=cv2.INTER_NEAREST_EXACT,
    )


class FileDataset(torch.utils.data.Dataset):
    """(b): the per-file loader most segmentation repos start with."""

    def __init__(self, pairs: list[tuple[str, str]], adapter: DatasetAdapter, transform) -> None:
        self.pairs, self.lut, self.transform = pairs, adapter.label_lut, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.pairs[i]
        image = cv2.cvtColor(cv2.imread(image_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(mask_path, cv2.IMREAD_UNCHANGED)
        if self.lut is not None:
            mask = self.lut[mask]
        out = self.transform(image=image, mask=mask)
        return to_tensors(out["image"], out["mask"])


def usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this process and of its finished children (the
    DataLoader workers, which are joined at the end of each epoch)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return cpu, me.ru_minflt + kids.ru_minflt


def rate(fn: Callable[[], int]) -> tuple[float, float, float]:
    """(images per wall second, images per CPU second, minor page faults per image).

    The CPU-time rate is the one to trust on a busy shared machine: it leaves out the time
    spent waiting for a core that another user's job holds.
    """
    wall, (cpu, faults) = time.perf_counter(), usage()
    count = fn()
    wall, (cpu2, faults2) = time.perf_counter() - wall, usage()
    return count / wall, count / (cpu2 - cpu), (faults2 - faults) / count


def profile(reader: ShardReader, transform: A.Compose, n: int) -> dict[str, float]:
    """Mean CPU milliseconds per sample of each step (means add up; medians would not)."""
    clock = time.process_time
    total: dict[str, float] = defaultdict(float)

    def timed(name: str, fn: Callable, *args, **kwargs):
        start = clock()
        out = fn(*args, **kwargs)
        total[name] += clock() - start
        return out

    for i in range(n):
        image_buf, mask_buf = reader.encoded(i)
        image = timed("decode image", decode_image, image_buf)
        mask = timed("decode mask", decode_mask, mask_buf)
        timed("reseed", reseed, transform, (0, i))
        data = {"image": image, "mask": mask}
        for step in transform.transforms:
            data = timed(type(step).__name__, step, **data)
        timed("to_tensors", to_tensors, data["image"], data["mask"])
        reseed(transform, (0, i))  # the same draw through the whole Compose: its own overhead
        timed("(whole Compose)", transform, image=image, mask=mask)
    return {k: 1e3 * v / n for k, v in total.items()}


def large_image_transform_ms(repeats: int) -> dict[str, float]:
    """(e): median CPU ms of each transform on a random 1024x2048 image, crop 512x1024."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1024, 2048, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (1024, 2048), dtype=np.uint8)
    params = LoaderParams(crop_height=512, crop_width=1024)
    times: dict[str, list[float]] = {"segflow": [], "baseline": []}
    transforms = {
        "segflow": make_transform(params, False),
        "baseline": make_transform(params, True),
    }
    for i in range(10 * repeats):
        for name, transform in transforms.items():
            reseed(transform, (0, i))
            start = time.process_time()
            transform(image=image, mask=mask)
            times[name].append(time.process_time() - start)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # One process means one core: OpenCV's and torch's own thread pools would otherwise make
    # the single-process figures depend on how busy the shared machine's second core is.
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    adapter = open_dataset_by_name("camvid", args.root)
    full = build_manifest(adapter)
    manifest = Manifest(full.split(args.split), full.classes, full.dataset)
    params = LoaderParams(crop_height=args.crop_height, crop_width=args.crop_width)
    transform = make_transform(params, args.baseline)

    with tempfile.TemporaryDirectory(prefix="segflow-bench-") as tmp:
        shard_dir = Path(tmp) / "shards"
        t0 = time.perf_counter()
        index = write_shards(
            manifest, adapter, shard_dir, args.rows_per_shard, image_codec=args.codec
        )
        shard_s = time.perf_counter() - t0
        total = index["splits"][args.split]["num_samples"]
        n = min(args.samples or total, total)
        size_mb = sum(p.stat().st_size for p in shard_dir.rglob("*.arrow")) / 1e6
        print(f"sharded {total} {args.split} samples in {shard_s:.1f} s ({size_mb:.0f} MB)")

        reader = ShardReader(split_files(shard_dir, args.split))
        held = [tuple(np.array(b) for b in reader.encoded(i)) for i in range(n)]  # copies
        frame = manifest.frame.iloc[:n]
        pairs = list(zip(frame["image_path"], frame["mask_path"], strict=True))
        file_ds = FileDataset(pairs, adapter, transform)
        order = np.random.default_rng(0).permutation(n)

        def shard_loader(epoch: int) -> int:
            ds = ShardDataset(shard_dir, args.split, transform, shuffle=True)
            ds.set_epoch(epoch)
            count = 0
            for _ in ds:
                count += 1
                if count == n:
                    break
            return count

        def per_file() -> int:
            for i in order:
                file_ds[int(i)]
            return n

        def decode_only() -> int:
            for image_buf, mask_buf in held:
                decode_image(image_buf)
                decode_mask(mask_buf)
            return n

        # a8: what (a) costs if images left the loader as uint8 and were normalised on the GPU.
        no_norm = A.Compose(
            [t for t in transform.transforms if not isinstance(t, A.Normalize)],
            mask_interpolation=cv2.INTER_NEAREST_EXACT,
        )

        def shard_uint8() -> int:
            for i in order:
                image, mask = reader.decoded(int(i))
                reseed(no_norm, (0, int(i)))
                out = no_norm(image=image, mask=mask)
                torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1)))
                torch.from_numpy(out["mask"])
            return n

        def dataloader(workers: int, uint8: bool = False) -> int:
            p = params.model_copy(update={"num_workers": workers})
            loader = make_dataloader(shard_dir, args.split, p, True, args.batch_size, uint8=uint8)
            return sum(len(batch["id"]) for batch in loader)

        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        faults: dict[str, list[float]] = {}
        names = [
            "a shard",
            "a8 uint8 out",
            "b per-file",
            "c decode",
            "d 0 workers",
            f"d {args.workers} workers",
            "d8 0 workers",
            f"d8 {args.workers} workers",
        ]
        load_before = os.getloadavg()[0]
        for r in range(args.repeats):
            runs = [
                lambda r=r: shard_loader(r),
                shard_uint8,
                per_file,
                decode_only,
                lambda: dataloader(0),
                lambda: dataloader(args.workers),
                lambda: dataloader(0, uint8=True),
                lambda: dataloader(args.workers, uint8=True),
            ]
            for name, fn in zip(names, runs, strict=True):
                w, c, f = rate(fn)
                wall.setdefault(name, []).append(w)
                cpu.setdefault(name, []).append(c)
                faults.setdefault(name, []).append(f)
        load_after = os.getloadavg()[0]
        mw = {k: statistics.median(v) for k, v in wall.items()}
        mc = {k: statistics.median(v) for k, v in cpu.items()}

        print(
            f"\nsettings: split={args.split} samples={n} crop={args.crop_height}x{args.crop_width} "
            f"codec={args.codec} repeats={args.repeats} batch={args.batch_size} "
            f"transform={'baseline' if args.baseline else 'segflow'}; "
            f"{os.cpu_count()} cores, 1-min load average {load_before:.1f} -> {load_after:.1f}"
        )
        print(
            f"{'measurement':<16}{'img/s wall':>11}{'img/CPU-s':>11}{'faults/img':>11}   wall runs"
        )
        for name in names:
            runs_txt = " ".join(f"{v:.0f}" for v in wall[name])
            flt = statistics.median(faults[name])
            print(f"{name:<16}{mw[name]:>11.1f}{mc[name]:>11.1f}{flt:>11.0f}   {runs_txt}")
        w = args.workers
        print("\nratio                                      wall  CPU-time")
        for label, num, den in [
            ("a/c  shard loader / decode limit", "a shard", "c decode"),
            ("a8/c same, uint8 out (normalise on GPU)", "a8 uint8 out", "c decode"),
            ("a/b  shard loader / per-file loader", "a shard", "b per-file"),
            (f"d    {w} workers / 0 workers", f"d {w} workers", "d 0 workers"),
            ("d8   same, uint8=True", f"d8 {w} workers", "d8 0 workers"),
        ]:
            print(f"{label:<40}{mw[num] / mw[den]:>6.2f}{mc[num] / mc[den]:>10.2f}")
        print(
            f"(CPU-time ratio of d: CPU cost per image without workers / with {w}; {w} x it is\n"
            f" the speed-up {w} workers give on {w} idle cores, which a shared machine lacks)"
        )

        large = large_image_transform_ms(args.repeats)
        print(
            "\n(e) transform only, 1024x2048 image, crop 512x1024, median CPU ms: "
            f"segflow {large['segflow']:.1f}, plain albumentations chain {large['baseline']:.1f}"
        )

        if args.profile:
            print("\nmean CPU ms per sample of each step (one process):")
            for step, ms in profile(reader, transform, n).items():
                print(f"  {step:<18}{ms:7.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
