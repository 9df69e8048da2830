"""Dense CRF over CamVid val: one process against Ray tasks on all cores (not a test).

There is no trained model yet, so the "network" probabilities are made from the ground truth
the way an output-stride-8 network's look (the recipe, per image, seeded):

  1. one-hot of the label map (11 classes); void pixels (255) get uniform 1/11;
  2. area-downsample by 8 and bilinear-upsample back (the OS-8 logit grid: boundaries smeared
     over ~8 px, thin poles and signs washed out);
  3. Gaussian blur, sigma ``--blur`` px (default 4);
  4. logits = ``--temperature`` (6) x that + spatially correlated noise (white noise blurred
     with sigma ``--noise-sigma`` = 6 px, scaled to std ``--noise`` = 1.5), softmax.

The argmax of these is wrong in bands along boundaries and in noise blobs (mIoU ~0.65), which
is what the CRF is for. They are saved with ``save_probs`` (uint8) and everything below reads
those files, as the crf_tune/evaluate stages will.

Measured, ``--repeats`` times interleaved (the machine is shared), medians:
  serial  ``crf_over_split_serial`` over ``--images`` images in this process;
  ray     ``crf_over_split`` over the same images as Ray tasks on ``--cpus`` CPUs (Ray started
          and its workers warmed before timing: a pipeline stage pays that once per split).
Printed: images/s of each, speed-up ray/serial and efficiency per core (speed-up / cores;
target >= 0.85); images per CPU-second of each (all CPU of this process and its descendants,
i.e. Ray's GCS, raylet and workers too), whose ratio is the efficiency that the wall-clock
figure shows only on otherwise idle cores; then mIoU and pixel accuracy of the whole split
before and after the CRF (default CRFParams), computed with the Ray path. ``--sweep N`` adds a
2x2x2 Ray Tune grid (w_bilateral 3/5, sigma_alpha 30/80, sigma_beta 3/5) on the first N images.

    .venv/bin/python benchmarks/crf.py --root ../shared/datasets/camvid --sweep 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from segflow.data.datasets.base import read_label_png, read_rgb
from segflow.evaluate.crf_split import crf_over_split, crf_over_split_serial
from segflow.postprocess.crf_params import CRFParams
from segflow.postprocess.probs import list_ids, save_probs

NUM_CLASSES = 11
VOID = 11


def synthetic_probs(
    label: np.ndarray,
    rng: np.random.Generator,
    blur: float,
    temperature: float,
    noise: float,
    noise_sigma: float,
) -> np.ndarray:
    """Network-like softmax (CxHxW float32) from a label map; the recipe in the docstring."""
    h, w = label.shape
    onehot = np.zeros((h, w, NUM_CLASSES), np.float32)
    valid = label != 255
    onehot[valid, label[valid]] = 1.0
    onehot[~valid] = 1.0 / NUM_CLASSES
    small = cv2.resize(onehot, (w // 8, h // 8), interpolation=cv2.INTER_AREA)
    smooth = cv2.GaussianBlur(
        cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), (0, 0), blur
    )
    field = cv2.GaussianBlur(
        rng.normal(0, 1, (h, w, NUM_CLASSES)).astype(np.float32), (0, 0), noise_sigma
    )
    logits = temperature * smooth + field * (noise / field.std())
    logits -= logits.max(axis=2, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=2, keepdims=True)).transpose(2, 0, 1).copy()


def tree_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of this process and all its descendants, by pid.

    A local Ray's GCS, raylet and workers are all descendants of the driver, so this charges
    the Ray pass with everything Ray spent, not just the CRF inside the tasks.
    """
    out = {}
    for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except psutil.Error:  # exited meanwhile
            pass
    return out


def cpu_since(before: dict[int, float]) -> float:
    return sum(t - before.get(pid, 0.0) for pid, t in tree_cpu().items())


