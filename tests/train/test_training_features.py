"""Each training switch of params.yaml changes training the way its definition says.

Losses against hand-computed values, class weights against their formulas' properties, the EMA
against its update rule, the head LR multiplier in the optimizer, mixed precision's choice of
dtype, the auxiliary head in the loss and gone from the exported model, and a run with the EMA
on saving and scoring the average.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segflow.data.loader import make_dataloader
from segflow.data.shards import read_index
from segflow.models import build
from segflow.models.aux import without_aux
from segflow.models.checkpoint import load_model
from segflow.train import precision
from segflow.train.ema import ModelEMA
from segflow.train.loop import build_loss, build_optimizer, fit, validate
from segflow.train.losses import (
    SegmentationLoss,
    focal_loss,
    frequency_weights,
    lovasz_softmax,
    median_frequency_weights,
)
from segflow.train.precision import autocast_dtype, cpu_has_bf16, describe_precision, grad_scaler
from segflow.train.schedules import poly_lr
from segflow.train.state import LAST
from tests.train.conftest import NUM_CLASSES, tiny_params

SMALL_RESNET = {"backbone": "resnet18", "backbone_options": {"width": 16}}


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """(1, C, 1, N) logits whose softmax is exactly ``probs`` (one row per class)."""
    return torch.tensor(probs).log().unsqueeze(0).unsqueeze(2)


# --------------------------------------------------------------------------- losses


def test_lovasz_softmax_equals_the_hand_computed_value_on_two_pixels():
    # Pixel 1 is class 0 (p0 = 0.8), pixel 2 class 1 (p1 = 0.7).
    # Class 0: errors (0.2, 0.3), sorted (0.3 bg, 0.2 fg), Lovasz gradient (0.5, 0.5): 0.25.
    # Class 1: errors (0.2, 0.3), sorted (0.3 fg, 0.2 bg), Lovasz gradient (1, 0): 0.3.
    loss = lovasz_softmax(logits_of([[0.8, 0.3], [0.2, 0.7]]), torch.tensor([[[0, 1]]]))
    assert loss.item() == pytest.approx((0.25 + 0.3) / 2, abs=1e-6)


def test_lovasz_softmax_of_a_hard_prediction_is_one_minus_the_mean_iou():
    target = torch.tensor([[[0, 0, 1, 1, 1, 2, 255]]])
    pred = torch.tensor([0, 1, 1, 1, 2, 2, 0])
    logits = (F.one_hot(pred, 3).T.float() * 60.0).unsqueeze(0).unsqueeze(2)
    # IoU: class 0 1/2, class 1 2/4, class 2 1/2 (the ignored pixel counts nowhere).
    assert lovasz_softmax(logits, target).item() == pytest.approx(0.5, abs=1e-5)


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_scales_easy_pixels_down():
    logits = logits_of([[0.8, 0.3], [0.2, 0.7]])
    target = torch.tensor([[[0, 1]]])
    ce = F.cross_entropy(logits, target)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ce.item())
    expected = (0.2**2 * -math.log(0.8) + 0.3**2 * -math.log(0.7)) / 2
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_focal_and_lovasz_are_the_loss_params_yaml_names(shards):
    index = read_index(shards)
    logits = logits_of([[0.8, 0.3], [0.2, 0.7]])
    target = torch.tensor([[[0, 1]]])
    focal = build_loss(tiny_params(loss="focal", focal_gamma=2.0).train, index)
    lovasz = build_loss(tiny_params(loss="lovasz").train, index)
    assert focal(logits, target).item() == pytest.approx(focal_loss(logits, target).item())
    assert lovasz(logits, target).item() == pytest.approx(0.275, abs=1e-6)


# --------------------------------------------------------------------------- class weights


PIXELS = [900_000, 90_000, 10_000, 0]  # road, car, pole, a class absent from train


def test_inverse_log_weights_follow_enet_and_keep_the_large_class_near_the_others():
    w = frequency_weights(PIXELS, "inverse_log")
    freq = torch.tensor([0.9, 0.09, 0.01], dtype=torch.float64)
    raw = 1 / torch.log(1.02 + freq)
    torch.testing.assert_close(w[:3].double(), raw / raw.mean(), rtol=1e-6, atol=0)
    assert w[3] == 0 and w[:3].mean().item() == pytest.approx(1.0)
    # Median frequency weighs the pole 90x the road; inverse log 22x (1/ln 1.03 : 1/ln 1.92).
    median = median_frequency_weights(PIXELS)
    assert (median[2] / median[0]).item() == pytest.approx(90.0)
    assert (w[2] / w[0]).item() == pytest.approx(math.log(1.92) / math.log(1.03), rel=1e-5)


def test_sqrt_weights_are_inverse_square_root_frequency_and_clipping_caps_them():
    w = frequency_weights(PIXELS, "sqrt")
    assert (w[2] / w[0]).item() == pytest.approx(math.sqrt(90), rel=1e-5)
    clipped = frequency_weights(PIXELS, "sqrt", max_weight=1.5)
    assert clipped.max().item() == pytest.approx(1.5)
    torch.testing.assert_close(clipped[:2], w[:2])  # under the cap: unchanged


def test_class_weight_max_clips_median_frequency_weights_too(shards):
    index = read_index(shards)
    p = tiny_params(class_weights="median_frequency", class_weight_max=1.0).train
    assert build_loss(p, index).weight.max().item() <= 1.0


# --------------------------------------------------------------------------- EMA


def test_ema_moves_each_weight_by_one_minus_decay_and_copies_buffers():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    avg = ema.state_dict()
    torch.testing.assert_close(avg["0.weight"], start["0.weight"] + 0.1)
    torch.testing.assert_close(avg["1.bias"], start["1.bias"] + 0.1)
    torch.testing.assert_close(avg["1.running_mean"], torch.full((2,), 5.0))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_trails_the_raw_weights_during_training():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    ema = ModelEMA(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    start = model.weight.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
        ema.update(model)
    raw, avg = model.weight.detach(), ema.module.weight
    assert not torch.equal(raw, avg)
    # Behind: closer to where training started than the raw weights are.
    assert (avg - start).norm() < (raw - start).norm()


def test_ema_warmup_ramps_the_decay_from_near_zero_to_its_setting():
    ema = ModelEMA(nn.Linear(2, 1), decay=0.995, warmup=True)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(90) == pytest.approx(91 / 100)
    assert ema.decay_at(10_000) == 0.995  # the setting caps it
    steps = range(0, 3000, 7)
    assert all(ema.decay_at(a) <= ema.decay_at(b) for a, b in itertools.pairwise(steps))
    assert ModelEMA(nn.Linear(2, 1), decay=0.995).decay_at(0) == 0.995  # off: the plain EMA


def test_ema_warmup_forgets_the_initial_weights_within_tens_of_steps():
    """The weights jump to a fixed point; after 100 steps the plain average (decay 0.995)
    still holds 0.995**100 = 61% of the random start, the warmed-up one the product of
    (1 + t) / (10 + t) over the steps: 9! / (101 * ... * 109), next to nothing."""
    start = {}
    for warmup in (False, True):
        model = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            model.weight.zero_()
        ema = ModelEMA(model, decay=0.995, warmup=warmup)
        with torch.no_grad():
            model.weight.fill_(1.0)  # trained weights: 1; the average starts at 0
        for step in range(100):
            ema.update(model, step=step)
        start[warmup] = 1.0 - float(ema.module.weight.mean())
    assert start[False] == pytest.approx(0.995**100, rel=1e-4)
    assert start[True] < 1e-6


def test_the_ema_is_told_the_runs_global_step_across_epochs(shards, tmp_path, monkeypatch):
    """The warm-up reads the step count of the whole run (0, 1, 2, ... over epochs), not of
    the epoch; a resumed run's comes from its restored schedule (the resume test below)."""
    seen: list[int] = []
    update = ModelEMA.update

    def recording(self, model, step=0):
        seen.append(step)
        update(self, model, step)

    monkeypatch.setattr(ModelEMA, "update", recording)
    fit(tiny_params(epochs=2, ema_decay=0.99, ema_warmup=True), shards, tmp_path, "cpu", echo=None)
    assert len(seen) > 2 and seen == list(range(len(seen)))


