"""Score a checkpoint the pre-issue-10 way, against the (resized) shard masks, without a CRF.

For comparing with the evaluate stage's native-resolution figures on the same model:

    python benchmarks/shard_scale_score.py models/best.pt data/shards val
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from segflow.data.loader import ShardReader, split_files
from segflow.data.shards import read_index
from segflow.evaluate.metrics import ConfusionMatrix, metrics_from_confusion
from segflow.evaluate.serving import ServingSpec, load_predictor


def main(checkpoint: str, shard_dir: str, split: str) -> dict:
    started = time.time()
    predictor = load_predictor(checkpoint, ServingSpec(), "cpu")
    reader = ShardReader(split_files(shard_dir, split))
    cm = ConfusionMatrix(int(read_index(shard_dir)["num_classes"]))
    for i in range(len(reader)):
        image, label = reader.decoded(i)  # as stored, at the shard scale
        probs = predictor.probs(image)
        cm.update(torch.from_numpy(label.astype(np.int64)), torch.from_numpy(probs.argmax(0)))
    m = metrics_from_confusion(cm.mat.numpy())
    keys = ("pixel_accuracy", "mean_accuracy", "miou", "fwiou", "mdice")
    out: dict = {k: round(100 * m[k], 2) for k in keys}
    out["iou"] = [round(100 * x, 1) for x in m["iou"]]
    out["scored_pixels"] = int(cm.mat.sum())
    out["seconds"] = round(time.time() - started, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
