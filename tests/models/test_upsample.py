"""Up/down-sampling modules: what each unpooling puts where, bilinear init, freezing, names."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segflow.models.upsample import (
    BedOfNails,
    Bilinear,
    MaxPoolDown,
    MaxUnpool,
    NearestUnpool,
    StridedConvDown,
    TransposedConv,
    make_downsample,
    make_upsample,
    pad_to_multiple,
)


def _smooth(n: int, c: int, h: int, w: int) -> torch.Tensor:
    ys = torch.linspace(0, 3, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 3, w).view(1, 1, 1, w)
    phase = torch.arange(n * c, dtype=torch.float32).view(n, c, 1, 1)
    return torch.sin(ys + phase) * torch.cos(0.7 * xs - phase)  # a different image per channel


@pytest.mark.parametrize("scale", [2, 4, 8, 32])
def test_bilinear_initialised_transposed_conv_matches_interpolate_away_from_borders(scale):
    x = _smooth(2, 3, 9, 11)
    up = TransposedConv(3, scale=scale)
    with torch.no_grad():
        got = up(x)
    want = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
    assert got.shape == want.shape == (2, 3, 9 * scale, 11 * scale)
    # The transposed conv sees zeros outside the map where interpolate clamps: skip the rim.
    inner = (..., slice(scale, -scale), slice(scale, -scale))
    torch.testing.assert_close(got[inner], want[inner], atol=1e-5, rtol=0)
    assert (got - want).abs().max() > 0.01  # and the rim does differ: the test can tell


def test_fixed_transposed_conv_stays_bilinear_while_training():
    fixed, free = TransposedConv(3, fixed=True), TransposedConv(3, fixed=False)
    assert not any(p.requires_grad for p in fixed.parameters())
    before_fixed, before_free = fixed.conv.weight.clone(), free.conv.weight.clone()
    x = _smooth(1, 3, 6, 6).requires_grad_(True)
    params = [p for p in [*fixed.parameters(), *free.parameters()] if p.requires_grad]
    opt = torch.optim.SGD([x, *params], lr=0.1)
    (fixed(x).square().sum() + free(x).square().sum()).backward()
    opt.step()
    assert torch.equal(fixed.conv.weight, before_fixed)
    assert not torch.equal(free.conv.weight, before_free)


def test_transposed_conv_with_other_channel_counts_learns_from_scratch():
    up = TransposedConv(8, 4, scale=2, kernel_size=2, bilinear_init=False)
    assert up(torch.randn(1, 8, 5, 7)).shape == (1, 4, 10, 14)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        TransposedConv(8, 4, bilinear_init=True)


def test_max_unpool_puts_each_value_back_at_its_pooled_argmax():
    x = torch.randperm(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)  # distinct values
    pooled, indices = MaxPoolDown(return_indices=True)(x)
    out = MaxUnpool()(pooled, indices)
    assert out.shape == x.shape
    blocks_in = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 3, 4, 4)
    blocks_out = out.unfold(2, 2, 2).unfold(3, 2, 2).reshape(2, 3, 3, 4, 4)
    # Exactly one non-zero per 2x2 block: the block's max, where the max was.
    assert torch.equal((blocks_out != 0).sum(-1), torch.ones(2, 3, 3, 4, dtype=torch.long))
    assert torch.equal(blocks_out.argmax(-1), blocks_in.argmax(-1))
    assert torch.equal(blocks_out.amax(-1), blocks_in.amax(-1))


def test_max_unpool_restores_an_odd_size_the_pool_floored():
    x = torch.randn(1, 2, 5, 7)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    out = MaxUnpool()(pooled, indices, output_size=(5, 7))
    assert out.shape == (1, 2, 5, 7)
    assert torch.all(out[..., 4, :] == 0) and torch.all(out[..., :, 6] == 0)
    with pytest.raises(ValueError, match="indices"):
        MaxUnpool()(pooled)


def test_bed_of_nails_puts_each_value_top_left_and_zeros_elsewhere():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    out = BedOfNails(2)(x)
    want = torch.tensor([[1.0, 0, 2.0, 0], [0, 0, 0, 0], [3.0, 0, 4.0, 0], [0, 0, 0, 0]]).view(
        1, 1, 4, 4
    )
    assert torch.equal(out, want)
    assert torch.equal(BedOfNails(3)(x)[..., ::3, ::3], x)
    assert BedOfNails(3)(x).count_nonzero() == 4
    assert BedOfNails(2)(x, output_size=(5, 5))[..., 4, :].count_nonzero() == 0


def test_nearest_unpool_copies_each_value_into_a_block():
    x = torch.randn(2, 3, 4, 5)
    out = NearestUnpool(3)(x)
    assert out.shape == (2, 3, 12, 15)
    for dy in range(3):
        for dx in range(3):
            assert torch.equal(out[..., dy::3, dx::3], x)
    odd = NearestUnpool(2)(x, output_size=(9, 11))
    assert odd.shape == (2, 3, 9, 11)
    assert torch.equal(odd[..., 8, :10], odd[..., 7, :10])  # extra row repeats the edge


def test_bilinear_module_is_interpolate_without_aligned_corners():
    x = torch.randn(1, 2, 5, 6)
    want = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.equal(Bilinear(2)(x), want)
    assert Bilinear(2)(x, output_size=(11, 13)).shape == (1, 2, 11, 13)


def test_make_upsample_builds_each_kind_by_name():
    x = torch.randn(1, 4, 3, 5)
    pooled, idx = F.max_pool2d(torch.randn(1, 4, 6, 10), 2, return_indices=True)
    kinds = {
        "nearest": NearestUnpool,
        "bed_of_nails": BedOfNails,
        "bilinear": Bilinear,
        "transposed": TransposedConv,
        "max_unpool": MaxUnpool,
    }
    for kind, cls in kinds.items():
        up = make_upsample(kind, 4, 4)
        assert isinstance(up, cls)
        assert up(pooled if kind == "max_unpool" else x, idx).shape == (1, 4, 6, 10)
    assert (
        make_upsample("transposed", 4, 2, kernel_size=2, bilinear_init=False).conv.out_channels == 2
    )
    with pytest.raises(ValueError, match="cannot change channels"):
        make_upsample("nearest", 4, 2)
    with pytest.raises(ValueError, match="unknown"):
        make_upsample("pixel_shuffle", 4, 4)


def test_downsampling_halves_the_map():
    x = torch.randn(1, 4, 8, 10)
    assert make_downsample("max_pool")(x).shape == (1, 4, 4, 5)
    strided = make_downsample("strided_conv", 4, 6)
    assert isinstance(strided, StridedConvDown) and strided(x).shape == (1, 6, 4, 5)
    pooled, indices = MaxPoolDown(return_indices=True)(x)
    assert pooled.shape == indices.shape == (1, 4, 4, 5)
    with pytest.raises(ValueError, match="unknown"):
        make_downsample("avg", 4)


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    x = torch.ones(1, 1, 33, 47)
    out = pad_to_multiple(x, 16)
    assert out.shape == (1, 1, 48, 48)
    assert torch.equal(out[..., :33, :47], x) and out.sum() == x.sum()
    assert pad_to_multiple(out, 16) is out
