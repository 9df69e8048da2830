"""A development split held out of train by group: what every choice is made on when it exists.

Unit: with a dev split in the shards, training chooses its best epoch by dev's mIoU (val is
still scored). Integration: `dvc repro` with dataset.holdout_groups moves whole groups of train
to dev at ingest, and the best epoch, the CRF choice and the promotion gate are all decided on
dev; the test split decides nothing.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from segflow.data.groups import group_of
from segflow.data.manifest import build_manifest
from segflow.data.shards import read_index, write_shards
from segflow.evaluate.bootstrap import load_image_counts
from segflow.train.loop import fit
from segflow.train.outputs import best_record, summary
from segflow.train.state import BEST
from tests.project import make_project
from tests.train.conftest import BandsAdapter, tiny_params


def test_with_a_dev_split_the_best_epoch_is_chosen_on_dev_and_val_is_still_scored(tmp_path):
    adapter = BandsAdapter(tmp_path / "raw", {"train": 4, "dev": 2, "val": 2})
    shards = tmp_path / "shards"
    write_shards(build_manifest(adapter), adapter, shards, rows_per_shard=8, workers=1)
    state = fit(tiny_params(epochs=4, lr=0.1), shards, tmp_path / "run", "cpu", echo=None)

    history = state.history
    assert all(r["selection_miou"] == r["dev_miou"] for r in history)
    assert all("val_miou" in r for r in history)
    best = best_record(history)
    assert best["dev_miou"] == max(r["dev_miou"] for r in history)
    saved = torch.load(tmp_path / "run" / BEST, weights_only=True)
    assert saved["epoch"] == best["epoch"]  # best.pt is dev's best epoch
    assert summary(history)["selected_on"] == "dev"
    assert summary(history)["best_dev_miou"] == best["dev_miou"]


SYNTHETIC = {"num_train": 8, "num_val": 3, "num_test": 3, "height": 48, "width": 64}


@pytest.mark.integration
def test_dvc_repro_holds_out_groups_of_train_and_decides_everything_on_them(tmp_path):
    project = make_project(
        tmp_path,
        synthetic=SYNTHETIC,
        # train_0000 ... train_0007: the last digit is the "sequence"; val/test match nothing
        dataset={"group_pattern": r"^train_000(\d)", "holdout_groups": ["6", "7"]},
        loader={"crop_height": 48, "crop_width": 64},
        train={"epochs": 2, "launcher": "local", "batch_size": 2, "cpus_per_worker": 1},
        crf={"w_bilateral": 3.0, "sigma_alpha": 30.0, "sigma_beta": 3.0, "max_images": 2},
        evaluate={"num_samples_report": 1, "speed_repeats": 2},
        gate={"min_images": 2, "bootstrap_samples": 200},
    )
    project.env["MLFLOW_TRACKING_URI"] = f"sqlite:///{project.root / 'mlruns' / 'mlflow.db'}"
    result = project.dvc("repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    root = project.root

    manifest = pd.read_parquet(root / "data" / "manifest.parquet")
    by_split = manifest.groupby("split")["id"].apply(sorted).to_dict()
    assert by_split["dev"] == ["train_0006", "train_0007"]
    groups = {s: {group_of(i, r"^train_000(\d)") for i in ids} for s, ids in by_split.items()}
    assert not groups["dev"] & groups["train"] and not groups["dev"] & groups["val"]
    assert read_index(root / "data" / "shards")["splits"]["dev"]["num_samples"] == 2

    trained = json.loads((root / "reports" / "train_metrics.json").read_text())
    assert trained["selected_on"] == "dev"
    assert json.loads((root / "reports" / "crf_params.json").read_text())["decided_on"][
        "split"] == "dev"  # fmt: skip
    counts = load_image_counts(root / "reports" / "eval_image_counts.npz", "")
    assert counts.split == "dev" and counts.ids == ["train_0006", "train_0007"]
    registry = json.loads((root / "reports" / "registry.json").read_text())
    assert registry["decision"]["split"] == "dev" and registry["decision"]["num_images"] == 2
    assert "Decided on the split `dev`" in (root / "reports" / "gate.md").read_text()
