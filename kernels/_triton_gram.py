"""Shared Triton pieces of the distance kernels: the Gram-tile K loop with fused squared norms.

Imported only when a Triton path runs (it imports triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastccreid.kernels._backend import triton_interpret


def dot_fp32(dtype: torch.dtype) -> bool:
    """bf16 ``tl.dot`` gives wrong results in the Triton interpreter (triton 3.x): there, upcast tiles to fp32."""
    return dtype == torch.bfloat16 and triton_interpret()


@triton.jit
def gram_tile(
    x_ptr, y_ptr, rm, rn, m_ok, n_ok, K, stride_xm, stride_xk, stride_ym, stride_yk,
    IEEE: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, NORMS: tl.constexpr = True,
):
    """x[rm] · y[rn]ᵀ as a [BLOCK_M, BLOCK_N] fp32 tile, plus both rows' squared norms from the same loads (so the
    norms cost no extra pass over memory; ``NORMS=False`` leaves them 0 for callers that read stored norms).
    ``rm``/``rn`` are int64 row offsets; masked rows and columns read 0."""
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    ysq = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        k_ok = kk < K
        a = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(y_ptr + rn[None, :] * stride_ym + kk[:, None] * stride_yk,
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        af = a.to(tl.float32)
        bf = b.to(tl.float32)
        if NORMS:
            xsq += tl.sum(af * af, axis=1)
            ysq += tl.sum(bf * bf, axis=0)
        if IEEE:  # fp32 inputs: IEEE fp32 products (not TF32), so rankings match the fp32 reference
            acc = tl.dot(a, b, acc, input_precision="ieee")
        elif DOT_FP32:
            acc = tl.dot(af, bf, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    return acc, xsq, ysq


@triton.jit
def sqeuclid_tile(q_ptr, g_ptr, qq_ptr, gg_ptr, offs_q, offs_g, mask_q, mask_g, D, stride_q, stride_g,
                  BQ: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    """|q|^2 + |g|^2 - 2 q.g for a [BQ, BG] tile of unit-stride rows: the Gram tile of fp32-upcast loads with IEEE
    fp32 products (no TF32), and the squared norms qq [Q] / gg [G] read from memory (torch's, so the distances
    carry the same norms as the torch path's)."""
    acc, _, _ = gram_tile(q_ptr, g_ptr, offs_q.to(tl.int64), offs_g.to(tl.int64), mask_q, mask_g, D, stride_q, 1,
                          stride_g, 1, False, True, BQ, BG, BK, False)
    qq = tl.load(qq_ptr + offs_q, mask=mask_q, other=0.0)
    gg = tl.load(gg_ptr + offs_g, mask=mask_g, other=0.0)
    return qq[:, None] + gg[None, :] - 2.0 * acc