def test_a_run_with_ema_saves_and_scores_the_average(shards, tmp_path):
    params = tiny_params(epochs=2, ema_decay=0.9)
    state = fit(params, shards, tmp_path, "cpu", echo=None)
    payload = torch.load(tmp_path / LAST, weights_only=True)
    assert set(payload["model"]) == set(payload["raw_model"])
    assert any(
        not torch.equal(payload["model"][k], payload["raw_model"][k]) for k in payload["model"]
    )
    model = load_model(tmp_path / LAST)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, payload["model"][name], msg=name)
    val = make_dataloader(shards, "val", params.loader, False, 2, uint8=True)
    norm = (params.loader.mean, params.loader.std)
    scored = validate(model, val, NUM_CLASSES, torch.device("cpu"), False, norm=norm)
    assert scored["miou"] == pytest.approx(state.history[-1]["val_miou"])


# --------------------------------------------------------------------------- head LR


def test_head_lr_multiplier_gives_the_heads_their_own_lr_through_the_schedule():
    p = tiny_params(lr=0.01, head_lr_mult=10.0).train
    model = build("pspnet", NUM_CLASSES, **SMALL_RESNET, head_channels=16)
    optimizer = build_optimizer(model, p)
    body, head = optimizer.param_groups
    backbone_ids = {id(q) for q in model.backbone.parameters()}
    assert {id(q) for q in body["params"]} == backbone_ids
    assert not backbone_ids & {id(q) for q in head["params"]}
    assert (body["lr"], head["lr"]) == (0.01, pytest.approx(0.1))
    scheduler = poly_lr(optimizer, 10)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert head["lr"] / body["lr"] == pytest.approx(10.0)


