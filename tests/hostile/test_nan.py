"""A diverging run: the loss turns nan. It must stop with one line, keep the last good model and
never write a bare NaN into a report.

In-process with the plain loop (:func:`segflow.train.loop.fit`), the loss made nan by
tests/faults.py; then the train stage itself (Ray launcher) with an LR that diverges.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from segflow.errors import SegflowError
from segflow.models.checkpoint import read_checkpoint
from segflow.train import loop
from segflow.train.loop import fit
from segflow.train.outputs import write_curve, write_metrics
from segflow.train.state import BEST, LAST
from tests.faults import nan_loss_from
from tests.train.conftest import SIZE, make_shards, tiny_params
from tests.train.test_stage import SMALL, small_project

#: 8 training images in batches of 2: 4 steps per epoch, so step 5 is epoch 2's first.
STEPS_PER_EPOCH = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("nan_shards"), train=8, val=2)


def test_a_loss_that_stays_nan_stops_the_run_and_keeps_the_last_good_checkpoints(
    shards, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    good: dict[str, bytes] = {}

    def keep_epoch_one() -> None:  # the checkpoints as epoch 1 left them
        good.update({name: (run_dir / name).read_bytes() for name in (LAST, BEST)})

    first_nan = STEPS_PER_EPOCH + 1
    monkeypatch.setattr(
        loop, "build_loss", nan_loss_from(loop.build_loss, first_nan, None, keep_epoch_one)
    )
    params = tiny_params(tmp_path, epochs=4, nan_patience=3)

    with pytest.raises(SegflowError) as raised:
        fit(params, shards, run_dir, echo=None)

    message = str(raised.value)
    assert "\n" not in message
    assert "epoch 2 step 3" in message  # the third nan in a row: epoch 2's steps 1, 2, 3
    assert "train.lr" in message and "train.grad_clip" in message
    assert {name: (run_dir / name).read_bytes() for name in (LAST, BEST)} == good
    assert read_checkpoint(run_dir / LAST)["epoch"] == 1


def test_fewer_nan_steps_than_the_patience_are_skipped_and_leave_the_weights_finite(
    shards, tmp_path, monkeypatch
):
    # Two nan steps in the middle of epoch 1 (patience 3): without skipping them, their nan
    # gradients would be in every weight from then on.
    monkeypatch.setattr(loop, "build_loss", nan_loss_from(loop.build_loss, 2, 2))
    state = fit(
        tiny_params(tmp_path, epochs=2, nan_patience=3), shards, tmp_path / "run", echo=None
    )

    assert [r["skipped_steps"] for r in state.history] == [2, 0]
    assert all(math.isfinite(r["train_loss"]) for r in state.history)
    weights = read_checkpoint(tmp_path / "run" / BEST)["model"]
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_a_nan_val_miou_is_never_the_best_epoch_and_no_report_holds_nan(
    shards, tmp_path, monkeypatch
):
    real_validate = loop.validate
    calls = 0

    def validate(*args, **kwargs):  # epoch 1 scores nan (as with no labelled val pixel)
        nonlocal calls
        calls += 1
        scores = real_validate(*args, **kwargs)
        return {**scores, "miou": math.nan} if calls == 1 else scores

    monkeypatch.setattr(loop, "validate", validate)
    # The loss is nan in every step of epoch 1 (4 < patience 5): its mean has no finite step.
    monkeypatch.setattr(loop, "build_loss", nan_loss_from(loop.build_loss, 1, STEPS_PER_EPOCH))
    run_dir = tmp_path / "run"
    bests = []
    real_fit_epochs = loop.train_epochs

    def train_epochs(params, shard_dir, device, on_epoch, **kwargs):
        def hook(state, record, is_best):
            bests.append(is_best)
            on_epoch(state, record, is_best)

        return real_fit_epochs(params, shard_dir, device, hook, **kwargs)

    monkeypatch.setattr(loop, "train_epochs", train_epochs)
    state = fit(tiny_params(tmp_path, epochs=2, nan_patience=5), shards, run_dir, echo=None)

    assert bests == [False, True]
    assert read_checkpoint(run_dir / BEST)["epoch"] == 2
    write_metrics(state.history, tmp_path / "train_metrics.json")
    write_curve(state.history, tmp_path / "train_curve.csv")
    text = (tmp_path / "train_metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in train_metrics.json"))
    assert "nan" not in (tmp_path / "train_curve.csv").read_text().lower()


@pytest.mark.integration
def test_the_train_stage_stops_a_diverging_run_with_one_line_and_keeps_the_earlier_model(
    tmp_path,
):
    project = small_project(tmp_path)
    make_shards(tmp_path / "bands", train=16, val=4)
    shutil.copytree(tmp_path / "bands" / "shards", project.root / "data" / "shards")
    train = {**SMALL["train"], "launcher": "local", "epochs": 1, "batch_size": 2}
    project.set_params(loader={"crop_height": SIZE[0], "crop_width": SIZE[1]}, train=train)
    good = project.stage("train")
    assert good.returncode == 0, good.stdout + good.stderr
    outputs = ("models/best.pt", "models/run.json", "reports/train_metrics.json")
    before = {rel: project.digest(rel) for rel in outputs}

    # The largest LR the params bounds allow (10) on a U-Net without BatchNorm: it does not
    # survive it (the tiny U-Net of the unit tests diverges in its first epoch); default launcher.
    no_bn = {"model": "unet", "backbone": None, "output_stride": None,
             "model_options": {"width": 4, "batch_norm": False}}  # fmt: skip
    project.set_params(train={**train, **no_bn, "launcher": "ray", "epochs": 3, "lr": 10.0})
    out = project.stage("train")

    log = out.stdout + out.stderr
    assert out.returncode == 1, log
    assert "Traceback" not in log, log
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, log
    assert "training diverged" in errors[0] and "epoch 1 step" in errors[0], errors
    assert "train.lr (now 10)" in errors[0] and "train.grad_clip" in errors[0]
    assert {rel: project.digest(rel) for rel in outputs} == before
    metrics = (project.root / "reports" / "train_metrics.json").read_text()
    assert "NaN" not in metrics
