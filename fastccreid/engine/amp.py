"""Mixed precision: which autocast dtype (if any) and whether a GradScaler is needed, per device.

``auto`` picks bf16 where the device computes it natively (CUDA GPUs from Ampere on; CPUs with AVX-512-BF16 or
AMX), fp16 with a GradScaler on older CUDA GPUs, and fp32 elsewhere. Parameters, BN running statistics and the
optimizer state stay fp32: only autocast-listed ops (convs, matmuls) run in the low precision.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass(frozen=True)
class AmpConfig:
    """The resolved precision: ``dtype`` None means plain fp32; ``scaler`` True means fp16 loss scaling."""

    device_type: str
    dtype: torch.dtype | None
    scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self):
        """The autocast context for forward passes (a no-op context when fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler, enabled only for fp16 (bf16 has fp32's exponent range and needs none)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaler)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX-512-BF16 or AMX tiles)."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def resolve_amp(mode: str, device: torch.device | str) -> AmpConfig:
    """Turn ``--amp`` {auto, bf16, fp16, off} into an AmpConfig for ``device``."""
    if mode not in AMP_MODES:
        raise ValueError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    device_type = torch.device(device).type
    if mode == "off":
        return AmpConfig(device_type, None, False)
    if mode == "bf16":
        return AmpConfig(device_type, torch.bfloat16, False)
    if mode == "fp16":
        return AmpConfig(device_type, torch.float16, True)
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return AmpConfig(device_type, torch.bfloat16, False)
        return AmpConfig(device_type, torch.float16, True)
    if device_type == "cpu" and cpu_supports_bf16():
        return AmpConfig(device_type, torch.bfloat16, False)
    return AmpConfig(device_type, None, False)
