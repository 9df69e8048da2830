"""`dvc repro` with the search stage: off it writes the paper's genotype, on it feeds train."""

from __future__ import annotations

import json

import pytest
import torch

from segflow.models.genotype import PAPER_GENOTYPE
from tests.project import make_project

pytestmark = pytest.mark.integration

TINY_DATA = {"num_train": 8, "num_val": 2, "num_test": 2, "height": 48, "width": 64}
SEARCH = {
    "layers": 3,
    "filter_multiplier": 1,
    "blocks": 2,
    "epochs": 2,
    "warmup_epochs": 1,
    "batch_size": 2,
    "crop_height": 32,
    "crop_width": 32,
    "launcher": "local",
    "cpus_per_worker": 1,
}
TRAIN = {
    "model": "autodeeplab",
    "backbone": None,
    "output_stride": None,
    "model_options": {"filter_multiplier": 2, "aspp_channels": 8},
    "epochs": 1,
    "batch_size": 2,
    "launcher": "local",
    "cpus_per_worker": 1,
}


def test_dvc_repro_searches_then_trains_the_found_network(tmp_path):
    project = make_project(
        tmp_path,
        synthetic=TINY_DATA,
        loader={"crop_height": 48, "crop_width": 64},
        search={**SEARCH, "enabled": False},
        train=TRAIN,
    )
    off = project.dvc("repro", "search")
    assert off.returncode == 0, off.stdout + off.stderr
    genotype_file = project.root / "reports/search/genotype.json"
    assert json.loads(genotype_file.read_text()) == PAPER_GENOTYPE.to_json()
    assert "search: disabled" in off.stdout + off.stderr
    assert not (project.root / "ray_results").exists()

    project.set_params(search={"enabled": True})
    on = project.dvc("repro", "train")
    log = on.stdout + on.stderr
    assert on.returncode == 0, log
    assert log.index("Running stage 'search'") < log.index("Running stage 'train'")
    assert "search: epoch 2/2 weight loss" in log and "arch loss" in log
    found = json.loads(genotype_file.read_text())
    assert found != PAPER_GENOTYPE.to_json()
    assert len(found["path"]) == 3 and len(found["cell"]) == 2
    history = project.root / "reports/search/history"
    assert (history / "search_curve.csv").read_text().count("\n") == 3
    assert (history / "beta_epoch_002.png").is_file()
    checkpoint = torch.load(project.root / "models/best.pt", weights_only=True)
    assert checkpoint["train_params"]["model_options"]["genotype"] == found

    again = project.dvc("repro", "train")
    assert again.returncode == 0 and "Running stage" not in again.stdout
