"""Triton kernel for batch-hard mining: one program per block of anchor rows, streaming over column blocks.

For each column block the K loop builds the Gram tile with ``tl.dot`` (fp32 accumulation, IEEE for fp32 inputs)
and both rows' squared norms from the same loads; the epilogue forms the clamped squared distance, compares labels
in registers and folds the block into running (max, argmax) over positives and (min, argmin) over negatives, masked
with ±inf via ``tl.where``. No [B, B] distance or mask ever reaches memory. Ties keep the lowest column index
(``tl.argmax`` / ``tl.argmin`` tie-break left, strict improvement across blocks), as the torch path.

Registered as ``fastccreid::batch_hard_mining`` (``torch.library.triton_op``) with the torch twin as its CPU
kernel and the pair-gather backward as its autograd. Imported only when the Triton path runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastccreid.kernels._backend import triton_interpret
from fastccreid.kernels._triton_gram import (
    aligned_rows,
    check_grid,
    decompose_on_cuda_only,
    dot_fp32,
    gram_tile,
    path_pruner,
    traceable,
)
from fastccreid.kernels.pairwise_distance import SQ_FLOOR
from fastccreid.kernels.triplet import mine_torch, mining_backward
from fastccreid.versions import release

# fp32 inputs multiply with IEEE FMAs whose operand tiles live in registers (next to the running max / min state):
# narrow K steps; fp16 / bf16 use tensor-core MMAs. Every config compiles without spills for sm_80 / sm_90.
IEEE_CONFIGS = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 16}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4, num_stages=3),
]
# The tensor-core configs differ by Triton release, because ptxas spills differently (ptxas -v, 4 warps, 3 stages;
# tests/test_triton_compile.py checks the list of the installed release): with triton 3.6 the 16x64x64 and 16x32x128
# tiles spill 8 / 4 B a thread on sm_80 (168 / 128 registers), while 16x64x32 and 16x32x64 do not; with triton 3.8
# 16x32x64 spills 8 B on sm_90 in bf16, while 16x64x64 and 16x32x128 do not. 3.7 has not been measured and takes
# the 3.6 list.
MMA_CONFIGS_TRITON_3_8 = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128}, num_warps=4, num_stages=3),
]
MMA_CONFIGS_TRITON_3_6 = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}, num_warps=4, num_stages=3),
]


def mma_configs(triton_release: tuple[int, int]) -> list[triton.Config]:
    """The fp16 / bf16 configs shipped for a Triton (major, minor) release."""
    return MMA_CONFIGS_TRITON_3_8 if triton_release >= (3, 8) else MMA_CONFIGS_TRITON_3_6


MMA_CONFIGS = mma_configs(release(triton.__version__))


def gpu_configs(ieee: bool) -> list[triton.Config]:
    """The configs autotuning picks from on a GPU for fp32 IEEE (``ieee``) or fp16 / bf16 inputs (each compiled
    for sm_80 / sm_90 in tests/test_triton_compile.py)."""
    return IEEE_CONFIGS if ieee else MMA_CONFIGS


def _configs() -> list[triton.Config]:
    if triton_interpret():
        # the interpreter runs every config it is given: one small config keeps CPU tests fast
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}, num_warps=1)]
    return IEEE_CONFIGS + MMA_CONFIGS


@triton.autotune(configs=_configs(), key=["B", "K", "IEEE"],
                 prune_configs_by={"early_config_prune": path_pruner(gpu_configs)})
@triton.jit
def _batch_hard_kernel(
    x_ptr, lab_ptr, d_ap_ptr, d_an_ptr, pos_ptr, neg_ptr, same_ptr, B, K, stride_xm, stride_xk,
    IEEE: tl.constexpr, DOT_FP32: tl.constexpr, SQ_FLOOR: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rm = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # int64: row * stride must not overflow
    m_ok = rm < B
    lab_m = tl.load(lab_ptr + rm, mask=m_ok, other=0)

    best_p = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    best_n = tl.full((BLOCK_M,), float("inf"), tl.float32)
    # int32 running state (B < 2^31 rows; widened at the store): fewer registers next to the Gram tile
    idx_p = tl.full((BLOCK_M,), -1, tl.int32)
    idx_n = tl.full((BLOCK_M,), -1, tl.int32)
    n_same = tl.zeros((BLOCK_M,), tl.int32)

    for n0 in range(0, B, BLOCK_N):
        rn = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        n_ok = rn < B
        acc, xsq, ysq = gram_tile(x_ptr, x_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_xk, stride_xm, stride_xk,
                                  IEEE, DOT_FP32, BLOCK_M, BLOCK_N, BLOCK_K)
        s = tl.maximum((xsq[:, None] + ysq[None, :]) - 2.0 * acc, SQ_FLOOR)
        # an anchor's distance to itself is exactly the floor (as the torch path), not sqrt of rounding noise
        s = tl.where(rm[:, None] == rn[None, :], SQ_FLOOR, s)

        lab_n = tl.load(lab_ptr + rn, mask=n_ok, other=0)
        same = (lab_m[:, None] == lab_n[None, :]) & n_ok[None, :]
        diff = (lab_m[:, None] != lab_n[None, :]) & n_ok[None, :]
        n_same += tl.sum(same.to(tl.int32), axis=1)

        pos = tl.where(same, s, float("-inf"))
        blk_max = tl.max(pos, axis=1)
        arg_max = tl.argmax(pos, axis=1, tie_break_left=True) + n0
        better = blk_max > best_p  # strict: an earlier block keeps its tie
        best_p = tl.where(better, blk_max, best_p)
        idx_p = tl.where(better, arg_max, idx_p)

        neg = tl.where(diff, s, float("inf"))
        blk_min = tl.min(neg, axis=1)
        arg_min = tl.argmin(neg, axis=1, tie_break_left=True) + n0
        better = blk_min < best_n
        best_n = tl.where(better, blk_min, best_n)
        idx_n = tl.where(better, arg_min, idx_n)

    # correctly rounded sqrt (tl.sqrt is approximate on a GPU): d_ap / d_an match torch's bits
    tl.store(d_ap_ptr + rm, tl.sqrt_rn(best_p), mask=m_ok)
    tl.store(d_an_ptr + rm, tl.sqrt_rn(best_n), mask=m_ok)
    tl.store(pos_ptr + rm, idx_p.to(tl.int64), mask=m_ok)
    tl.store(neg_ptr + rm, idx_n.to(tl.int64), mask=m_ok)
    tl.store(same_ptr + rm, n_same.to(tl.int64), mask=m_ok)


def batch_hard_grid(b: int, block_m: int) -> tuple[int]:
    """One axis of anchor-row blocks (each program streams over all column blocks)."""
    return check_grid((triton.cdiv(b, block_m),), "batch_hard_mining")


def batch_hard_mining_launch(x: torch.Tensor, labels: torch.Tensor):
    """Launch the kernel: x [B, D] (fp32 / fp16 / bf16), labels [B] int64 -> d_ap, d_an fp32, pos, neg, n_same."""
    b = x.shape[0]
    x = aligned_rows(x)
    k = x.shape[1]
    dev = x.device
    d_ap = torch.empty(b, dtype=torch.float32, device=dev)
    d_an = torch.empty(b, dtype=torch.float32, device=dev)
    pos = torch.empty(b, dtype=torch.int64, device=dev)
    neg = torch.empty(b, dtype=torch.int64, device=dev)
    n_same = torch.empty(b, dtype=torch.int64, device=dev)

    def grid(meta):
        return batch_hard_grid(b, meta["BLOCK_M"])

    traceable(_batch_hard_kernel)[grid](
        x, labels, d_ap, d_an, pos, neg, n_same, b, k, x.stride(0), x.stride(1),
        IEEE=x.dtype == torch.float32, DOT_FP32=dot_fp32(x.dtype), SQ_FLOOR=SQ_FLOOR,
    )
    return d_ap, d_an, pos, neg, n_same


def _batch_hard_mining_body(
    x: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d_ap, d_an, pos_idx, neg_idx, n_same) for x [B, D] and int64 labels [B]."""
    return batch_hard_mining_launch(x, labels)


