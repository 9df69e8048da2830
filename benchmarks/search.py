"""One Auto-DeepLab search step against one DeepLab v3+ training step, side by side (not a test).

The search step is what the search stage runs per batch (segflow/search/loop.py): an
architecture step (forward + backward on a trainB batch, Adam on alpha and beta) and a weight
step (forward + backward on a trainA batch, SGD on the weights). The training step is one
forward + backward + SGD step of DeepLab v3+ ResNet-50 (output stride 16, 256-channel ASPP) at
the same crop and batch. Defaults are the paper's search setting: supernet L = 12, F = 8,
B = 5, crop 321 x 321, batch 2, 19 classes (Cityscapes).

Each model runs in its own child process, so its peak memory is its own: on the CPU the child's
peak resident set size (``ru_maxrss``, which includes the ~0.3 GB of the Python + torch
runtime), on the GPU ``torch.cuda.max_memory_allocated``. ``--memory-limit-gb`` caps a CPU
child's address space, so a setting too large for a shared machine fails in that child instead
of pushing other processes out. Time: ``--warmup`` untimed steps, then the median of
``--steps`` timed steps, ``torch.set_num_threads(--threads)``.

    .venv/bin/python benchmarks/search.py                       # CPU, the paper's setting
    .venv/bin/python benchmarks/search.py --layers 6 --crop 161 # smaller
    .venv/bin/python benchmarks/search.py --gpu                 # CUDA
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--filter-multiplier", type=int, default=8)
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--crop", type=int, default=321)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="run on CUDA")
    p.add_argument("--memory-limit-gb", type=float, default=0, help="CPU child cap (0: none)")
    p.add_argument("--child", choices=["search", "train"], help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _search_step(args: argparse.Namespace, device: torch.device):
    from segflow.search.supernet import Supernet

    net = Supernet(args.classes, args.layers, args.filter_multiplier, args.blocks).to(device)
    weight_opt = torch.optim.SGD(net.weight_parameters(), lr=0.025, momentum=0.9)
    arch_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-3, betas=(0.5, 0.999))

    def step(batch_a, batch_b) -> None:
        for (x, y), opt in ((batch_b, arch_opt), (batch_a, weight_opt)):
            loss = F.cross_entropy(net(x), y, ignore_index=255)
            net.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    params = sum(p.numel() for p in net.parameters())
    return step, params


def _train_step(args: argparse.Namespace, device: torch.device):
    from segflow.models import build

    model = build("deeplabv3plus", args.classes, backbone="resnet50").to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(batch_a, batch_b) -> None:
        x, y = batch_a
        loss = F.cross_entropy(model(x), y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    params = sum(p.numel() for p in model.parameters())
    return step, params


def run_child(args: argparse.Namespace) -> dict:
    if args.memory_limit_gb and not args.gpu:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if args.gpu else "cpu")
    make = _search_step if args.child == "search" else _train_step
    step, params = make(args, device)

    def batch():
        x = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
        y = torch.randint(0, args.classes, (args.batch, args.crop, args.crop), device=device)
        return x, y

    a, b = batch(), batch()
    for _ in range(args.warmup):
        step(a, b)
    if args.gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step(a, b)
        if args.gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if args.gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {"seconds": statistics.median(times), "peak_gb": peak, "params_m": params / 1e6}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return
    passthrough = list(argv if argv is not None else sys.argv[1:])
    rows = {}
    for child in ("train", "search"):
        out = subprocess.run(
            [sys.executable, __file__, *passthrough, "--child", child],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            rows[child] = {"error": last}
        else:
            rows[child] = json.loads(out.stdout.strip().splitlines()[-1])
    device = torch.cuda.get_device_name() if args.gpu else platform.processor() or "CPU"
    print(
        f"device: {device}; threads {args.threads}; crop {args.crop}x{args.crop}, batch "
        f"{args.batch}, {args.classes} classes; median of {args.steps} steps after "
        f"{args.warmup} warm-up\n"
    )
    print("| step | params (M) | seconds / step | peak memory (GB) |")
    print("|---|---:|---:|---:|")
    names = {
        "train": "DeepLab v3+ ResNet-50 training step",
        "search": f"supernet search step (L={args.layers}, F={args.filter_multiplier}, "
        f"B={args.blocks}; arch + weight step)",
    }
    for child in ("train", "search"):
        r = rows[child]
        if "error" in r:
            print(f"| {names[child]} | - | failed: {r['error']} | - |")
        else:
            print(
                f"| {names[child]} | {r['params_m']:.2f} | {r['seconds']:.2f} | "
                f"{r['peak_gb']:.2f} |"
            )
    if "error" not in rows["train"] and "error" not in rows["search"]:
        ratio = rows["search"]["seconds"] / rows["train"]["seconds"]
        print(f"\nsearch step / training step: {ratio:.1f}x time")


if __name__ == "__main__":
    main()
