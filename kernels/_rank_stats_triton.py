"""Triton kernels for ``rank_stats`` (squared euclidean features): the gallery is streamed in tiles, nothing Q×G.

Pass 1 computes each query's same-pid distances with the very tile code pass 2 uses (so ties compare equal bits);
torch sorts those few per query; pass 2 recomputes every tile, places each non-match among the sorted matches (a
loop over the R match distances, ties by gallery index) and adds it to a [Q, R+1] histogram with atomics. Imported
only when a Triton path runs; on CPU tensors it needs ``TRITON_INTERPRET=1``.

Registered as the custom op ``fastccreid::rank_stats_sqeuclid`` (``torch.library.triton_op``, not differentiable)
returning (first_rank, ap, inp, num_matches) [Q] each, with the torch path as its CPU kernel and a shape-only fake,
so torch.compile traces through it without a graph break.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from fastccreid.kernels._triton_gram import GRID_YZ_MAX, aligned_rows, check_grid, sqeuclid_tile
from fastccreid.kernels.checks import JUNK_CODES, JUNK_NAMES
from fastccreid.kernels.rank_stats import PidIndex, finish_stats, stats_from_hist
from fastccreid.kernels.seed_distance import sq_norms

__all__ = ["JUNK_CODES", "rank_stats_op", "rank_stats_triton", "sqeuclid_tile"]


# Tiles of both kernels (queries x gallery items x feature block); num_warps / num_stages are Triton's launch defaults.
BLOCK_Q, BLOCK_G, BLOCK_K = 16, 32, 32


def launch_configs(kernel: str) -> list[triton.Config]:
    """Every config the launcher runs ``kernel`` ("same_pid" / "place") with (compiled in tests/test_triton_compile)."""
    if kernel not in ("same_pid", "place"):
        raise ValueError(f"kernel must be 'same_pid' or 'place', got {kernel!r}")
    return [triton.Config({"BQ": BLOCK_Q, "BG": BLOCK_G, "BK": BLOCK_K}, num_warps=4, num_stages=3)]


@triton.jit
def _same_pid_kernel(q_ptr, g_ptr, qq_ptr, gg_ptr, qp_ptr, gp_ptr, slot_ptr, out_ptr, NQ, NG, D, RP,
                     stride_q, stride_g, BQ: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    pid_q = tl.program_id(0)
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    mask_q = offs_q < NQ
    qp = tl.load(qp_ptr + offs_q, mask=mask_q, other=-1)
    for g0 in range(0, NG, BG):
        offs_g = g0 + tl.arange(0, BG)
        mask_g = offs_g < NG
        gp = tl.load(gp_ptr + offs_g, mask=mask_g, other=-2)
        same = (qp[:, None] == gp[None, :]) & mask_q[:, None] & mask_g[None, :]
        if tl.sum(same.to(tl.int32)) > 0:  # only tiles holding a same-pid pair pay for the distance
            d = sqeuclid_tile(q_ptr, g_ptr, qq_ptr, gg_ptr, offs_q, offs_g, mask_q, mask_g, D, stride_q, stride_g,
                              BQ, BG, BK)
            slot = tl.load(slot_ptr + offs_g, mask=mask_g, other=0)
            tl.store(out_ptr + offs_q.to(tl.int64)[:, None] * RP + slot[None, :], d, mask=same)


@triton.jit
def _place_kernel(q_ptr, g_ptr, qq_ptr, gg_ptr, qp_ptr, gp_ptr, ms_ptr, msi_ptr, nm_ptr, hist_ptr, NQ, NG, D, RP,
                  stride_q, stride_g, Q0, BQ: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    # gallery tiles on axis 0 (CUDA allows 2^31 - 1 blocks there); query blocks Q0 + axis 1 (at most 65,535 a launch)
    pid_g = tl.program_id(0)
    pid_q = Q0 + tl.program_id(1)
    offs_q = pid_q * BQ + tl.arange(0, BQ)
    mask_q = offs_q < NQ
    offs_g = pid_g * BG + tl.arange(0, BG)
    mask_g = offs_g < NG
    qp = tl.load(qp_ptr + offs_q, mask=mask_q, other=-1)
    gp = tl.load(gp_ptr + offs_g, mask=mask_g, other=-2)
    nm = tl.load(nm_ptr + offs_q, mask=mask_q, other=0)
    d = sqeuclid_tile(q_ptr, g_ptr, qq_ptr, gg_ptr, offs_q, offs_g, mask_q, mask_g, D, stride_q, stride_g,
                      BQ, BG, BK)
    live = (qp[:, None] != gp[None, :]) & mask_q[:, None] & mask_g[None, :]
    p = tl.zeros((BQ, BG), dtype=tl.int32)
    row = offs_q.to(tl.int64) * RP
    for r in range(0, RP):
        m = tl.load(ms_ptr + row + r, mask=mask_q & (r < nm), other=float("inf"))
        mi = tl.load(msi_ptr + row + r, mask=mask_q & (r < nm), other=0)
        before = (m[:, None] < d) | ((m[:, None] == d) & (mi[:, None] < offs_g[None, :]))
        p += before.to(tl.int32)
    tl.atomic_add(hist_ptr + offs_q.to(tl.int64)[:, None] * (RP + 1) + p, 1, mask=live)


def same_pid_grid(nq: int, block_q: int) -> tuple[int]:
    """One axis of query blocks (each program streams over the gallery)."""
    return check_grid((triton.cdiv(nq, block_q),), "rank_stats (same-pid pass)")


def place_grids(nq: int, ng: int, block_q: int, block_g: int) -> list[tuple[int, tuple[int, int]]]:
    """(first query block, grid) of each placement launch: gallery tiles on axis 0, at most 65,535 query blocks on
    axis 1 per launch, so neither axis can pass CUDA's limits."""
    nqb = triton.cdiv(nq, block_q)
    ngt = triton.cdiv(ng, block_g)
    return [(q0, check_grid((ngt, min(GRID_YZ_MAX, nqb - q0)), "rank_stats (placement pass)"))
            for q0 in range(0, nqb, GRID_YZ_MAX)]


