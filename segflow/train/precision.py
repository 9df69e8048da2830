"""The precision policy of training and validation: fp32, bf16 or fp16 autocast, per device.

``train.bf16`` is ``auto``, true or false. bf16 autocast pays only where the hardware computes
bf16 natively: GPUs from Ampere on, and CPUs with AVX512-BF16 or AMX. Elsewhere a CPU emulates
the format and runs slower than fp32 (measured ~9x on an AVX2-only machine), so ``auto`` picks
fp32 there; GPUs without bf16 get fp16, whose small gradients need a loss scaler.
"""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from /proc/cpuinfo.

    ``torch.backends.cpu.get_cpu_capability()`` says only "AVX512", not which extensions.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, setting: str | bool) -> torch.dtype | None:
    """The autocast dtype for ``train.bf16`` on ``device``; None: fp32."""
    if setting is False:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and (setting is True or cpu_has_bf16()):
        return torch.bfloat16
    return None


def autocast_for(device: torch.device, setting: str | bool) -> torch.autocast:
    """The autocast context for ``setting`` on ``device`` (disabled for fp32)."""
    dtype = autocast_dtype(device, setting)
    return torch.autocast(
        device_type=device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None
    )


def grad_scaler(device: torch.device, setting: str | bool) -> torch.amp.GradScaler:
    """fp16's loss scaler (small gradients underflow in fp16); a no-op for bf16 and fp32."""
    enabled = autocast_dtype(device, setting) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=enabled)


def describe_precision(device: torch.device | str, setting: str | bool) -> str:
    """One line for the log: the precision training runs in on ``device``, and why.

    ``bf16: auto`` falls back to fp32 without a word otherwise, and a user who reads "bf16" in
    the params expects bf16 speed; the line says which it is and what decided it.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():  # a driver without a GPU
        return (
            f"precision decided on each GPU worker (train.bf16: {str(setting).lower()}): bf16 "
            "autocast where the GPU computes it, else fp16 with a loss scaler"
            if setting is not False
            else "precision fp32 on the GPU workers (train.bf16: false)"
        )
    dtype = autocast_dtype(device, setting)
    name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[dtype]
    if setting is False:
        why = "train.bf16: false"
    elif device.type == "cuda":
        why = f"train.bf16: {str(setting).lower()}: " + (
            "this GPU computes bf16"
            if dtype == torch.bfloat16
            else "this GPU has no bf16; fp16 with a loss scaler"
        )
    elif device.type != "cpu":
        why = f"train.bf16: {str(setting).lower()}: no autocast on {device.type}"
    elif setting is True:
        why = "train.bf16: true forces it on the CPU"
    elif dtype is not None:
        why = "train.bf16: auto: this CPU computes bf16 natively (AVX512-BF16 or AMX)"
    else:
        why = (
            "train.bf16: auto: this CPU has no AVX512-BF16 or AMX, where bf16 runs slower than "
            "fp32; train.bf16: true forces it"
        )
    return f"precision {name} on {device.type} ({why})"
