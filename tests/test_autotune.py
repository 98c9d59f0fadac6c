"""Autotuning of the Gram-tile kernels (no GPU needed): the pairwise kernel is tuned per size bucket, not per exact
shape, and ``torch.use_deterministic_algorithms`` (``--deterministic`` on CUDA) pins one config per path."""

from __future__ import annotations

import pytest
import torch

from fastccreid.kernels import _pairwise_distance_triton as pw
from fastccreid.kernels import _triplet_triton as tp
from fastccreid.kernels._triton_gram import autotune_bucket


@pytest.mark.parametrize("n, bucket", [(0, 1), (1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024), (1025, 2048),
                                       (82161, 131072)])
def test_autotune_bucket_is_the_next_power_of_two(n, bucket):
    assert autotune_bucket(n) == bucket


class _Capture:
    """Stands in for ``wrap_triton(kernel)``: records the launch's arguments by the kernel's parameter names."""

    def __init__(self, kernel):
        self.names = kernel.fn.arg_names
        self.calls: list[dict] = []

    def __call__(self, kernel):
        return self

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append({**dict(zip(self.names, args, strict=False)), **kwargs})
        return launch


def _autotune_key(call: dict) -> tuple:
    return tuple(call[k] for k in pw._pairwise_kernel.keys)


def test_pairwise_autotune_key_is_the_size_bucket(monkeypatch):
    """Two galleries in one power-of-two bucket share the autotuner's cache entry (one benchmark), another bucket
    gets its own; the kernel still gets the exact sizes."""
    cap = _Capture(pw._pairwise_kernel)
    monkeypatch.setattr(pw, "traceable", cap)
    assert all(k not in ("M", "N", "K") for k in pw._pairwise_kernel.keys), pw._pairwise_kernel.keys
    for m, n in ((493, 7050), (480, 7200), (493, 9000)):
        pw.pairwise_distance_launch(torch.zeros(m, 40), torch.zeros(n, 40), 0)
    first, same_bucket, other = cap.calls
    assert (first["M"], first["N"], first["K"]) == (493, 7050, 48)  # exact (K padded to a multiple of 16)
    assert _autotune_key(first) == _autotune_key(same_bucket) == (512, 8192, 64, 0, True)
    assert _autotune_key(other) == (512, 16384, 64, 0, True)


@pytest.mark.parametrize("module, kernel", [(pw, pw._pairwise_kernel), (tp, tp._batch_hard_kernel)])
@pytest.mark.parametrize("ieee", [True, False])
def test_deterministic_algorithms_pin_one_config_per_path(module, kernel, ieee):
    prune = kernel.early_config_prune
    configs = list(kernel.configs)
    path = [(c.kwargs, c.num_warps, c.num_stages) for c in module.gpu_configs(ieee)]
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        tuned = prune(configs, {"IEEE": ieee})
        assert [(c.kwargs, c.num_warps, c.num_stages) for c in tuned] == path and len(path) > 1
        torch.use_deterministic_algorithms(True, warn_only=True)
        pinned = prune(configs, {"IEEE": ieee})
        assert [(c.kwargs, c.num_warps, c.num_stages) for c in pinned] == path[:1]
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
