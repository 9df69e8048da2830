"""Size and speed of every registered model at its defaults, side by side in one run (not a test).

CPU (default): for each model, built with ``num_classes=21`` and every option at its default:

  * params and GFLOPs at 512x512 from :func:`segflow.models.summary.model_summary` (meta
    device; FlopCounterMode counts 2 FLOPs per multiply-accumulate, convs and matmuls only);
  * forward time at 360x480 (CamVid's size), batch 1, eval, ``no_grad``, float32,
    ``torch.set_num_threads(--threads)``: one warm-up round, then ``--repeats`` rounds that
    run every model once each (interleaved, so load from other processes on a shared machine
    spreads over all models instead of landing on one); the median and the minimum per model.

``--gpu`` (for an H100-class machine): training throughput, forward + backward of a
cross-entropy loss (no optimiser step), images/s at 512x512, bf16 autocast, channels_last,
batch ``--batch``, median of ``--steps`` timed steps after warm-up. When torchvision is
importable, its ``deeplabv3_resnet50`` and ``fcn_resnet50`` (no aux head, same batch and
precision) run in the same process next to the matching segflow models (deeplabv3 at output
stride 8 and fcn_resnet, the same architectures) and the ratio segflow/torchvision is printed.

    .venv/bin/python benchmarks/models.py                 # CPU table (markdown)
    .venv/bin/python benchmarks/models.py --gpu --batch 16
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from segflow.models import build, list_models
from segflow.models.summary import model_summary

NUM_CLASSES = 21


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(list_models()), help="comma-separated names")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gpu", action="store_true", help="training throughput on CUDA instead")
    p.add_argument("--device", default="cuda", help="device for --gpu (cpu only to smoke-test)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=512, help="square input size for --gpu")
    p.add_argument("--steps", type=int, default=20)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- CPU


def run_cpu(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    x = torch.randn(1, 3, args.height, args.width)
    models = {}
    for name in names:
        torch.manual_seed(0)
        models[name] = build(name, NUM_CLASSES).eval()
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for round_ in range(args.warmup + args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - start)
    print(
        f"# torch {torch.__version__}, {platform.machine()}, {args.threads} threads, forward at "
        f"{args.height}x{args.width}, batch 1, float32, {args.repeats} interleaved rounds"
    )
    print("| model | params (M) | GFLOPs @512 | CPU forward median (s) | min (s) |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        summary = model_summary(name, NUM_CLASSES)
        print(
            f"| {name} | {summary['params'] / 1e6:.1f} | {summary['gflops']:.0f} | "
            f"{statistics.median(times[name]):.2f} | {min(times[name]):.2f} |"
        )


# --------------------------------------------------------------------------- GPU


def train_images_per_second(
    model: nn.Module, batch: int, size: int, steps: int, device: torch.device
) -> float:
    """Forward + backward images/s at ``size`` x ``size``, bf16 autocast, channels_last."""
    model = model.to(device, memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(x)
            out = out["out"] if isinstance(out, dict) else out  # torchvision returns a dict
            loss = F.cross_entropy(out.float(), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):  # cudnn autotuning, allocator warm-up
        step()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def torchvision_models() -> dict[str, Callable[[], nn.Module]]:
    """torchvision's references, keyed by the segflow model (and options) they match."""
    try:
        from torchvision.models import segmentation as tv
    except ImportError:
        return {}
    return {
        "deeplabv3 (os 8)": lambda: tv.deeplabv3_resnet50(weights=None, num_classes=NUM_CLASSES),
        "fcn_resnet": lambda: tv.fcn_resnet50(weights=None, num_classes=NUM_CLASSES),
    }


def run_gpu(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu"
    print(
        f"# torch {torch.__version__}, {name}, train fwd+bwd at {args.size}x{args.size}, "
        f"batch {args.batch}, bf16 autocast, channels_last"
    )
    references = torchvision_models()
    if not references:
        print("# torchvision not importable: no side-by-side reference")
    print("| model | images/s | torchvision images/s | segflow / torchvision |")
    print("|---|---:|---:|---:|")
    runs = [(n, {}) for n in args.models.split(",")]
    if "deeplabv3" in args.models.split(","):  # torchvision's deeplabv3 runs at output stride 8
        runs.append(("deeplabv3 (os 8)", {"output_stride": 8}))
    for label, options in runs:
        model_name = label.split(" ")[0]
        torch.manual_seed(0)
        ours = train_images_per_second(
            build(model_name, NUM_CLASSES, **options), args.batch, args.size, args.steps, device
        )
        row = f"| {label} | {ours:.1f} |"
        if label in references:
            theirs = train_images_per_second(
                references[label](), args.batch, args.size, args.steps, device
            )
            row += f" {theirs:.1f} | {ours / theirs:.2f} |"
        else:
            row += " | |"
        print(row, flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.gpu:
        run_gpu(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
