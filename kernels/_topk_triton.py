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

import dataclasses
import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastccreid.kernels._triton_gram import (
    aligned_rows,
    check_grid,
    decompose_on_cuda_only,
    sqeuclid_tile,
    traceable,
)
from fastccreid.kernels.checks import JUNK_CODES, JUNK_NAMES
from fastccreid.kernels.seed_distance import sq_norms

_MAX_KEY = 2**63 - 1


# A tile keeps at most MAX_TILE_G keys: a larger sorted register tile spills (and k = 1000 as one [16, 1024] tile
# did not finish compiling). For k > MAX_TILE_G every tile keeps all its keys and torch selects the k best of them.
TILE_G, MAX_TILE_G = 64, 128


@dataclasses.dataclass(frozen=True)
class TileLaunch:
    """Constexprs and launch options of one ``_tile_topk_kernel`` launch (BQ queries x BG gallery items, BK
    features per dot, the first KP sorted keys of each tile kept)."""

    BQ: int
    BG: int
    BK: int
    KP: int
    num_warps: int = 4
    num_stages: int = 3

    def constexprs(self) -> dict:
        return {"BQ": self.BQ, "BG": self.BG, "BK": self.BK, "KP": self.KP}


def tile_launch(k: int) -> TileLaunch:
    """The tile shape for top-``k``: KP = the power of two >= min(k, BG); BG grows with k up to MAX_TILE_G."""
    bg = TILE_G
    if k > TILE_G:  # each tile must be able to contribute k candidates, as far as the tile size allows
        bg = min(1 << (k - 1).bit_length(), MAX_TILE_G)
    kp = 1
    while kp < min(k, bg):
        kp *= 2
    return TileLaunch(BQ=16, BG=bg, BK=32, KP=kp)


def launch_configs() -> list[TileLaunch]:
    """Every launch ``tile_launch`` can return (each compiled in tests/test_triton_compile.py)."""
    out, k = [], 1
    while k <= 2 * MAX_TILE_G:
        if tile_launch(k) not in out:
            out.append(tile_launch(k))
        k *= 2
    return out


@triton.jit
def _tile_topk_kernel(q_ptr, g_ptr, qq_ptr, gg_ptr, qp_ptr, gp_ptr, qc_ptr, gc_ptr, qcl_ptr, gcl_ptr, out_ptr,
                      NQ, NG, D, NT, stride_q, stride_g, JUNK: tl.constexpr, BQ: tl.constexpr, BG: tl.constexpr,
                      BK: tl.constexpr, KP: tl.constexpr):
    pid_g = tl.program_id(0)  # gallery tiles on axis 0: CUDA allows 2^31 - 1 blocks there, 65,535 on axis 1
    pid_q = tl.program_id(1)
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


def topk_grid(n: int, ng: int, launch: TileLaunch) -> tuple[int, int]:
    """Gallery tiles on axis 0 (up to 2^31 - 1), the chunk's query blocks on axis 1 (n <= the chunk size)."""
    return check_grid((triton.cdiv(ng, launch.BG), triton.cdiv(n, launch.BQ)), "topk_ranking")


def _chunk(nt: int, kp: int, budget: int = 1 << 28) -> int:
    """Queries per launch: at most 256, and the chunk's [n, tiles, KP] int64 keys within ``budget`` bytes."""
    return max(1, min(256, budget // (8 * nt * kp)))


def topk_triton(q, g, k: int, labels, junk) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest gallery items per query with the Triton tile kernel -> values [Q, k], indices [Q, k]."""
    nq = q.shape[0]
    ng = g.shape[0]
    q = aligned_rows(q.float())
    g = aligned_rows(g.float())
    d = q.shape[1]
    launch = tile_launch(k)
    qq, gg = sq_norms(q).contiguous(), sq_norms(g).contiguous()
    dummy = torch.zeros(1, dtype=torch.int64, device=q.device)
    if labels is not None:
        qp, gp, qc, gc, qcl, gcl = labels
        qcl = dummy if qcl is None else qcl
        gcl = dummy if gcl is None else gcl
    else:
        qp = gp = qc = gc = qcl = gcl = dummy
    junk_code = JUNK_CODES[junk]
    nt = triton.cdiv(ng, launch.BG)
    kp = launch.KP
    vals = torch.full((nq, k), math.inf, dtype=torch.float32, device=q.device)
    inds = torch.full((nq, k), -1, dtype=torch.int64, device=q.device)
    chunk = _chunk(nt, kp)
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        n = e - s
        keys = torch.empty(n, nt, kp, dtype=torch.int64, device=q.device)
        lab = (qp[s:e], gp, qc[s:e], gc, qcl[s:e] if junk == "ltcc-cc" else dummy, gcl) if labels is not None \
            else (dummy,) * 6
        traceable(_tile_topk_kernel)[topk_grid(n, ng, launch)](
            q[s:e], g, qq[s:e], gg, *lab, keys, n, ng, d, nt, q.stride(0), g.stride(0), JUNK=junk_code,
            **launch.constexprs(), num_warps=launch.num_warps, num_stages=launch.num_stages)
        # k > KP (k beyond MAX_TILE_G): every tile kept all its keys, so the chunk's row holds the whole gallery
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


def _topk_body(q: torch.Tensor, g: torch.Tensor, k: int, q_pids: torch.Tensor, g_pids: torch.Tensor,
               q_camids: torch.Tensor, g_camids: torch.Tensor, q_clothes: torch.Tensor, g_clothes: torch.Tensor,
               junk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest (squared euclidean) per query -> values [Q, k] fp32, indices [Q, k] int64; ``junk`` by code
    (0 none, 1 market, 2 ltcc-cc); label tensors the rule does not use may be any int64 dummies."""
    labels = _op_labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk)
    return topk_triton(q, g, k, labels, JUNK_NAMES[junk])


topk_op = triton_op("fastccreid::topk_sqeuclid", mutates_args=())(_topk_body)


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


decompose_on_cuda_only(topk_op, _topk_body)
