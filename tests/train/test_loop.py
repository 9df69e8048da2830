"""The Ray-free training core: checkpoints, exact resume, options, and errors before training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from segflow.config import parse_params
from segflow.errors import SegflowError
from segflow.train.distributed import preflight, train
from segflow.train.loop import BEST, LAST, build_model, fit, load_model
from tests.train.conftest import NUM_CLASSES, SIZE, tiny_params

RECORD_KEYS = {"epoch", "train_loss", "val_miou", "val_pixel_accuracy", "lr", "images_per_second"}


class Interrupt(Exception):
    pass


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=False)["model"]


def test_fit_checkpoints_last_every_epoch_and_best_by_val_miou(shards, tmp_path):
    state = fit(tiny_params(epochs=2), shards, tmp_path, "cpu", echo=None)

    last = torch.load(tmp_path / LAST, weights_only=False)
    best = torch.load(tmp_path / BEST, weights_only=False)
    assert last["epoch"] == 2 and [r["epoch"] for r in last["history"]] == [1, 2]
    assert set(last["history"][0]) >= RECORD_KEYS
    best_epoch = max(last["history"], key=lambda r: (r["val_miou"], -r["epoch"]))["epoch"]
    assert best["epoch"] == best_epoch
    assert best["best_miou"] == pytest.approx(state.best_miou)
    model = load_model(tmp_path / BEST)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, *SIZE)).shape == (1, NUM_CLASSES, *SIZE)


def test_interrupted_fit_resumes_to_the_same_weights_as_an_uninterrupted_run(shards, tmp_path):
    params = tiny_params(epochs=3)
    fit(params, shards, tmp_path / "straight", "cpu", echo=None)

    def crash_in_epoch_3(line: str) -> None:
        if line.startswith("train: epoch 3/3 step"):
            raise Interrupt  # after epoch 2 was checkpointed, in the middle of epoch 3

    with pytest.raises(Interrupt):
        fit(params, shards, tmp_path / "resumed", "cpu", echo=crash_in_epoch_3)
    assert torch.load(tmp_path / "resumed" / LAST, weights_only=False)["epoch"] == 2
    # What a kill -9 in the middle of writing best.pt leaves: the resumed run removes it.
    half_written = tmp_path / "resumed" / ".best.pt.k1ll3d.tmp"
    half_written.write_bytes(b"\0" * 10)
    lines: list[str] = []
    state = fit(params, shards, tmp_path / "resumed", "cpu", echo=lines.append)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [BEST, LAST]

    assert lines[0].startswith("train: resuming after epoch 2")
    assert not any(line.startswith("train: epoch 1/3") for line in lines)
    assert [r["epoch"] for r in state.history] == [1, 2, 3]
    straight, resumed = weights(tmp_path / "straight" / LAST), weights(tmp_path / "resumed" / LAST)
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)


def test_fit_of_a_finished_run_trains_nothing_more(shards, tmp_path):
    fit(tiny_params(epochs=1), shards, tmp_path, "cpu", echo=None)
    before = (tmp_path / LAST).read_bytes()
    lines: list[str] = []
    fit(tiny_params(epochs=1), shards, tmp_path, "cpu", echo=lines.append)
    assert (tmp_path / LAST).read_bytes() == before
    assert not any("step" in line for line in lines)


@pytest.mark.parametrize(
    "options",
    [
        {"optimizer": "adamw", "lr": 1e-3},
        {"loss": "ohem", "ohem_min_kept": 500, "dice_weight": 0.5},
        {"class_weights": "median_frequency", "grad_clip": 0.1, "warmup_iters": 2},
        {"deterministic": True, "channels_last": False},
    ],
    ids=["adamw", "ohem_dice", "weights_clip_warmup", "deterministic"],
)
def test_training_options_train_with_a_finite_loss(shards, tmp_path, options):
    params = tiny_params(epochs=1, **options)
    state = fit(params, shards, tmp_path, "cpu", echo=None)
    (record,) = state.history
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    torch.manual_seed(params.seed)  # the initial weights, as fit builds them
    initial = build_model(params.train, NUM_CLASSES).state_dict()
    trained = state.model.state_dict()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)


def test_warm_up_starts_low_and_poly_decays_to_zero(shards, tmp_path):
    state = fit(tiny_params(epochs=2, warmup_iters=2, lr=0.1), shards, tmp_path, "cpu", echo=None)
    lrs = [r["lr"] for r in state.history]  # LR after each epoch's 2 steps
    assert lrs[0] == pytest.approx(0.1)  # warm-up: 0.05 then 0.1
    assert lrs[1] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"model": "no_such_net"}, "model 'no_such_net' is unknown"),
        ({"batch_size": 8}, "train.batch_size"),
        ({"num_workers": 4, "batch_size": 2}, "train.batch_size"),
        ({"model_options": {"width": 4, "colour": "red"}}, "colour"),
    ],
)
def test_bad_train_params_are_one_clear_error_before_training(shards, train, message):
    with pytest.raises(SegflowError, match=message):
        preflight(tiny_params(**train), shards)


def test_missing_shards_name_the_index(tmp_path):
    with pytest.raises(SegflowError, match="index.json: not found; run the shard stage"):
        preflight(tiny_params(), tmp_path / "no_shards")


def test_zero_batch_size_is_rejected_by_the_params_schema():
    with pytest.raises(SegflowError, match="train.batch_size"):
        parse_params({"train": {"batch_size": 0}})


def test_a_shard_file_gone_missing_is_named(shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    for f in (copy / "train").glob("*.arrow"):
        f.unlink()
    with pytest.raises(SegflowError, match="missing"):
        fit(tiny_params(epochs=1), copy, tmp_path / "out", "cpu", echo=None)


def test_the_local_launcher_trains_in_process_and_resumes_a_named_run(shards, tmp_path):
    params = tiny_params(tmp_path, epochs=1, launcher="local", run_name="plain")
    out = train(params, shards, tmp_path / "models")
    assert [r["epoch"] for r in out.history] == [1]
    assert out.run_path == str(tmp_path / "ray_results" / "plain")
    assert load_model(out.best_checkpoint) is not None

    longer = tiny_params(tmp_path, epochs=2, launcher="local", run_name="plain")
    lines: list[str] = []
    again = train(longer, shards, tmp_path / "models", echo=lines.append)
    assert [r["epoch"] for r in again.history] == [1, 2]
    assert (out.resumed_from, again.resumed_from) == (0, 1)
    assert any(line.startswith("train: resuming after epoch 1") for line in lines)
