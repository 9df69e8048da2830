"""Training-step time of one model under precision and compile variants, side by side (not a test).

Each variant is one copy of the same model (same initial weights) taking full SGD steps
(forward, fp32 loss, backward, optimizer step) on the same random batch, channels_last, with
``torch.set_num_threads(--threads)``:

  * ``fp32``          plain float32;
  * ``bf16``          ``train.bf16: true``: CPU autocast to bfloat16 (what ``auto`` picks on CPUs
                      with AVX512-BF16 or AMX; this script prints whether this one has them);
  * ``compile``       ``train.compile: true`` (``nn.Module.compile()``, inductor), float32;
  * ``compile+bf16``  both.

After ``--warmup`` steps each (compilation happens there and is timed separately), ``--repeats``
rounds run one step of every variant in turn (interleaved, so load from other processes on a
shared machine spreads over all variants); the median step time and the speed relative to the
first variant listed (its median step time / this one's: above 1 is faster) are printed,
with the load average before and after the run. ``--variants`` picks a subset.

    python benchmarks/training_step.py                      # deeplabv3plus r18, 4 x 180x240
    python benchmarks/training_step.py --model bisenetv2 --variants fp32,bf16
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.nn.functional as F

from segflow.models import build
from segflow.train.precision import cpu_has_bf16

VARIANTS = ("fp32", "bf16", "compile", "compile+bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deeplabv3plus")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--options", default="aspp_channels=64", help="k=v,... (ints) or empty")
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--width", type=int, default=240)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = {k: int(v) for k, v in (kv.split("=") for kv in args.options.split(",") if kv)}
    base = build(args.model, args.classes, backbone=args.backbone or None, **options)
    base = base.to(memory_format=torch.channels_last).train()
    x = torch.randn(args.batch, 3, args.height, args.width).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, args.classes, (args.batch, args.height, args.width))
    variants = [v for v in args.variants.split(",") if v]
    models, optimizers, warm = {}, {}, {}
    load_before = os.getloadavg()
    for name in variants:
        model = copy.deepcopy(base)
        if name.startswith("compile"):
            model.compile()
        models[name] = model
        optimizers[name] = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(name: str) -> float:
        model, opt = models[name], optimizers[name]
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.endswith("bf16")):
            out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    for name in variants:
        warm[name] = sum(step(name) for _ in range(args.warmup))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name in variants:
            times[name].append(step(name))
    load_after = os.getloadavg()
    print(
        f"{args.model} ({args.backbone}, {options}), batch {args.batch} x "
        f"{args.height}x{args.width}, {args.threads} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"AVX512-BF16/AMX: {cpu_has_bf16()}"
    )
    print(
        f"load average before {load_before[0]:.2f} / after {load_after[0]:.2f}; "
        f"{args.repeats} interleaved rounds after {args.warmup} warm-up steps"
    )
    print("| variant | warm-up (s) | median step (s) | min step (s) | speed vs the first |")
    print("|---|---|---|---|---|")
    ref = statistics.median(times[variants[0]])
    for name in variants:
        med = statistics.median(times[name])
        print(
            f"| {name} | {warm[name]:.1f} | {med:.3f} | {min(times[name]):.3f} | {ref / med:.2f} |"
        )


if __name__ == "__main__":
    main()
