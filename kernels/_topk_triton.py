"""Triton kernel for ``topk_ranking`` (squared euclidean features): fused distance tile + per-tile k-selection.

Each program takes [BQ] queries and one [BG] gallery tile, computes the tile's distances (the rank_stats tile
code: fp32, IEEE), applies the junk rule, packs (distance, gallery index) into one int64 key (order-preserving
float bits in the high word, index in the low word: ties break by index for free), sorts the tile's keys and keeps
the first KP. torch then takes the k smallest keys over the tiles of a query chunk. Memory: chunk × tiles × KP
keys, never Q×G distances. Imported only when a Triton path runs (``TRITON_INTERPRET=1`` on CPU tensors).

Registered as the custom op ``fastccreid::topk_sqeuclid`` (``torch.library.triton_op``, not differentiable) with
the torch path as its CPU kernel and a shape-only fake, so torch.compile traces through it without a graph break.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from fastccreid.kernels._triton_gram import sqeuclid_tile
from fastccreid.kernels.checks import JUNK_CODES, JUNK_NAMES
from fastccreid.kernels.seed_distance import sq_norms

_MAX_KEY = 2**63 - 1


@triton.jit
def _tile_topk_kernel(q_ptr, g_ptr, qq_ptr, gg_ptr, qp_ptr, gp_ptr, qc_ptr, gc_ptr, qcl_ptr, gcl_ptr, out_ptr,
                      NQ, NG, D, NT, stride_q, stride_g, JUNK: tl.constexpr, BQ: tl.constexpr, BG: tl.constexpr,
                      BK: tl.constexpr, KP: tl.constexpr):
    pid_q = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    mask_q = offs_q < NQ
    offs_g = pid_g * BG + tl.arange(0, BG)
    mask_g = offs_g < NG
    d = sqeuclid_tile(q_ptr, g_ptr, qq_ptr, gg_ptr, offs_q, offs_g, mask_q, mask_g, D, stride_q, stride_g,
                      BQ, BG, BK)
    d = d + 0.0  # -0.0 -> +0.0 so that equal distances get equal keys
    if JUNK > 0:  # 1: same pid & same camera; 2: same pid & (same camera | same clothes)
        qp = tl.load(qp_ptr + offs_q, mask=mask_q, other=-1)
        gp = tl.load(gp_ptr + offs_g, mask=mask_g, other=-2)
        qc = tl.load(qc_ptr + offs_q, mask=mask_q, other=-1)
        gc = tl.load(gc_ptr + offs_g, mask=mask_g, other=-2)
        bad = (qc[:, None] == gc[None, :])
        if JUNK == 2:
            qcl = tl.load(qcl_ptr + offs_q, mask=mask_q, other=-1)
            gcl = tl.load(gcl_ptr + offs_g, mask=mask_g, other=-2)
            bad = bad | (qcl[:, None] == gcl[None, :])
        bad = bad & (qp[:, None] == gp[None, :])
        d = tl.where(bad, float("inf"), d)
    bits = d.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = (ordered.to(tl.int64) << 32) | offs_g.to(tl.int64)[None, :]
    key = tl.where(mask_g[None, :], key, 0x7FFFFFFFFFFFFFFF)
    key = tl.sort(key, dim=1)
    # keep the first KP keys of the sorted tile, written as [BQ, KP]
    cols = tl.arange(0, BG)
    base = out_ptr + (offs_q.to(tl.int64) * NT + pid_g) * KP
    tl.store(base[:, None] + cols[None, :], key, mask=mask_q[:, None] & (cols[None, :] < KP))


def _decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    vals = bits.view(torch.float32)
    idx = keys & 0xFFFFFFFF
    bad = (keys == _MAX_KEY) | torch.isinf(vals)
    return torch.where(bad, torch.full_like(vals, math.inf), vals), torch.where(bad, torch.full_like(idx, -1), idx)


def topk_triton(q, g, k: int, labels, junk, block_q: int = 16, block_g: int = 64, block_k: int = 32,
                chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest gallery items per query with the Triton tile kernel -> values [Q, k], indices [Q, k]."""
    q = q.float().contiguous()
    g = g.float().contiguous()
    nq, d = q.shape
    ng = g.shape[0]
    kp = 1
    while kp < min(k, block_g):
        kp *= 2
    if k > block_g:  # each tile must be able to contribute k candidates
        block_g = 1 << (k - 1).bit_length()
        kp = block_g
    qq, gg = sq_norms(q).contiguous(), sq_norms(g).contiguous()
    dummy = torch.zeros(1, dtype=torch.int64, device=q.device)
    if labels is not None:
        qp, gp, qc, gc, qcl, gcl = labels
        qcl = dummy if qcl is None else qcl
        gcl = dummy if gcl is None else gcl
    else:
        qp = gp = qc = gc = qcl = gcl = dummy
    junk_code = JUNK_CODES[junk]
    nt = triton.cdiv(ng, block_g)
    vals = torch.full((nq, k), math.inf, dtype=torch.float32, device=q.device)
    inds = torch.full((nq, k), -1, dtype=torch.int64, device=q.device)
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        n = e - s
        keys = torch.empty(n, nt, kp, dtype=torch.int64, device=q.device)
        grid = (triton.cdiv(n, block_q), nt)
        lab = (qp[s:e], gp, qc[s:e], gc, qcl[s:e] if junk == "ltcc-cc" else dummy, gcl) if labels is not None \
            else (dummy,) * 6
        wrap_triton(_tile_topk_kernel)[grid](q[s:e], g, qq[s:e], gg, *lab, keys, n, ng, d, nt, q.stride(0), g.stride(0),
                                            JUNK=junk_code, BQ=block_q, BG=block_g, BK=block_k, KP=kp)
        flat = keys.view(n, nt * kp)
        kk = min(k, flat.shape[1])
        best = torch.topk(flat, kk, dim=1, largest=False, sorted=True).values
        v, i = _decode(best)
        vals[s:e, :kk] = v
        inds[s:e, :kk] = i
    kmax = min(k, ng)
    vals[:, kmax:] = math.inf
    inds[:, kmax:] = -1
    return vals, inds