def prepare(root: Path, out: Path, args: argparse.Namespace) -> None:
    names = sorted(p.name for p in (root / "val").glob("*.png"))
    for i, name in enumerate(names):
        image = read_rgb(root / "val" / name)
        label = read_label_png(root / "valannot" / name)
        label = np.where(label == VOID, 255, label).astype(np.uint8)
        rng = np.random.default_rng(args.seed + i)
        probs = synthetic_probs(
            label, rng, args.blur, args.temperature, args.noise, args.noise_sigma
        )
        save_probs(out, Path(name).stem, image, label, probs, dtype="uint8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/datasets/camvid"))
    parser.add_argument("--images", type=int, default=32, help="images in each timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--blur", type=float, default=4.0)
    parser.add_argument("--temperature", type=float, default=6.0)
    parser.add_argument("--noise", type=float, default=1.5)
    parser.add_argument("--noise-sigma", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep", type=int, default=0, help="also run a small CRF grid sweep on this many images"
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the saved probs here")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        prob_dir = args.work_dir or Path(tmp) / "probs"
        t0 = time.perf_counter()
        prepare(args.root, prob_dir, args)
        ids = list_ids(prob_dir)
        size = sum(p.stat().st_size for p in Path(prob_dir).glob("*.npz"))
        print(
            f"saved {len(ids)} images in {time.perf_counter() - t0:.1f} s, {size / 2**20:.0f} MiB "
            f"({size / len(ids) / 2**20:.2f} MiB per image, uint8 probs + image + label)"
        )

        params = CRFParams()
        timed = ids[: args.images]
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        crf_over_split(prob_dir, params, NUM_CLASSES, ids=ids[: 2 * args.cpus])  # warm workers
        wall: dict[str, list[float]] = {"serial": [], "ray": []}
        cpu: dict[str, list[float]] = {"serial": [], "ray": []}
        results = {}
        runs = {
            "serial": lambda: crf_over_split_serial(prob_dir, params, NUM_CLASSES, ids=timed),
            "ray": lambda: crf_over_split(prob_dir, params, NUM_CLASSES, ids=timed),
        }
        for _ in range(args.repeats):
            for name, run in runs.items():
                c, t = tree_cpu(), time.perf_counter()
                results[name] = run()
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(cpu_since(c))
                print(
                    f"  {name:6s} {len(timed) / wall[name][-1]:.2f} img/s wall, "
                    f"{len(timed) / cpu[name][-1]:.2f} img per CPU-s, load {os.getloadavg()[0]:.1f}"
                )
        assert np.array_equal(results["serial"].confusion, results["ray"].confusion)
        n = len(timed)
        rate = {k: n / statistics.median(v) for k, v in wall.items()}
        cpu_rate = {k: n / statistics.median(v) for k, v in cpu.items()}
        speedup = rate["ray"] / rate["serial"]
        cpu_eff = cpu_rate["ray"] / cpu_rate["serial"]
        print(f"\n{n} images x {args.repeats} repeats, medians; Ray on {args.cpus} CPUs")
        for k in runs:
            print(f"{k:6s} {rate[k]:.2f} img/s wall  {cpu_rate[k]:.2f} img per CPU-s")
        print(f"wall: speed-up {speedup:.2f}x, per core {speedup / args.cpus:.2f} (target >= 0.85)")
        print(
            f"CPU: serial CPU per image / Ray CPU per image (all Ray processes) {cpu_eff:.2f}; "
            f"speed-up on {args.cpus} idle cores ~ {args.cpus * cpu_eff:.2f}x"
        )
        print(f"Ray confusion == serial confusion: True; load average now {os.getloadavg()}")

        before = crf_over_split(prob_dir, None, NUM_CLASSES)
        t = time.perf_counter()
        after = crf_over_split(prob_dir, params, NUM_CLASSES)
        full = time.perf_counter() - t
        print(f"\nwhole split ({before.num_images} images), CRF {params}:")
        for label, res in (("before CRF", before), ("after CRF", after)):
            m = res.metrics
            print(
                f"  {label:10s} mIoU {m['miou']:.4f}  PA {m['pixel_accuracy']:.4f}  "
                f"MPA {m['mean_accuracy']:.4f}"
            )
        print("  per-class IoU before:", " ".join(f"{x:.2f}" for x in before.metrics["iou"]))
        print("  per-class IoU after: ", " ".join(f"{x:.2f}" for x in after.metrics["iou"]))
        print(f"  (Ray pass over the split: {full:.1f} s, {after.num_images / full:.2f} img/s)")
        if args.sweep:
            sweep(prob_dir, ids[: args.sweep], Path(tmp) / "tune")
        ray.shutdown()


def sweep(prob_dir: Path, ids: list[str], storage: Path) -> None:
    """A 2x2x2 grid around DeepLab's defaults with Ray Tune, one CPU per trial."""
    from segflow.tune.crf_search import crf_sweep

    space = {"w_bilateral": [3.0, 5.0], "sigma_alpha": [30.0, 80.0], "sigma_beta": [3.0, 5.0]}
    t = time.perf_counter()
    result = crf_sweep(prob_dir, NUM_CLASSES, storage, space=space, ids=ids)
    print(f"\nCRF grid sweep on {len(ids)} images, {len(result.trials)} trials, "
          f"{time.perf_counter() - t:.0f} s; best first:")  # fmt: skip
    for row in result.trials:
        print(f"  w_bilateral {row['w_bilateral']:.0f}  sigma_alpha {row['sigma_alpha']:3.0f}  "
              f"sigma_beta {row['sigma_beta']:.0f}  mIoU {row['miou']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
