"""CRF as RNN (segflow.models.crf_rnn): the dense CRF's mean field, exact within its window,
differentiable in its kernel weights and compatibility, and trained with the network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.config import TrainParams
from segflow.errors import SegflowError
from segflow.models.checkpoint import build_model, load_initial_weights
from segflow.models.crf_rnn import CRFasRNN, MeanFieldCRF
from segflow.train.loop import build_optimizer


def dense_mean_field(
    unary: torch.Tensor, image: torch.Tensor, crf: MeanFieldCRF, reach: int | None = None
) -> torch.Tensor:
    """The reference: every pixel pair (or those at most ``reach`` apart in x and in y), in
    float64, one image (C, H, W) at a time."""
    c, h, w = unary.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    position = torch.stack([ys, xs], -1).reshape(-1, 2).double()
    colour = image.reshape(3, -1).T.double()
    d2 = torch.cdist(position, position) ** 2
    c2 = torch.cdist(colour, colour) ** 2
    bilateral = torch.exp(-d2 / (2 * crf.theta_alpha**2) - c2 / (2 * crf.theta_beta**2))
    spatial = torch.exp(-d2 / (2 * crf.theta_gamma**2))
    bilateral.fill_diagonal_(0.0)
    spatial.fill_diagonal_(0.0)
    if reach is not None:
        far = (position[:, None, :] - position[None, :, :]).abs().amax(-1) > reach
        bilateral[far] = 0.0
        spatial[far] = 0.0
    u = unary.reshape(c, -1).double()
    w_b = crf.w_bilateral.detach().double()[:, None]
    w_s = crf.w_spatial.detach().double()[:, None]
    mu = crf.compatibility.detach().double()
    out = u
    for _ in range(crf.iterations):
        q = torch.softmax(out, 0)
        weighted = w_b * (q @ bilateral.T) + w_s * (q @ spatial.T)
        out = u - mu @ weighted
    return out.reshape(c, h, w)


def test_the_windowed_mean_field_equals_the_dense_one_when_the_window_covers_the_image():
    torch.manual_seed(0)
    h, w, classes = 5, 6, 4
    # A window of 2 * 6 - 1 reaches every pixel from every other one.
    crf = MeanFieldCRF(classes, iterations=3, window=11, theta_alpha=2.0, theta_beta=0.7,
                       theta_gamma=1.5)  # fmt: skip
    with torch.no_grad():  # not the Potts start: any weights and compatibility
        crf.w_bilateral.uniform_(0.2, 2.0)
        crf.w_spatial.uniform_(0.2, 2.0)
        crf.compatibility.uniform_(-0.5, 1.5)
    unary = torch.randn(2, classes, h, w) * 2
    image = torch.randn(2, 3, h, w)

    out = crf(unary, image)

    for i in range(2):
        reference = dense_mean_field(unary[i], image[i], crf)
        assert torch.allclose(out[i].double(), reference, atol=1e-5, rtol=0)


def test_a_smaller_window_is_the_dense_field_without_the_pairs_beyond_it():
    torch.manual_seed(1)
    crf = MeanFieldCRF(3, iterations=2, window=3, theta_alpha=3.0, theta_gamma=3.0)
    unary, image = torch.randn(1, 3, 6, 7) * 2, torch.randn(1, 3, 6, 7)

    out = crf(unary, image)[0].double()

    assert torch.allclose(out, dense_mean_field(unary[0], image[0], crf, reach=1), atol=1e-5)
    assert not torch.allclose(out, dense_mean_field(unary[0], image[0], crf), atol=1e-3)


def test_gradients_reach_the_kernel_weights_and_the_compatibility():
    torch.manual_seed(2)
    crf = MeanFieldCRF(3, iterations=2, window=5, downsample=2)
    unary = torch.randn(2, 3, 9, 11, requires_grad=True)
    image = torch.randn(2, 3, 9, 11)
    labels = torch.randint(0, 3, (2, 9, 11))

    F.cross_entropy(crf(unary, image), labels).backward()

    for name, param in crf.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert unary.grad is not None and unary.grad.abs().sum() > 0


def test_odd_sizes_and_downsampling_keep_the_logits_shape():
    crf = MeanFieldCRF(5, iterations=2, window=7, downsample=4)
    out = crf(torch.randn(1, 5, 37, 53), torch.randn(1, 3, 37, 53))
    assert out.shape == (1, 5, 37, 53) and torch.isfinite(out).all()


def small_params(**crf) -> TrainParams:
    return TrainParams(
        model="unet", backbone=None, output_stride=None,
        model_options={"width": 4, "upsample": "bilinear"},
        crf_rnn={"iterations": 3, "window": 5, **crf}, lr=0.05,
    )  # fmt: skip


def test_train_crf_rnn_wraps_the_model_and_the_crf_trains_with_it():
    torch.manual_seed(3)
    model = build_model(small_params(), 2)
    assert isinstance(model, CRFasRNN)
    before = {n: p.detach().clone() for n, p in model.crf.named_parameters()}
    optimizer = build_optimizer(model, small_params())
    # Two flat regions whose labels follow the colour, with noisy unaries to clean up.
    image = torch.zeros(4, 3, 16, 16)
    image[:, :, :, 8:] = 1.0
    labels = (image[:, 0] > 0.5).long()
    image = image + 0.05 * torch.randn_like(image)
    losses = []
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(image), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < 0.5 * losses[0]
    for name, param in model.crf.named_parameters():
        assert not torch.equal(param.detach(), before[name]), f"{name} did not move"


def test_freeze_net_trains_only_the_crf_and_keeps_the_batchnorm_statistics():
    torch.manual_seed(4)
    model = build_model(small_params(freeze_net=True), 2)
    net_before = {k: v.clone() for k, v in model.net.state_dict().items()}
    optimizer = build_optimizer(model, small_params(freeze_net=True))
    model.train()
    assert not model.net.training  # BatchNorm statistics stay those of the trained network
    image, labels = torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 16, 16))
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(image), labels).backward()
        optimizer.step()

    assert all(torch.equal(v, net_before[k]) for k, v in model.net.state_dict().items())
    assert all(p.requires_grad for p in model.crf.parameters())


@pytest.mark.parametrize("window", [4, 1])
def test_an_even_or_too_small_window_is_refused_at_parse_time(window):
    with pytest.raises(ValueError, match="window"):
        small_params(window=window)


def test_a_trained_network_starts_the_crf_head_and_a_misfit_one_is_named():
    """The paper's second stage: the CRF is trained on a network trained without it."""
    plain = small_params().model_copy(update={"crf_rnn": None})
    torch.manual_seed(5)
    trained = build_model(plain, 2).state_dict()
    model = build_model(small_params(freeze_net=True), 2)
    crf_before = {k: v.clone() for k, v in model.crf.state_dict().items()}

    load_initial_weights(model, trained, "run1/best.pt")

    assert all(torch.equal(v, trained[k]) for k, v in model.net.state_dict().items())
    assert all(torch.equal(v, crf_before[k]) for k, v in model.crf.state_dict().items())
    wrong = build_model(plain.model_copy(update={"model_options": {"width": 8}}), 2).state_dict()
    with pytest.raises(SegflowError, match=r"^run1/best.pt: weights do not fit .* is \("):
        load_initial_weights(model, wrong, "run1/best.pt")
