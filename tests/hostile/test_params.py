"""params.yaml values that are numbers but not usable ones: refused at parse time, in one line
naming the field, before any stage does work with them."""

from __future__ import annotations

from pathlib import Path

import pytest

from segflow.config import Params, load_params, parse_params
from segflow.errors import SegflowError
from tests.project import make_project

#: (params.yaml text, the field the one-line message names, the rule it states)
HOSTILE = [
    ("train:\n  lr: .inf\n", "train.lr", "finite number"),
    ("train:\n  lr: .nan\n", "train.lr", "finite number"),
    ("loader:\n  std: [0, 1, 1]\n", "loader.std.0", "greater than 0"),
    ("loader:\n  std: [.inf, 1, 1]\n", "loader.std.0", "finite number"),
    ("loader:\n  mean: [0.5, 128, 0.5]\n", "loader.mean.1", "less than or equal to 1"),
    (
        "shard:\n  resize_height: 1000000\n  resize_width: 512\n",
        "shard.resize_height",
        "less than or equal to 8192",
    ),
    ("loader:\n  crop_width: 100000\n", "loader.crop_width", "less than or equal to 8192"),
    ("train:\n  epochs: 1000000\n", "train.epochs", "less than or equal to 10000"),
    ("train:\n  batch_size: 100000\n", "train.batch_size", "less than or equal to 1024"),
    ("train:\n  lr: 100\n", "train.lr", "less than or equal to 10"),
    ("tune:\n  lr: [0.01, .inf]\n", "tune.lr.1", "finite number"),
    ("evaluate:\n  scales: [1.0, .nan]\n", "evaluate.scales.1", "finite number"),
    ("mlflow:\n  http_retries: 11\n", "mlflow.http_retries", "less than or equal to 10"),
    (
        "train:\n  model_options:\n    num_classes: 3\n",
        "train.model_options.num_classes",
        "segflow passes num_classes to the model itself",
    ),
    (
        "train:\n  model_options:\n    pretrained: /weights.pth\n",
        "train.model_options.pretrained",
        "from train.pretrained",
    ),
    (
        "train:\n  model_options:\n    scales: [1.0, .inf]\n",
        "train.model_options.scales",
        "numbers must be finite",
    ),
]


@pytest.mark.parametrize(("text", "field", "rule"), HOSTILE, ids=[h[1] for h in HOSTILE])
def test_a_hostile_value_is_one_line_naming_the_field(tmp_path, text, field, rule):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(SegflowError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: {field}: "), message
    assert rule in message, message


def test_a_reserved_option_in_a_tuned_architecture_is_refused_too():
    models = [{"model": "unet", "model_options": {"num_classes": 2}}]
    with pytest.raises(
        SegflowError, match=r"tune\.models\.0\.model_options: .*num_classes: segflow"
    ):
        parse_params({"tune": {"models": models}})


def test_the_largest_published_settings_stay_within_the_bounds():
    """Bounds catch typos, not real use: Cityscapes-sized crops, DeepLab's head LR, 1000 epochs."""
    largest = {
        "loader": {"crop_height": 1024, "crop_width": 2048, "scale_max": 2.0},
        "shard": {"resize_height": 4096, "resize_width": 8192},
        "train": {"epochs": 1000, "batch_size": 64, "lr": 0.1, "head_lr_mult": 10.0},
        "evaluate": {"scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]},
    }
    Params.model_validate(largest)


@pytest.mark.integration
def test_the_train_stage_refuses_an_infinite_lr_and_keeps_the_earlier_model(tmp_path: Path):
    project = make_project(tmp_path, synthetic={"num_train": 2, "num_val": 1, "num_test": 1})
    best = project.root / "models" / "best.pt"
    best.parent.mkdir()
    best.write_bytes(b"an earlier run's model\n" * 64)
    before = best.read_bytes()
    params = project.root / "params.yaml"
    params.write_text(params.read_text().replace("  lr: 0.05\n", "  lr: .inf\n"))
    message = "error: params.yaml: train.lr: Input should be a finite number (got inf)"

    stage = project.stage("train")

    assert stage.returncode == 1, stage.stderr
    assert stage.stderr.strip() == message
    # Through DVC as a user runs it: every stage validates the whole file, so the first stage
    # to run stops the pipeline, with the same line, before any training.
    repro = project.dvc("repro", "train")
    assert repro.returncode != 0
    assert message in repro.stderr + repro.stdout
    assert "Traceback" not in repro.stderr + repro.stdout
    assert best.read_bytes() == before