batch_hard_mining_op = triton_op("fastccreid::batch_hard_mining", mutates_args=())(_batch_hard_mining_body)


@batch_hard_mining_op.register_kernel("cpu")
def _batch_hard_mining_cpu(x: torch.Tensor, labels: torch.Tensor):
    d_ap, d_an, pos, neg, n_same = mine_torch(x, labels)
    # copies: mine_torch's two distance vectors are views of one buffer, and a custom op's outputs may not alias
    return d_ap.to(torch.float32, copy=True), d_an.to(torch.float32, copy=True), pos, neg, n_same


@batch_hard_mining_op.register_fake
def _batch_hard_mining_fake(x: torch.Tensor, labels: torch.Tensor):
    # shape-only kernel for tracing: the launcher itself cannot run on fake tensors under TRITON_INTERPRET=1
    b = x.shape[0]
    f32 = x.new_empty((b,), dtype=torch.float32)
    i64 = x.new_empty((b,), dtype=torch.int64)
    return f32, f32.clone(), i64, i64.clone(), i64.clone()


def _setup_context(ctx, inputs, output) -> None:
    x, _ = inputs
    d_ap, d_an, pos, neg, _ = output
    ctx.save_for_backward(x, d_ap, d_an, pos, neg)


def _backward(ctx, g_ap, g_an, _g_pos, _g_neg, _g_same):
    x, d_ap, d_an, pos, neg = ctx.saved_tensors
    return mining_backward(g_ap, g_an, x, d_ap, d_an, pos, neg), None


batch_hard_mining_op.register_autograd(_backward, setup_context=_setup_context)
decompose_on_cuda_only(batch_hard_mining_op, _batch_hard_mining_body)
