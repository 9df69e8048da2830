"""Inference time and peak memory of a model, for the evaluation report.

Time: the median of ``repeats`` timed calls after ``warmup`` untimed ones (the first calls pay
for cuDNN/oneDNN kernel selection and allocator growth); the median ignores the odd call that
another process slowed down. On CUDA the device is synchronised around each call, since kernels
run asynchronously and a bare wall clock would time only their launch.

Peak memory, two different quantities by device (``memory_measure`` names which one):

- CUDA, ``cuda_max_allocated``: ``torch.cuda.max_memory_allocated`` over the warm-up and timed
  calls, after resetting the peak: the most tensor memory alive at once, weights, input and
  activations included. That is what has to fit on the GPU; it excludes the caching
  allocator's reserve and the CUDA context, which depend on the process history.
- CPU, ``cpu_peak_rss_increase``: the process's peak resident set size during the calls minus
  its resident size just before them, i.e. what inference adds on top of the loaded model and
  input (activations, workspaces, allocator growth). Linux keeps the peak in ``VmHWM`` and
  lets a process reset it (``/proc/self/clear_refs``, value 5), which makes the peak exact
  without a sampling thread (a sampler misses short spikes and costs CPU). The reset also
  resets ``getrusage``'s ``ru_maxrss``, so a caller's later lifetime-peak reading starts there.
  Elsewhere (macOS, a read-only /proc) it falls back to the growth of ``ru_maxrss``
  (``cpu_maxrss_growth``), a lower bound: it only grows if inference beats the earlier peak.
  Python's tracemalloc is not an option: tensor memory is allocated by C++, invisible to it.
"""

from __future__ import annotations

import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from segflow.evaluate.inference import eval_mode, predict

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def measure_inference(
    model: nn.Module,
    image_size: tuple[int, int],
    device: torch.device | str = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    batch_size: int = 1,
    mode: str = "single",
    **options,
) -> dict:
    """Time ``predict(model, image, mode, **options)`` on a random ``image_size`` batch.

    The model is moved to ``device`` and run in eval mode (restored after). Returns
    ``ms_per_image_median`` (median call time / batch size), ``ms_per_image_min``,
    ``peak_memory_mb`` (MiB, see the module doc), ``memory_measure``, and the settings.
    """
    device = torch.device(device)
    height, width = image_size
    model = model.to(device)
    image = torch.randn(batch_size, 3, height, width, device=device)
    cuda = device.type == "cuda"

    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss_before, measure = _start_cpu_peak()

    times: list[float] = []
    with eval_mode(model):
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            predict(model, image, mode, **options)
            if cuda:
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)

    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        measure = "cuda_max_allocated"
    else:
        peak_mb = max(0.0, _cpu_peak_kib(measure) - rss_before) / 1024
    return {
        "ms_per_image_median": 1000 * statistics.median(times) / batch_size,
        "ms_per_image_min": 1000 * min(times) / batch_size,
        "peak_memory_mb": peak_mb,
        "memory_measure": measure,
        "device": str(device),
        "image_size": [height, width],
        "batch_size": batch_size,
        "mode": mode,
        "repeats": repeats,
        "warmup": warmup,
    }


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field} not in {_STATUS}")
    return int(match.group(1))


def _start_cpu_peak() -> tuple[float, str]:
    """Reset the peak-RSS counter where the OS allows; return (current KiB, method)."""
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS (Linux >= 4.0, own process)
        return float(_status_kib("VmRSS")), "cpu_peak_rss_increase"
    except OSError:
        return _maxrss_kib(), "cpu_maxrss_growth"


def _cpu_peak_kib(measure: str) -> float:
    if measure == "cpu_peak_rss_increase":
        return float(_status_kib("VmHWM"))
    return _maxrss_kib()


def _maxrss_kib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform == "darwin" else float(rss)  # bytes on macOS
