"""Backend choice for every op, made at call time from the op's ``backend=`` argument.

``backend="auto"`` (the default) reads ``FASTCCREID_BACKEND`` if set, else picks Triton for CUDA tensors and the
vectorised torch implementation otherwise, except CUDA evaluation (``rank_stats_backend``: the torch path until a GPU
has timed both). Triton on CPU tensors needs ``TRITON_INTERPRET=1`` (how the Triton
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


def env_backend() -> str:
    """``FASTCCREID_BACKEND`` ("auto" when unset); ValueError naming the valid choices."""
    env = os.environ.get("FASTCCREID_BACKEND", "auto").strip().lower() or "auto"
    if env not in BACKENDS:
        raise ValueError(f"FASTCCREID_BACKEND must be one of {BACKENDS}, got {env!r}")
    return env


def resolve_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """Return "triton" or "torch" for these tensors; raise ValueError naming the valid choices."""
    if backend is None:
        backend = "auto"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = env_backend()
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


# Which path backend="auto" takes for CUDA evaluation (rank_stats), and why. The torch path computes each query
# chunk's distances with one cuBLAS GEMM and places non-matches with a per-row lookup table (a few passes per
# element, whatever the match count); the Triton path fuses the distance tile (IEEE fp32 FMAs, no tensor cores,
# autotuned 32-128 x 64 tiles) with a placement loop over the tile's match ranks (work per element grows with the
# tile's widest pid group), and has only ever run under TRITON_INTERPRET=1. Until benchmarks/gpu_check.sh has timed
# both on a GPU (bench eval's "rank_stats cuda" rows), "auto" keeps CUDA evaluation on the torch path;
# backend="triton" (or FASTCCREID_BACKEND=triton) selects the fused kernels.
RANK_STATS_CUDA_AUTO = "torch"
RANK_STATS_CUDA_AUTO_WHY = ("CUDA evaluation stays on the torch path (cuBLAS distances, lookup-table placement) "
                            "until a GPU has timed it against the fused Triton kernels; backend='triton' selects them")


def rank_stats_backend(backend: str | None, *tensors: torch.Tensor) -> str:
    """``kernel_backend`` for rank_stats: "auto" (with FASTCCREID_BACKEND unset or "auto") on CUDA tensors takes
    ``RANK_STATS_CUDA_AUTO`` (see the comment above it); an explicit "triton" still takes the Triton kernels."""
    chosen = kernel_backend(backend, *tensors)
    asked = "auto" if backend is None else backend
    if chosen == "triton" and asked == "auto" and env_backend() == "auto":
        return RANK_STATS_CUDA_AUTO
    return chosen


def torch_ops_requested(backend: str | None) -> bool:
    """Whether the caller asked for the torch ops themselves: backend="torch", or "auto" with
    FASTCCREID_BACKEND=torch. Then no compiled CPU kernel (``kernels/csrc``) stands in for them; under "auto"
    they do where they are built (the same bits)."""
    asked = "auto" if backend is None else backend
    return asked == "torch" or (asked == "auto" and env_backend() == "torch")
