"""One trained CamVid network four ways, in one run (not a test): no CRF, the dense CRF
(pydensecrf) tuned on val, CRF as RNN trained on the network, and the network fine-tuned alone.

The network is a checkpoint the train stage wrote (``--checkpoint``, e.g. ``models/best.pt`` of
a ``dvc repro`` of the camvid-cpu preset) and ``--shards`` the shards it was trained on. Then:

  * ``none``        the network as served by the preset (``evaluate`` section: flip + 3 scales),
                    and at one scale;
  * ``dense_crf``   the same probabilities with pydensecrf: the preset's ``crf`` grid (8 points,
                    DeepLab's) swept with Ray Tune on *every* val image, the best applied to
                    each split. On val it is tuned on the split it is scored on, so flattered;
  * ``crf_rnn``     a :class:`segflow.models.crf_rnn.CRFasRNN` head (``--window``,
                    ``--downsample``, ``--iterations``, ``--theta-*``) whose network starts from
                    the checkpoint, trained with the core loop (``segflow.train.loop.fit``, the
                    preset's loss, crops and class weights, bf16 autocast) for ``--epochs``
                    epochs: ``frozen`` trains only the CRF on the fixed network (the paper's
                    second stage), ``joint`` then trains both end to end at ``--joint-lr``,
                    from the frozen run's network and CRF (from the Potts start instead, the
                    CRF's first, large messages wrecked the network: val mIoU 0.53 -> 0.29 in
                    one epoch). Each best epoch is chosen by val mIoU at the shard scale, as
                    the train stage does;
  * ``finetune``    the control: the network alone trained as ``joint`` is (``--joint-lr``,
                    ``--epochs``, from the checkpoint), to tell the CRF's gain from that of the
                    extra epochs.

Each is scored on every split of ``--split`` (``val``, or ``val,dev``: dev is the
sequence-held-out split, for a network trained without it, which then also chooses the CRF-as-RNN
runs' best epochs, as the train stage does) at the masks' native 360x480 (mIoU, PA, the thin
classes' IoU: Pole, SignSymbol, Fence) and timed per 360x480 image on this CPU (median of
``--repeats``, the served path: resize, network, CRF, argmax; one timing per way, whatever the
split). The dense CRF is tuned on val only and applied as tuned to every split: flattered on val,
a fair choice on dev. Prints a markdown table and one JSON line per row.

    nice -n 5 python benchmarks/crf_rnn_camvid.py --checkpoint models/best.pt \\
        --shards data/shards --work /tmp/crf_rnn_bench
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from segflow.config import Params, parse_params
from segflow.data.loader import ShardReader, split_files
from segflow.data.shards import read_index
from segflow.evaluate.crf_split import crf_over_split
from segflow.evaluate.metrics import metrics_from_confusion
from segflow.evaluate.predict_split import predict_split
from segflow.evaluate.serving import Predictor, ServingSpec
from segflow.models.checkpoint import model_from_payload, read_checkpoint
from segflow.postprocess.crf_params import CRFParams
from segflow.presets import preset_text, with_dataset_root
from segflow.train.loop import fit
from segflow.train.state import BEST
from segflow.tune.crf_search import crf_sweep

THIN = ("Pole", "SignSymbol", "Fence")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="the trained network")
    ap.add_argument("--shards", type=Path, required=True, help="the shards it was trained on")
    ap.add_argument("--work", type=Path, required=True, help="probabilities and runs go here")
    ap.add_argument("--preset", default="camvid-cpu")
    ap.add_argument("--epochs", type=int, default=3, help="CRF-as-RNN training epochs")
    ap.add_argument("--frozen-lr", type=float, default=0.01)
    ap.add_argument("--joint-lr", type=float, default=0.005)
    ap.add_argument(
        "--variants", default="frozen,joint,finetune", help="CRF-as-RNN trainings to run"
    )
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--window", type=int, default=11)
    ap.add_argument("--downsample", type=int, default=4)
    ap.add_argument("--theta-alpha", type=float, default=20.0, help="input pixels")
    ap.add_argument("--theta-beta", type=float, default=0.2, help="normalised intensity")
    ap.add_argument("--theta-gamma", type=float, default=3.0, help="input pixels")
    ap.add_argument("--repeats", type=int, default=5, help="timed images per row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-images", type=int, default=None, help="images (default: all)")
    ap.add_argument(
        "--split", default="val", help="the splits scored, comma-separated (val,dev); the dense "
        "CRF is tuned on val",
    )  # fmt: skip
    return ap.parse_args(argv)


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def preset_params(name: str) -> Params:
    # dataset.root is not read: the shards are given
    text = with_dataset_root(preset_text(name), Path("/nonexistent"))
    return parse_params(yaml.safe_load(text), source=f"preset {name}")


def score(confusion: np.ndarray, classes: list[str]) -> dict:
    m = metrics_from_confusion(confusion)
    iou = dict(zip(classes, m["iou"], strict=True))
    return {
        "miou": round(float(m["miou"]), 4),
        "pixel_accuracy": round(float(m["pixel_accuracy"]), 4),
        **{f"iou_{c}": round(float(iou[c]), 4) for c in THIN},
    }


def time_rows(rows: list[dict], predictors: list[Predictor], image, repeats: int) -> None:
    """Median ms per image of each row's served path, timed round-robin (one image per row in
    turn, ``repeats`` rounds after a warm-up round) so that every row meets the same load."""
    served: list[list[float]] = [[] for _ in rows]
    network: list[list[float]] = [[] for _ in rows]
    for round_ in range(repeats + 1):
        for i, predictor in enumerate(predictors):
            predictor.labels(image)
            if round_:
                served[i].append(predictor.last_timing["ms"])
                network[i].append(predictor.last_timing["ms_network"])
    for row, s, n in zip(rows, served, network, strict=True):
        row["ms"], row["ms_network"] = round(float(np.median(s)), 1), round(float(np.median(n)), 1)


def cached(args, key: str, compute) -> dict:
    """The row ``key`` from an earlier run of this script on the same ``--work`` (a stopped run
    restarts where it was: no second CRF sweep or prediction pass), else ``compute()``, kept."""
    path = args.work / "rows" / f"{key}.json"
    if path.is_file():
        row = json.loads(path.read_text())
        print(f"(kept from an earlier run) {json.dumps(row)}", flush=True)
        return row
    row = compute()
    print(json.dumps(row), flush=True)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(row))
    return row


def keyed(name: str, spec: ServingSpec, split: str) -> str:
    """A row's name in ``--work``: val's rows keep the names of runs that scored val alone."""
    return f"{name}_{spec.mode}" + ("" if split == "val" else f"_{split}")


def evaluate(
    name: str, network: torch.nn.Module, spec: ServingSpec, args, classes, split: str
) -> dict:
    """Score ``split`` with ``network`` served by ``spec`` (its probabilities: "probs")."""
    return cached(
        args, keyed(name, spec, split),
        lambda: predict_split_row(name, network, spec, args, classes, split),
    )  # fmt: skip


def predict_split_row(
    name: str, network: torch.nn.Module, spec: ServingSpec, args, classes, split: str
) -> dict:
    t0 = time.time()
    probs = args.work / f"probs_{keyed(name, spec, split)}"
    pred = predict_split(
        Predictor(network, spec), args.shards, split, probs, len(classes), args.max_images
    )
    row = {
        "row": name, "split": split, "mode": spec.mode, **score(pred.confusion, classes),
        "wall_s": round(time.time() - t0, 1), "load": load(), "probs": str(probs),
    }  # fmt: skip
    return row


def train_crf_rnn(params: Params, args, variant: str, init: dict) -> tuple[torch.nn.Module, dict]:
    """A CRF-as-RNN head on the checkpoint's network, trained ``args.epochs`` epochs."""
    crf = {
        "iterations": args.iterations, "window": args.window, "downsample": args.downsample,
        "theta_alpha": args.theta_alpha, "theta_beta": args.theta_beta,
        "theta_gamma": args.theta_gamma, "freeze_net": variant == "frozen",
    }  # fmt: skip
    if variant == "finetune":  # the control: the same extra training without the CRF
        crf = None
    lr = args.frozen_lr if variant == "frozen" else args.joint_lr
    # Fine-tuning: no warm-up, no EMA (a few hundred steps), no budget; the preset's loss,
    # class weights, crops and bf16 as they are.
    train = {
        **params.train.model_dump(mode="json"), "crf_rnn": crf, "epochs": args.epochs,
        "lr": lr, "warmup_iters": 0, "ema_decay": 0.0, "time_budget_min": None,
    }  # fmt: skip
    params = parse_params({**params.model_dump(mode="json"), "train": train}, source="crf_rnn")
    out = args.work / f"crf_rnn_{variant}"
    started = time.time()

    def echo(line: str) -> None:
        if "step" not in line or "step 40/" in line:
            print(f"[{variant} {time.time() - started:6.0f}s] {line}", flush=True)

    state = fit(params, args.shards, out, "cpu", echo=echo, init_weights=init)
    payload = read_checkpoint(out / BEST)
    info = {
        "epochs": len(state.history),
        "val_miou_shard_scale": [round(r["val_miou"], 4) for r in state.history],
        # the curve the best epoch was chosen by: dev's when the shards have it, else val's
        "selection_miou": [round(r["selection_miou"], 4) for r in state.history],
        "train_wall_s": round(time.time() - started, 1),
        "lr": lr,
        "crf": {k: [round(x, 3) for x in v.flatten().tolist()][:4] for k, v in
                payload["model"].items() if k.startswith("crf.") and k != "crf.compatibility"},
    }  # fmt: skip
    compat = payload["model"].get("crf.compatibility")
    if compat is not None:
        n = compat.shape[0]
        info["compatibility_diag_mean"] = round(float(compat.diagonal().mean()), 3)
        info["compatibility_off_mean"] = round(
            float((compat.sum() - compat.trace()) / (n * n - n)), 3
        )
    print(json.dumps({"trained": variant, **info}), flush=True)
    return model_from_payload(payload, out / BEST), info


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    params = preset_params(args.preset)
    index = read_index(args.shards)
    classes = [c["name"] for c in index["classes"]]
    payload = read_checkpoint(args.checkpoint)
    network = model_from_payload(payload, args.checkpoint)
    splits = [s for s in args.split.split(",") if s]
    for split in ("val", *splits):
        if split not in index["splits"]:
            raise SystemExit(
                f"{args.shards}: no {split!r} split (it has {sorted(index['splits'])})"
            )
    image, _ = ShardReader(split_files(args.shards, splits[0])).decoded(0, native=True)
    counts = ", ".join(f"{s} {index['splits'][s]['num_samples']}" for s in splits)
    print(
        f"checkpoint {args.checkpoint} (epoch {payload.get('epoch')}), {counts} images scored "
        f"at {image.shape[:2]}, network at {index.get('resize')}; torch threads {args.threads}; "
        f"load {load()}",
        flush=True,
    )
    served = ServingSpec.from_params(params, index.get("resize"), None)
    single = replace(served, mode="single", options={})
    specs = [single, served] if served.mode != "single" else [single]
    # Each way: its predictor (timed once) and its rows (one per split).
    ways: list[tuple[Predictor, list[dict]]] = []
    for spec in specs:
        ways.append(
            (Predictor(network, spec),
             [evaluate("none", network, spec, args, classes, split) for split in splits])
        )  # fmt: skip
        if spec.mode != served.mode:
            continue

        def dense_crf(spec: ServingSpec = spec) -> dict:
            """The dense CRF tuned on every val image: the preset's grid, Ray Tune."""
            t0 = time.time()
            probs = Path(evaluate("none", network, spec, args, classes, "val")["probs"])
            knobs = {f.name for f in fields(CRFParams)}
            grid = {k: v for k, v in params.crf.model_dump().items() if k in knobs}
            sweep = crf_sweep(probs, len(classes), args.work / "tune", space=grid,
                              num_cpus=args.threads)  # fmt: skip
            return {"crf": sweep.best.to_dict(), "tune_wall_s": round(time.time() - t0, 1)}

        tuned = cached(args, f"dense_crf_{spec.mode}", dense_crf)
        best = CRFParams.from_dict(tuned["crf"])

        def apply_crf(split: str, spec: ServingSpec = spec, best: CRFParams = best) -> dict:
            t0 = time.time()
            probs = Path(evaluate("none", network, spec, args, classes, split)["probs"])
            crf = crf_over_split(probs, best, len(classes), num_cpus=args.threads)
            return {
                "row": "dense_crf", "split": split, "mode": spec.mode,
                **score(crf.confusion, classes), "wall_s": round(time.time() - t0, 1),
                "load": load(), "crf": best.to_dict(), "tuned_on": "val",
            }  # fmt: skip

        crf_rows = [
            cached(args, f"dense_crf_{spec.mode}_on_{split}", lambda s=split: apply_crf(s))
            for split in splits
        ]
        ways.append((Predictor(network, replace(spec, crf=best)), crf_rows))
    init = payload["model"]
    for variant in [v for v in args.variants.split(",") if v]:
        start = payload["model"] if variant == "finetune" else init
        model, info = train_crf_rnn(params, args, variant, start)
        name = "finetune_no_crf" if variant == "finetune" else f"crf_rnn_{variant}"
        for spec in specs:
            rows = [
                {**evaluate(name, model, spec, args, classes, split), "trained": info}
                for split in splits
            ]
            ways.append((Predictor(model, spec), rows))
        if variant == "frozen":  # end to end starts from the CRF trained on the fixed network
            init = model.state_dict()
    print(f"timing {len(ways)} ways round-robin, {args.repeats} rounds; load {load()}", flush=True)
    timed = [dict() for _ in ways]
    time_rows(timed, [predictor for predictor, _ in ways], image, args.repeats)
    rows = [
        {**row, "ms": t["ms"], "ms_network": t["ms_network"]}
        for split in splits
        for (_, way_rows), t in zip(ways, timed, strict=True)
        for row in way_rows
        if row.get("split", "val") == split
    ]
    for row in rows:
        print(json.dumps(row))

    print(f"\nall of it {time.time() - t_all:.0f} s; load now {load()}")
    print("| split | row | inference | mIoU | PA | " + " | ".join(THIN) + " | ms per image |")
    print("|---|---|---|---:|---:|" + "---:|" * len(THIN) + "---:|")
    for r in rows:
        thin = " | ".join(f"{100 * r[f'iou_{c}']:.1f}" for c in THIN)
        print(
            f"| {r['split']} | {r['row']} | {r['mode']} | {100 * r['miou']:.2f} "
            f"| {100 * r['pixel_accuracy']:.1f} | {thin} | {r['ms']:.0f} |"
        )


if __name__ == "__main__":
    main()
