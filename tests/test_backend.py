"""Backend choice: argument first, then FASTCCREID_BACKEND, then auto (Triton only for CUDA tensors)."""

from __future__ import annotations

import pytest
import torch

from fastccreid.kernels._backend import resolve_backend


def test_auto_is_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("FASTCCREID_BACKEND", raising=False)
    assert resolve_backend("auto", torch.zeros(2)) == "torch"
    assert resolve_backend(None, torch.zeros(2)) == "torch"


def test_env_var_sets_the_default(monkeypatch):
    monkeypatch.setenv("FASTCCREID_BACKEND", "torch")
    assert resolve_backend("auto", torch.zeros(2)) == "torch"
    monkeypatch.setenv("FASTCCREID_BACKEND", "cuda")
    with pytest.raises(ValueError, match="FASTCCREID_BACKEND"):
        resolve_backend("auto", torch.zeros(2))


def test_explicit_argument_wins_over_env(monkeypatch):
    monkeypatch.setenv("FASTCCREID_BACKEND", "triton")
    assert resolve_backend("torch", torch.zeros(2)) == "torch"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.zeros(2))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_backend("triton", torch.zeros(2)) == "triton"


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError, match="auto"):
        resolve_backend("cuda", torch.zeros(2))
