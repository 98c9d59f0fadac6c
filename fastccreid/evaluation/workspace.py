"""Scratch buffers reused across the gallery tiles and query chunks of one evaluation."""

from __future__ import annotations

import math

import torch


class Workspace:
    """Named scratch buffers, grown when too small and reused otherwise (``fastccreid.kernels.seed_distance.Scratch``).

    A fresh multi-MB temporary per tile is a new memory mapping whose first touch page-faults again, which costs
    about as much as the arithmetic on it (README, Performance). Transparent huge pages were tried for these
    buffers and were slower (the kernel compacts memory on the fault)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised [shape] view of buffer ``name``, grown when too small."""
        n = math.prod(shape)
        b = self.bufs.get(name)
        if b is None or b.numel() < n or b.dtype != dtype:
            b = self.bufs[name] = torch.empty(n, dtype=dtype, device=self.device)
        return b[:n].view(shape)