# --------------------------------------------------------------------------- precision


def test_mixed_precision_on_cpu_follows_the_setting_and_the_cpu_flags():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, False) is None
    assert autocast_dtype(cpu, True) == torch.bfloat16
    assert autocast_dtype(cpu, "auto") == (torch.bfloat16 if cpu_has_bf16() else None)
    # bf16 keeps fp32's exponent range: no loss scaling on CPU.
    assert not grad_scaler(cpu, True).is_enabled()


@pytest.mark.parametrize("native", [True, False])  # as on a CPU with and without AVX512-BF16
def test_the_log_line_says_the_precision_in_use_and_what_decided_it(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    auto = describe_precision("cpu", "auto")
    if native:
        assert auto.startswith("precision bf16 autocast on cpu (train.bf16: auto: this CPU")
    else:  # the silent fallback a user reading `bf16: auto` would not expect
        assert auto.startswith("precision fp32 on cpu (train.bf16: auto: this CPU has no AVX512")
    assert describe_precision("cpu", False) == "precision fp32 on cpu (train.bf16: false)"
    assert describe_precision("cpu", True).startswith("precision bf16 autocast on cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_bf16_is_used_where_supported_and_fp16_gets_a_grad_scaler():
    gpu = torch.device("cuda")
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype(gpu, "auto") == expected
    assert grad_scaler(gpu, "auto").is_enabled() == (expected == torch.float16)


def test_bf16_training_steps_run_in_bfloat16_on_cpu(shards, tmp_path):
    # The effect of the switch: convolutions inside the model run in bf16 under autocast.
    seen: list[torch.dtype] = []
    params = tiny_params(epochs=1, bf16=True)
    from segflow.train import loop

    model = loop.build_model(params.train, NUM_CLASSES)
    hook = model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with loop.autocast_for(torch.device("cpu"), True):
        model(torch.zeros(1, 3, 32, 48))
    hook.remove()
    assert seen == [torch.bfloat16]


# --------------------------------------------------------------------------- aux heads


AUX_MODELS = {
    "pspnet": {**SMALL_RESNET, "head_channels": 16},
    "fcn_resnet": {**SMALL_RESNET, "head_channels": 16},
    "bisenetv2": {"width": 16, "head_channels": 16},
    "upernet": {**SMALL_RESNET, "channels": 16},
}


@pytest.mark.parametrize(
    ("name", "weight"),
    [("pspnet", 0.4), ("fcn_resnet", 0.5), ("bisenetv2", 1.0), ("upernet", 0.4)],
)
def test_aux_head_adds_its_weighted_loss_in_training_and_is_dropped_for_export(name, weight):
    torch.manual_seed(0)
    model = build(name, NUM_CLASSES, **AUX_MODELS[name], aux_weight=weight)
    x = torch.randn(2, 3, 33, 47)
    y = torch.randint(0, NUM_CLASSES, (2, 33, 47))
    model.train()
    out, aux = model(x)
    assert out.shape == aux.shape == (2, NUM_CLASSES, 33, 47)
    loss = SegmentationLoss(aux_weight=model.aux_weight)
    expected = F.cross_entropy(out, y) + weight * F.cross_entropy(aux, y)
    assert loss((out, aux), y).item() == pytest.approx(expected.item(), rel=1e-6)

    model.eval()
    with torch.no_grad():
        scored = model(x)
    exported = without_aux(model)
    assert not any(k.startswith("aux_head.") for k in exported.state_dict())
    plain = build(name, NUM_CLASSES, **AUX_MODELS[name])
    plain.load_state_dict(exported.state_dict())  # strict: exactly the plain model's weights
    with torch.no_grad():
        torch.testing.assert_close(exported(x), scored)
        torch.testing.assert_close(plain.eval()(x), scored)


# --------------------------------------------------------------------------- whole runs


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("warmup", [False, True])
def test_an_interrupted_run_with_ema_resumes_to_the_same_average_and_raw_weights(
    shards, tmp_path, warmup
):
    """With the warm-up the resumed run reads its step count from the restored schedule."""
    params = tiny_params(epochs=3, ema_decay=0.8, ema_warmup=warmup)
    fit(params, shards, tmp_path / "straight", "cpu", echo=None)

    def crash_in_epoch_3(line: str) -> None:
        if line.startswith("train: epoch 3/3 step"):
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(params, shards, tmp_path / "resumed", "cpu", echo=crash_in_epoch_3)
    fit(params, shards, tmp_path / "resumed", "cpu", echo=None)
    straight = torch.load(tmp_path / "straight" / LAST, weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / LAST, weights_only=True)
    for key in ("model", "raw_model"):
        for name, value in straight[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=1e-6, msg=name)


def test_focal_sqrt_clip_bf16_and_rare_crops_together_reach_the_loss_and_the_step(shards, tmp_path):
    params = tiny_params(
        epochs=1, loss="focal", class_weights="sqrt", class_weight_max=2.0, bf16=True
    )
    params = params.model_copy(
        update={"loader": params.loader.model_copy(update={"rare_class_crop": 0.5})}
    )
    loss_fn = build_loss(params.train, read_index(shards))
    assert loss_fn.kind == "focal" and float(loss_fn.weight.max()) <= 2.0
    info = read_index(shards)["splits"]["train"]
    torch.testing.assert_close(loss_fn.weight, frequency_weights(info["class_pixels"], "sqrt", 2.0))
    assert autocast_dtype(torch.device("cpu"), params.train.bf16) == torch.bfloat16
    state = fit(params, shards, tmp_path, "cpu", echo=None)
    assert math.isfinite(state.history[0]["train_loss"])


def test_lovasz_with_inverse_log_weights_and_a_head_lr_trains_the_heads_ten_times_faster(
    shards, tmp_path
):
    params = tiny_params(
        epochs=1, model="deeplabv3plus", backbone="resnet18", output_stride=16,
        model_options={"aspp_channels": 8}, loss="lovasz", class_weights="inverse_log",
        head_lr_mult=10.0, lr=0.01,
    )  # fmt: skip
    assert build_loss(params.train, read_index(shards)).kind == "lovasz"
    state = fit(params, shards, tmp_path, "cpu", echo=None)
    body, head = state.optimizer.param_groups
    # poly decay scales both groups alike: the ratio holds at every step
    assert head["lr"] == pytest.approx(10 * body["lr"])
    assert head["initial_lr"] == pytest.approx(0.1) and body["initial_lr"] == pytest.approx(0.01)
    assert math.isfinite(state.history[0]["train_loss"])


@pytest.mark.integration  # inductor compiles the model's kernels: tens of seconds on 2 cores
def test_compile_trains_the_same_weights_through_the_compiled_forward(shards, tmp_path):
    eager = fit(tiny_params(epochs=1), shards, tmp_path / "eager", "cpu", echo=None)
    compiled = fit(
        tiny_params(epochs=1, compile=True), shards, tmp_path / "compiled", "cpu", echo=None
    )
    assert compiled.model._compiled_call_impl is not None  # the switch reached the model
    want = eager.model.state_dict()
    for name, value in compiled.model.state_dict().items():  # same names: checkpoints match
        torch.testing.assert_close(value, want[name], rtol=1e-4, atol=1e-5, msg=name)
