"""Triton kernel for ``pairwise_distance``: one [BLOCK_M, BLOCK_N] output tile per program.

The K loop accumulates x·yᵀ with ``tl.dot`` in fp32 and, from the same loaded tiles, both rows' squared norms, so
the norms cost no extra pass over memory; the epilogue turns (dot, norms) into the metric. fp32 inputs use IEEE
fp32 dot products (not TF32) so that rankings match the fp32 reference. Imported only when the Triton path runs.

Registered as the custom op ``fastccreid::pairwise_distance`` (``torch.library.triton_op``) with the torch twin as
its CPU kernel and the shared backward as its autograd, so torch.compile traces through it without a graph break.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastccreid.kernels._backend import triton_interpret
from fastccreid.kernels._triton_gram import (
    aligned_rows,
    autotune_bucket,
    check_grid,
    decompose_on_cuda_only,
    dot_fp32,
    gram_tile,
    path_pruner,
    traceable,
)
from fastccreid.kernels.pairwise_distance import METRIC_CODES, distance_backward, distance_torch

_METRIC_NAMES = {v: k for k, v in METRIC_CODES.items()}


# fp32 inputs multiply with IEEE FMAs (no tensor cores): their operand tiles live in registers, so BLOCK_K stays at
# 16 (32 and 64 spill on sm_80 / sm_90). fp16 / bf16 use tensor-core MMAs and keep wider K steps.
IEEE_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16, "GROUP_M": 8}, num_warps=4, num_stages=3),
]
MMA_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3),
]


def gpu_configs(ieee: bool) -> list[triton.Config]:
    """The configs autotuning picks from on a GPU for fp32 IEEE (``ieee``) or fp16 / bf16 inputs (each compiled
    for sm_80 / sm_90 in tests/test_triton_compile.py)."""
    return IEEE_CONFIGS if ieee else MMA_CONFIGS


def _configs() -> list[triton.Config]:
    if triton_interpret():
        # the interpreter runs every config it is given: one small config keeps CPU tests fast
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4}, num_warps=1)]
    return IEEE_CONFIGS + MMA_CONFIGS


# Autotuned per size bucket (M_KEY, N_KEY, K_KEY: autotune_bucket of M, N, K; the kernel itself never reads them),
# not per exact shape: a new gallery size or a last partial chunk reuses its bucket's choice instead of benchmarking
# every config again.
@triton.autotune(configs=_configs(), key=["M_KEY", "N_KEY", "K_KEY", "METRIC", "IEEE"],
                 prune_configs_by={"early_config_prune": path_pruner(gpu_configs)})
@triton.jit
def _pairwise_kernel(
    x_ptr, y_ptr, out_ptr, M, N, K, M_KEY, N_KEY, K_KEY,
    stride_xm, stride_xk, stride_ym, stride_yk, stride_om, stride_on,
    METRIC: tl.constexpr, IEEE: tl.constexpr, DOT_FP32: tl.constexpr, SQ_FLOOR: tl.constexpr, NORM_EPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped tile order: GROUP_M row tiles share the same column tiles while they are in L2
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_rows
    pid_n = (pid % group) // group_rows

    # int64 row offsets: row * stride overflows int32 for galleries past ~1M x 2048
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    m_ok = rm < M
    n_ok = rn < N
    acc, xsq, ysq = gram_tile(x_ptr, y_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_xk, stride_ym, stride_yk,
                              IEEE, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_K)

    # correctly rounded sqrt / division (tl.sqrt and "/" compile to approximate PTX on a GPU): torch parity
    if METRIC == 2:
        nx = tl.maximum(tl.sqrt_rn(xsq), NORM_EPS)
        ny = tl.maximum(tl.sqrt_rn(ysq), NORM_EPS)
        d = 1.0 - tl.div_rn(acc, nx[:, None] * ny[None, :])
    else:
        d = (xsq[:, None] + ysq[None, :]) - 2.0 * acc
        if METRIC == 1:
            d = tl.sqrt_rn(tl.maximum(d, SQ_FLOOR))
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, d, mask=m_ok[:, None] & n_ok[None, :])


def pairwise_grid(m: int, n: int, block_m: int, block_n: int) -> tuple[int]:
    """One flattened axis of output tiles (the kernel orders them in groups of GROUP_M row tiles)."""
    return check_grid((triton.cdiv(m, block_m) * triton.cdiv(n, block_n),), "pairwise_distance")


def pairwise_distance_launch(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    """Launch the kernel: x [M, D], y [N, D] (fp32 / fp16 / bf16) -> fp32 [M, N]."""
    if x.dtype != y.dtype:
        x, y = x.float(), y.float()
    same = y is x
    x = aligned_rows(x)
    y = x if same else aligned_rows(y)
    m, k = x.shape
    n = y.shape[0]
    out = torch.empty((m, n), dtype=torch.float32, device=x.device)

    def grid(meta):
        return pairwise_grid(m, n, meta["BLOCK_M"], meta["BLOCK_N"])

    traceable(_pairwise_kernel)[grid](
        x, y, out, m, n, k, autotune_bucket(m), autotune_bucket(n), autotune_bucket(k),
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), out.stride(0), out.stride(1),
        METRIC=metric, IEEE=x.dtype == torch.float32, DOT_FP32=dot_fp32(x.dtype), SQ_FLOOR=1e-12, NORM_EPS=1e-12,
    )
    return out


def _pairwise_distance_body(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    """fp32 [M, N] distances by metric code (0 sqeuclidean, 1 euclidean, 2 cosine)."""
    return pairwise_distance_launch(x, y, metric)


pairwise_distance_op = triton_op("fastccreid::pairwise_distance", mutates_args=())(_pairwise_distance_body)


@pairwise_distance_op.register_kernel("cpu")
def _pairwise_distance_cpu(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    return distance_torch(x, y, _METRIC_NAMES[metric]).float()


@pairwise_distance_op.register_fake
def _pairwise_distance_fake(x: torch.Tensor, y: torch.Tensor, metric: int) -> torch.Tensor:
    # shape-only kernel for tracing: the launcher itself cannot run on fake tensors under TRITON_INTERPRET=1
    return x.new_empty((x.shape[0], y.shape[0]), dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    x, y, metric = inputs
    ctx.save_for_backward(x, y, output)
    ctx.metric = _METRIC_NAMES[metric]


def _backward(ctx, grad: torch.Tensor):
    x, y, d = ctx.saved_tensors
    gx, gy = distance_backward(grad, x, y, d, ctx.metric, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
    return gx, gy, None


pairwise_distance_op.register_autograd(_backward, setup_context=_setup_context)
decompose_on_cuda_only(pairwise_distance_op, _pairwise_distance_body)
