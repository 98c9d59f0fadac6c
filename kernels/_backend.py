"""Backend choice for every op, made at call time from the op's ``backend=`` argument.

``backend="auto"`` (the default) reads ``FASTCCREID_BACKEND`` if set, else picks Triton for CUDA tensors and the
vectorised torch implementation otherwise. Triton on CPU tensors needs ``TRITON_INTERPRET=1`` (how the Triton
path is tested on machines without a GPU).
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401  (lazy: Triton is imported only when a Triton path is asked for)
    except ImportError:
        return False
    return True


def resolve_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """Return "triton" or "torch" for these tensors; raise ValueError naming the valid choices."""
    if backend is None:
        backend = "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("FASTCCREID_BACKEND", "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(f"FASTCCREID_BACKEND must be one of {BACKENDS}, got {env!r}")
        backend = env
    on_cuda = any(t.is_cuda for t in tensors)
    if backend == "auto":
        return "triton" if on_cuda and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package; install it or use backend='torch'")
        if not on_cuda and not triton_interpret():
            raise ValueError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 (the Triton interpreter); "
                "use backend='torch' or 'auto' for CPU tensors"
            )
    return backend


def kernel_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """``resolve_backend``, except that fp64 tensors always take "torch": the Triton kernels compute in fp32, and
    fp64 input is computed in fp64 on the torch path (pairwise, triplet, rank_stats and topk all route this way)."""
    chosen = resolve_backend(backend, *tensors)
    if chosen == "triton" and any(t.dtype == torch.float64 for t in tensors):
        return "torch"
    return chosen
