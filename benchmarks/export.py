"""ms per 360x480 image of the served model in four runtimes, side by side (not a test).

The model is the camvid-cpu recipe's (DeepLab v3+ ResNet-18 at output stride 16, 128-channel
ASPP, 11 classes; random weights unless ``--checkpoint`` names a trained one), served as that
recipe scores it: resized to 240x320, flip + 3 scales (0.75, 1, 1.25), logits back at 360x480,
argmax; and single-scale for comparison (``--modes``). Four ways to run it, on the same uint8 image:

  * ``eager``        the PyTorch served path (:class:`segflow.evaluate.serving.Predictor`:
                     OpenCV resize, the inference mode, numpy argmax), what ``segflow predict``
                     and the evaluate stage run;
  * ``compile``      ``torch.compile`` of the exported graph module (:class:`ServedGraph`);
  * ``torchscript``  the file ``segflow export --format torchscript`` writes;
  * ``onnxruntime``  the file ``segflow export --format onnx`` writes, on onnxruntime's CPU
                     provider.

Every runtime gets ``--threads`` threads. After ``--warmup`` calls each (compilation happens
in the first and is timed separately; TorchScript optimises after its first calls),
``--repeats`` rounds run one image through every runtime in turn (interleaved, so load from
other processes spreads over all of them); the median ms and the speed relative to eager
(eager's ms / this one's: above 1 is faster) are printed, with the load average before and
after. Each export's labels are compared with eager's on the timed image; with
``--checkpoint`` (a trained CamVid model) and ``--camvid ROOT`` also on every image of
``ROOT/val`` (the issue's bar: >= 99.9% of the pixels of every image).

    python benchmarks/export.py
    python benchmarks/export.py --checkpoint models/best.pt --camvid ../shared/datasets/camvid
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from segflow.deploy.export import Source, build_graph, export_model, load_runner, load_source
from segflow.evaluate.serving import Predictor, ServingSpec

RUNTIMES = ("eager", "compile", "torchscript", "onnxruntime")
CAMVID_CPU = ServingSpec(
    mode="multiscale", options={"scales": [0.75, 1.0, 1.25], "flip": True}, input_size=(240, 320)
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="a trained CamVid model (models/best.pt)")
    p.add_argument("--serving", type=Path, help="its serving spec (default: camvid-cpu's)")
    p.add_argument("--camvid", type=Path, help="CamVid root: labels compared on ROOT/val")
    p.add_argument("--modes", default="multiscale,single")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="calls before timing (TorchScript's "
                   "profiling executor optimises after its first calls)")  # fmt: skip
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=480)
    return p.parse_args(argv)


def model_source(args: argparse.Namespace, tmp: Path) -> Source:
    if args.checkpoint is not None:
        serving = args.serving
        if serving is None:
            serving = tmp / "serving.json"
            serving.write_text(json.dumps(CAMVID_CPU.to_dict()))
        return load_source(str(args.checkpoint), serving)
    from segflow.models import build

    torch.manual_seed(0)
    network = build(
        "deeplabv3plus", 11, backbone="resnet18", output_stride=16, aspp_channels=128
    ).eval()
    return Source("deeplabv3plus-r18 (random weights)", network, CAMVID_CPU, [], {})


def test_image(args: argparse.Namespace) -> np.ndarray:
    """A CamVid val image when --camvid is given, else a smooth random one, at the size asked."""
    import cv2

    if args.camvid is not None:
        first = sorted((args.camvid / "val").glob("*.png"))[0]
        image = cv2.cvtColor(cv2.imread(str(first)), cv2.COLOR_BGR2RGB)
        return cv2.resize(image, (args.width, args.height), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3.0)


def runtimes(source: Source, tmp: Path, threads: int) -> tuple[dict, dict]:
    """{name: image -> labels} and {name: seconds to build it (export, compile)}."""
    import onnxruntime as ort

    predictor = Predictor(source.network, replace(source.spec, crf=None), "cpu")
    run: dict = {"eager": predictor.labels}
    built: dict = {"eager": 0.0}
    compiled = torch.compile(build_graph(source, argmax=True))

    def compiled_run(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return compiled(torch.from_numpy(image[None]))[0].numpy()

    run["compile"] = compiled_run
    built["compile"] = None  # its first call compiles: measured there

    for name, fmt in (("torchscript", "torchscript"), ("onnxruntime", "onnx")):
        start = time.perf_counter()
        path = export_model(source, fmt, tmp / fmt, argmax=True)
        built[name] = time.perf_counter() - start
        runner = load_runner(path, fmt)
        if fmt == "onnx":  # the same thread count as torch
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            # Its threads would spin on after a call, taking the cores from the next runtime.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            runner.session = ort.InferenceSession(str(path), options, ["CPUExecutionProvider"])
        run[name] = lambda image, r=runner: r(image[None])[0]
    return run, built


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def bench_mode(args: argparse.Namespace, source: Source, image: np.ndarray, tmp: Path) -> None:
    run, built = runtimes(source, tmp, args.threads)
    reference = run["eager"](image)
    for name in RUNTIMES[1:]:
        t0 = time.perf_counter()
        labels = run[name](image)  # compile's compilation happens here
        if name == "compile":
            built["compile"] = time.perf_counter() - t0
        print(f"  {name:12s} labels equal eager's on {100 * agreement(labels, reference):.3f}%")
    for _ in range(args.warmup - 1):
        for name in RUNTIMES:
            run[name](image)
    times: dict[str, list[float]] = {name: [] for name in RUNTIMES}
    for _ in range(args.repeats):
        for name in RUNTIMES:
            t0 = time.perf_counter()
            run[name](image)
            times[name].append(1000 * (time.perf_counter() - t0))
    eager = statistics.median(times["eager"])
    print(f"  {'runtime':12s} {'ms/image':>9s} {'vs eager':>9s} {'build s':>8s}")
    for name in RUNTIMES:
        ms = statistics.median(times[name])
        print(f"  {name:12s} {ms:9.1f} {eager / ms:8.2f}x {built.get(name) or 0:8.1f}")
    if args.checkpoint is not None and args.camvid is not None:
        parity(args, run)


def parity(args: argparse.Namespace, run: dict) -> None:
    """Labels of each export against eager's on every CamVid val image (native 360x480)."""
    import cv2

    shares: dict[str, list[float]] = {"torchscript": [], "onnxruntime": []}
    files = sorted((args.camvid / "val").glob("*.png"))
    for path in files:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        reference = run["eager"](image)
        for name in shares:
            shares[name].append(agreement(run[name](image), reference))
    for name, values in shares.items():
        below = sum(v < 0.999 for v in values)
        print(
            f"  parity {name}: {len(values)} CamVid val images, min {100 * min(values):.3f}%, "
            f"mean {100 * statistics.mean(values):.4f}% of pixels equal; {below} below 99.9%"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        source = model_source(args, Path(tmp))
        image = test_image(args)
        for mode in args.modes.split(","):
            spec = source.spec
            if mode == "single":
                spec = replace(spec, mode="single", options={})
            what = replace(source, spec=spec)
            print(f"{what.name}: {spec.describe()}, {args.height}x{args.width} image, "
                  f"{args.threads} threads, median of {args.repeats}")  # fmt: skip
            bench_mode(args, what, image, Path(tmp) / mode)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