def rank_stats_triton(q, g, qp, gp, qc, gc, qcl, gcl, junk, block_q: int = BLOCK_Q, block_g: int = BLOCK_G,
                      block_k: int = BLOCK_K):
    """Triton rank statistics for squared euclidean features -> (first_rank, ap, inp, nmatch) [Q] each."""
    nq, ng = q.shape[0], g.shape[0]
    q = aligned_rows(q)
    g = aligned_rows(g)
    d = q.shape[1]
    qq = sq_norms(q.float()).contiguous()
    gg = sq_norms(g.float()).contiguous()
    index = PidIndex(gp)
    lo, cnt = index.ranges(qp)
    rp = max(1, int(cnt.max().item()))
    slot = torch.empty(ng, dtype=torch.int64, device=g.device)
    # position of each gallery item inside its pid group (groups are in ascending gallery index)
    start = torch.searchsorted(index.sorted_pids, index.sorted_pids, side="left")
    slot[index.order] = torch.arange(ng, device=g.device) - start
    same_d = torch.full((nq, rp), math.inf, dtype=torch.float32, device=q.device)
    wrap_triton(_same_pid_kernel)[same_pid_grid(nq, block_q)](
        q, g, qq, gg, qp, gp, slot, same_d, nq, ng, d, rp, q.stride(0), g.stride(0), BQ=block_q, BG=block_g, BK=block_k)
    # a query without any same-pid gallery item has lo == G: point its (all-padding) row at item 0, never a match
    m = index.gather(torch.where(cnt > 0, lo, torch.zeros_like(lo)), cnt, qc, gc, qcl, gcl, junk)
    if m.idx.shape[1] < rp:  # index.gather pads to max(cnt) too; keep widths equal
        raise RuntimeError("internal: match padding width mismatch")
    md = same_d.masked_fill(~m.is_match, math.inf)
    ms, order = torch.sort(md, dim=1, stable=True)
    msidx = m.idx.gather(1, order).contiguous()
    nmatch = m.is_match.sum(1)
    hist = torch.zeros(nq, rp + 1, dtype=torch.int32, device=q.device)
    ms = ms.contiguous()
    for q0, grid in place_grids(nq, ng, block_q, block_g):
        wrap_triton(_place_kernel)[grid](q, g, qq, gg, qp, gp, ms, msidx, nmatch, hist, nq, ng, d, rp,
                                         q.stride(0), g.stride(0), q0, BQ=block_q, BG=block_g, BK=block_k)
    return stats_from_hist(hist[:, :rp].to(torch.int64), nmatch)


def _op_labels(q_camids, g_camids, q_clothes, g_clothes, junk: int):
    """(qc, gc, qcl, gcl) as the launcher wants them: None where the junk rule (by code) does not use them."""
    cams = (q_camids, g_camids) if junk > 0 else (None, None)
    clothes = (q_clothes, g_clothes) if junk == 2 else (None, None)
    return (*cams, *clothes)


@triton_op("fastccreid::rank_stats_sqeuclid", mutates_args=())
def rank_stats_op(q: torch.Tensor, g: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                  q_camids: torch.Tensor, g_camids: torch.Tensor, q_clothes: torch.Tensor, g_clothes: torch.Tensor,
                  junk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared euclidean rank statistics -> first_rank [Q] int64, ap [Q] fp64, inp [Q] fp64, num_matches [Q]
    int64 (zeros for queries without a match); ``junk`` by code (0 none, 1 market, 2 ltcc-cc); label tensors the
    rule does not use may be any int64 dummies."""
    qc, gc, qcl, gcl = _op_labels(q_camids, g_camids, q_clothes, g_clothes, junk)
    r = finish_stats(*rank_stats_triton(q, g, q_pids, g_pids, qc, gc, qcl, gcl, JUNK_NAMES[junk]))
    return r.first_rank, r.ap, r.inp, r.num_matches


@rank_stats_op.register_kernel("cpu")
def _rank_stats_cpu(q, g, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk: int):
    from fastccreid.kernels.rank_stats import rank_stats

    qc, gc, qcl, gcl = _op_labels(q_camids, g_camids, q_clothes, g_clothes, junk)
    r = rank_stats(q, g, "sqeuclidean", q_pids=q_pids, g_pids=g_pids, q_camids=qc, g_camids=gc, q_clothes=qcl,
                   g_clothes=gcl, junk=JUNK_NAMES[junk], backend="torch")
    return r.first_rank, r.ap, r.inp, r.num_matches


@rank_stats_op.register_fake
def _rank_stats_fake(q, g, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk: int):
    # shape-only kernel for tracing: the launchers cannot run on fake tensors under TRITON_INTERPRET=1
    n = q.shape[0]
    return (q.new_empty(n, dtype=torch.int64), q.new_empty(n, dtype=torch.float64),
            q.new_empty(n, dtype=torch.float64), q.new_empty(n, dtype=torch.int64))
