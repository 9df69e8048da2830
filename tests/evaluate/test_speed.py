"""Inference timing and peak memory: the result's structure and a robust memory difference.

Timings are not compared (other processes share the cores); memory is, with a model whose
forward pass allocates and fills a 96 MiB temporary, far above any noise of a 1x1 convolution.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from segflow.evaluate.speed import measure_inference

BUFFER_MB = 96


class TemporaryBufferModel(nn.Module):
    """A 1x1 convolution whose forward also fills a ``mb``-MiB temporary tensor."""

    def __init__(self, mb: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.numel = mb * 2**20 // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.numel:
            scratch = torch.full((self.numel,), 1.0)  # filled, so its pages are resident
            out = out + scratch[:1].sum() * 0
        return out


def test_result_has_positive_time_and_names_its_memory_measure():
    result = measure_inference(nn.Conv2d(3, 4, 1), (32, 48), "cpu", repeats=3, warmup=1)
    assert result["ms_per_image_median"] > 0
    assert 0 < result["ms_per_image_min"] <= result["ms_per_image_median"]
    assert result["peak_memory_mb"] >= 0
    assert result["memory_measure"] in ("cpu_peak_rss_increase", "cpu_maxrss_growth")
    assert result["image_size"] == [32, 48] and result["device"] == "cpu"


class FixedTimeModel(nn.Module):
    """Takes ``ms`` per call whatever the batch size (a sleep: never shorter, under any load)."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.seconds = ms / 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return self.conv(x)


def test_time_is_per_image_the_call_time_divided_by_the_batch():
    result = measure_inference(FixedTimeModel(40), (8, 8), "cpu", repeats=3, warmup=0, batch_size=4)
    assert result["batch_size"] == 4
    # 40 ms a call, 4 images a call: at least 10 ms an image, and well under the 40 ms a call
    # takes (an undivided call time would be >= 40).
    assert 10 <= result["ms_per_image_median"] < 20
    assert 10 <= result["ms_per_image_min"] <= result["ms_per_image_median"]


def test_peak_memory_grows_by_about_the_size_of_a_temporary_buffer():
    small = measure_inference(TemporaryBufferModel(0), (32, 32), "cpu", repeats=2, warmup=1)
    big = measure_inference(TemporaryBufferModel(BUFFER_MB), (32, 32), "cpu", repeats=2, warmup=1)
    if big["memory_measure"] != "cpu_peak_rss_increase":
        pytest.skip("this OS does not let a process reset its peak RSS")
    assert 0.8 * BUFFER_MB < big["peak_memory_mb"] - small["peak_memory_mb"] < 1.3 * BUFFER_MB


def test_other_inference_modes_are_timed_with_their_options():
    result = measure_inference(
        nn.Conv2d(3, 4, 1), (20, 30), "cpu", repeats=1, warmup=0, mode="sliding", crop=16
    )
    assert result["mode"] == "sliding" and result["ms_per_image_median"] > 0


def test_the_model_keeps_its_training_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    measure_inference(model, (8, 8), "cpu", repeats=1, warmup=0)
    assert model.training


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_counts_weights_and_activations():
    small = measure_inference(nn.Conv2d(3, 4, 1), (64, 64), "cuda", repeats=2, warmup=1)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1))
    model.register_buffer("big", torch.zeros(BUFFER_MB * 2**20 // 4))
    big = measure_inference(model, (64, 64), "cuda", repeats=2, warmup=1)
    assert small["memory_measure"] == "cuda_max_allocated"
    assert 0.9 * BUFFER_MB < big["peak_memory_mb"] - small["peak_memory_mb"] < 1.2 * BUFFER_MB