def _op_labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk: int):
    """The launcher's label tuple from the op's always-present label tensors (unused ones may be dummies)."""
    if junk == 0:
        return None
    if junk == 1:
        return q_pids, g_pids, q_camids, g_camids, None, None
    return q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes


@triton_op("fastccreid::topk_sqeuclid", mutates_args=())
def topk_op(q: torch.Tensor, g: torch.Tensor, k: int, q_pids: torch.Tensor, g_pids: torch.Tensor,
            q_camids: torch.Tensor, g_camids: torch.Tensor, q_clothes: torch.Tensor, g_clothes: torch.Tensor,
            junk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest (squared euclidean) per query -> values [Q, k] fp32, indices [Q, k] int64; ``junk`` by code
    (0 none, 1 market, 2 ltcc-cc); label tensors the rule does not use may be any int64 dummies."""
    labels = _op_labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk)
    return topk_triton(q, g, k, labels, JUNK_NAMES[junk])


@topk_op.register_kernel("cpu")
def _topk_cpu(q, g, k: int, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk: int):
    from fastccreid.kernels.topk import topk_ranking

    clothes = (q_clothes, g_clothes) if junk == 2 else (None, None)
    return topk_ranking(q, g, k, "sqeuclidean", q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids,
                        q_clothes=clothes[0], g_clothes=clothes[1], junk=JUNK_NAMES[junk], backend="torch")


@topk_op.register_fake
def _topk_fake(q, g, k: int, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk: int):
    # shape-only kernel for tracing: the launcher cannot run on fake tensors under TRITON_INTERPRET=1
    return q.new_empty((q.shape[0], k), dtype=torch.float32), q.new_empty((q.shape[0], k), dtype=torch.int64)
