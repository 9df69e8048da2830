"""The Ray-free training core: checkpoints, exact resume, options, and errors before training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from segflow.config import parse_params
from segflow.data.shards import read_index
from segflow.errors import SegflowError
from segflow.models.checkpoint import build_model, load_model
from segflow.train.loop import build_loss, fit
from segflow.train.losses import (
    OhemCrossEntropy,
    cross_entropy,
    dice_loss,
    median_frequency_weights,
)
from segflow.train.run import preflight, train
from segflow.train.state import BEST, LAST
from tests.train.conftest import NUM_CLASSES, SIZE, tiny_params

RECORD_KEYS = {"epoch", "train_loss", "val_miou", "val_pixel_accuracy", "lr", "images_per_second"}


class Interrupt(Exception):
    pass


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_fit_checkpoints_last_every_epoch_and_best_by_val_miou(shards, tmp_path):
    state = fit(tiny_params(epochs=2), shards, tmp_path, "cpu", echo=None)

    last = torch.load(tmp_path / LAST, weights_only=True)
    best = torch.load(tmp_path / BEST, weights_only=True)
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
    assert torch.load(tmp_path / "resumed" / LAST, weights_only=True)["epoch"] == 2
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


def test_adamw_is_the_optimizer_a_run_steps_with(shards, tmp_path):
    params = tiny_params(epochs=1, optimizer="adamw", lr=1e-3, weight_decay=0.05)
    state = fit(params, shards, tmp_path, "cpu", echo=None)
    assert type(state.optimizer) is torch.optim.AdamW
    assert all(g["weight_decay"] == 0.05 for g in state.optimizer.param_groups)
    # Adam keeps per-parameter moments: they exist only if AdamW really stepped.
    assert all("exp_avg" in st for st in state.optimizer.state.values())
    torch.manual_seed(params.seed)  # the initial weights, as fit builds them
    initial = build_model(params.train, NUM_CLASSES).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in state.model.state_dict().items())


def test_ohem_with_dice_is_the_hard_pixel_ce_plus_the_weighted_dice(shards):
    params = tiny_params(loss="ohem", ohem_min_kept=500, ohem_thresh=0.6, dice_weight=0.5)
    loss_fn = build_loss(params.train, read_index(shards))
    torch.manual_seed(0)
    logits = torch.randn(2, NUM_CLASSES, 8, 8)
    target = torch.randint(0, NUM_CLASSES, (2, 8, 8))
    want = OhemCrossEntropy(0.6, 500)(logits, target) + 0.5 * dice_loss(logits, target)
    torch.testing.assert_close(loss_fn(logits, target), want)
    # and it is not plain cross-entropy: OHEM drops the easy pixels
    assert not torch.isclose(loss_fn(logits, target), cross_entropy(logits, target))


def test_grad_clip_caps_the_gradient_norm_the_optimizer_steps_with(shards, tmp_path, monkeypatch):
    norms: list[float] = []
    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    for clip in (0.0, 1e-3):
        params = tiny_params(epochs=1, grad_clip=clip, lr=0.1)
        fit(params, shards, tmp_path / f"clip-{clip}", "cpu", echo=None)
    unclipped, clipped = norms[: len(norms) // 2], norms[len(norms) // 2 :]
    assert min(unclipped) > 1e-3  # without the clip the norm is above the cap...
    assert max(clipped) <= 1e-3 * (1 + 1e-4)  # ...with it, every step is at most the cap


def test_median_frequency_weights_reach_the_loss(shards):
    params = tiny_params(class_weights="median_frequency")
    loss_fn = build_loss(params.train, read_index(shards))
    info = read_index(shards)["splits"]["train"]
    want = median_frequency_weights(info["class_pixels"], info.get("class_image_pixels"))
    torch.testing.assert_close(loss_fn.weight, want)


def test_deterministic_switches_torch_to_deterministic_kernels_and_is_bitwise_repeatable(
    shards, tmp_path
):
    params = tiny_params(epochs=1, deterministic=True, channels_last=False)
    try:
        first = fit(params, shards, tmp_path / "a", "cpu", echo=None)
        assert torch.are_deterministic_algorithms_enabled()
        second = fit(params, shards, tmp_path / "b", "cpu", echo=None)
    finally:
        torch.use_deterministic_algorithms(False)
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[name]), name
    # channels_last off: the weights keep the default (contiguous) layout
    conv = next(m for m in first.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()


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
