"""Triton kernels for ``rank_stats`` (squared euclidean features): the gallery is streamed in tiles, nothing Q×G.

Pass 1 computes each query's same-pid distances with the very tile code pass 2 uses (so ties compare equal bits);
torch sorts those few per query; pass 2 recomputes every tile and places each non-match among the sorted matches:
a loop over the match ranks r up to the tile's own widest match count (not the global one), which counts per row
the non-matches that match r ranks before, so the [Q, R+1] histogram gets one atomic add per (row, rank) and tile
(the difference of consecutive counts) instead of one per element. Imported only when a Triton path runs; on CPU
tensors it needs ``TRITON_INTERPRET=1``.

Registered as the custom op ``fastccreid::rank_stats_sqeuclid`` (``torch.library.triton_op``, not differentiable)
returning (first_rank, ap, inp, num_matches) [Q] each, with the torch ops as its CPU kernel and a shape-only fake.
The host-side preparation (pid grouping, the match layout and its width R: ``kernels.rank_stats.match_layout``)
is made before the op and passed in, so the op body reads nothing back and torch.compile traces it (and the Triton
kernels in it) on fake tensors without a graph break.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from fastccreid.kernels._backend import triton_interpret
from fastccreid.kernels._triton_gram import (
    GRID_YZ_MAX,
    aligned_rows,
    check_grid,
    decompose_on_cuda_only,
    sqeuclid_tile,
    traceable,
)
from fastccreid.kernels.checks import JUNK_CODES
from fastccreid.kernels.rank_stats import Matches, chunk_stats, finish_stats, match_layout, stats_from_hist
from fastccreid.kernels.seed_distance import chunk_rows, seed_sqeuclidean_tiled, sq_norms, work_dtype

__all__ = ["JUNK_CODES", "PLACE_CONFIGS", "rank_stats_launch", "rank_stats_op", "rank_stats_triton", "sqeuclid_tile"]


# Both passes step through the feature dimension BLOCK_K at a time. Pass 1's match distances are compared with
# pass 2's non-match distances, and exact ties must compare equal, so every tile of both passes shares BLOCK_K: the
# IEEE fp32 dot is an FMA chain per output element (acc += a[k] * b[k] in k order), so a distance's bits do not
# depend on the BQ x BG tile around it, only on the K steps.
BLOCK_K = 16
# Same-pid pass: one fixed tile (queries x gallery items; it computes only tiles holding a match).
BLOCK_Q, BLOCK_G = 16, 32
SAME_PID_CONFIG = triton.Config({"BQ": BLOCK_Q, "BG": BLOCK_G, "BK": BLOCK_K}, num_warps=4, num_stages=3)

# Placement pass: autotuned on a GPU among tiles that compile without spills for sm_80 and sm_90 (ptxas -v,
# tests/test_triton_compile.py: 64x64 tiles use 128-180 registers at 8 warps, 128x64 up to 224; 128x128 spills).
PLACE_CONFIGS = [
    triton.Config({"BQ": 64, "BG": 64, "BK": BLOCK_K}, num_warps=8, num_stages=3),
    triton.Config({"BQ": 128, "BG": 64, "BK": BLOCK_K}, num_warps=8, num_stages=3),
    triton.Config({"BQ": 32, "BG": 64, "BK": BLOCK_K}, num_warps=4, num_stages=3),
]
# the interpreter runs every config it is given: one small tile keeps CPU tests fast and still spans several tiles
PLACE_INTERPRET_CONFIG = triton.Config({"BQ": BLOCK_Q, "BG": BLOCK_G, "BK": BLOCK_K}, num_warps=1)


def launch_configs(kernel: str) -> list[triton.Config]:
    """Every config a GPU run can launch ``kernel`` ("same_pid" / "place") with (compiled in
    tests/test_triton_compile.py)."""
    if kernel not in ("same_pid", "place"):
        raise ValueError(f"kernel must be 'same_pid' or 'place', got {kernel!r}")
    return [SAME_PID_CONFIG] if kernel == "same_pid" else list(PLACE_CONFIGS)


def _place_configs() -> list[triton.Config]:
    return [PLACE_INTERPRET_CONFIG] if triton_interpret() else PLACE_CONFIGS


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
            # slot < RP holds for the layout match_layout builds; the mask keeps a narrower one from writing out
            tl.store(out_ptr + offs_q.to(tl.int64)[:, None] * RP + slot[None, :], d, mask=same & (slot < RP)[None, :])


# reset_to_zero: autotuning runs the kernel once per config and benchmark repeat on the same histogram, whose counts
# are atomic adds; Triton zeroes it before each of those runs and once more before the real launch
@triton.autotune(configs=_place_configs(), key=["NQ", "NG", "D", "RP"], reset_to_zero=["hist_ptr"])
@triton.jit
def _place_kernel(q_ptr, g_ptr, qq_ptr, gg_ptr, qp_ptr, gp_ptr, ms_ptr, msi_ptr, nm_ptr, hist_ptr, NQ, NG, D, RP,
                  stride_q, stride_g, BQ: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    # gallery tiles on axis 0 (CUDA allows 2^31 - 1 blocks there); query blocks on axis 1 (at most 65,535: the
    # launcher passes at most PLACE_ROWS queries, each launch its own rows of every per-query array)
    pid_g = tl.program_id(0)
    pid_q = tl.program_id(1)
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
    hrow = offs_q.to(tl.int64) * (RP + 1)
    row = offs_q.to(tl.int64) * RP
    # loop bound: this query block's own widest match count, not the global maximum R
    r_hi = tl.max(nm, axis=0)
    # at_least[i] = live non-matches of row i with at least r matches ranked before them (r = 0: all of them). The
    # matches are sorted by (distance, gallery index), so "match r ranks before x" implies it for every match < r:
    # the non-matches with exactly r matches before them are at_least(r) - at_least(r + 1), one atomic per row
    at_least = tl.sum(live.to(tl.int32), axis=1)
    for r in range(0, r_hi):
        ok = mask_q & (r < nm)
        m = tl.load(ms_ptr + row + r, mask=ok, other=float("inf"))
        mi = tl.load(msi_ptr + row + r, mask=ok, other=0)
        before = (m[:, None] < d) | ((m[:, None] == d) & (mi[:, None] < offs_g[None, :]))
        nxt = tl.sum((before & live & ok[:, None]).to(tl.int32), axis=1)
        tl.atomic_add(hist_ptr + hrow + r, at_least - nxt, mask=mask_q & (at_least > nxt))
        at_least = nxt
    tl.atomic_add(hist_ptr + hrow + r_hi, at_least, mask=mask_q & (at_least > 0))


def same_pid_grid(nq: int, block_q: int) -> tuple[int]:
    """One axis of query blocks (each program streams over the gallery)."""
    return check_grid((triton.cdiv(nq, block_q),), "rank_stats (same-pid pass)")


# queries per placement launch: cdiv(PLACE_ROWS, BQ) <= 65,535 query blocks on grid axis 1 for every tile (BQ >= 16)
PLACE_ROWS = GRID_YZ_MAX * min(c.kwargs["BQ"] for c in (*PLACE_CONFIGS, PLACE_INTERPRET_CONFIG))


def place_chunks(nq: int, rows: int = PLACE_ROWS) -> list[tuple[int, int]]:
    """(start, end) query rows of each placement launch: at most ``rows`` (<= PLACE_ROWS) each."""
    if not 1 <= rows <= PLACE_ROWS:
        raise ValueError(f"rows per placement launch must be in [1, {PLACE_ROWS}], got {rows}")
    return [(s, min(s + rows, nq)) for s in range(0, nq, rows)]


def place_grid(nq: int, ng: int, block_q: int, block_g: int) -> tuple[int, int]:
    """Grid of one placement launch over ``nq`` <= PLACE_ROWS queries: gallery tiles on axis 0, query blocks on 1."""
    return check_grid((triton.cdiv(ng, block_g), triton.cdiv(nq, block_q)), "rank_stats (placement pass)")


def rank_stats_launch(q, g, qp, gp, slot, match_idx, is_match, place_rows: int = PLACE_ROWS):
    """The two passes for q [Q, D], g [G, D] and a ``match_layout`` (slot [G], match_idx / is_match [Q, R]) ->
    (first_rank, ap, inp, nmatch) [Q] each. Reads nothing back to the host (its widths are the layout's shapes), so
    it traces on fake tensors. ``place_rows``: queries per placement launch (tests pass a small one)."""
    nq, ng = q.shape[0], g.shape[0]
    q = aligned_rows(q)
    g = aligned_rows(g)
    d = q.shape[1]
    qq = sq_norms(q.float()).contiguous()
    gg = sq_norms(g.float()).contiguous()
    rp = match_idx.shape[1]
    same_d = torch.full((nq, rp), math.inf, dtype=torch.float32, device=q.device)
    traceable(_same_pid_kernel)[same_pid_grid(nq, BLOCK_Q)](
        q, g, qq, gg, qp, gp, slot, same_d, nq, ng, d, rp, q.stride(0), g.stride(0), BQ=BLOCK_Q, BG=BLOCK_G,
        BK=BLOCK_K, num_warps=SAME_PID_CONFIG.num_warps, num_stages=SAME_PID_CONFIG.num_stages)
    md = same_d.masked_fill(~is_match, math.inf)
    ms, order = torch.sort(md, dim=1, stable=True)
    msidx = match_idx.gather(1, order).contiguous()
    nmatch = is_match.sum(1)
    hist = torch.zeros(nq, rp + 1, dtype=torch.int32, device=q.device)
    ms = ms.contiguous()
    for s, e in place_chunks(nq, place_rows):
        n = e - s
        # each launch gets its own rows of q and of every per-query array (the histogram rows are what autotuning
        # zeroes between its trial runs, so a later launch cannot wipe an earlier one's counts)
        traceable(_place_kernel)[lambda meta, n=n: place_grid(n, ng, meta["BQ"], meta["BG"])](
            q[s:e], g, qq[s:e], gg, qp[s:e], gp, ms[s:e], msidx[s:e], nmatch[s:e], hist[s:e], n, ng, d, rp,
            q.stride(0), g.stride(0))
    return stats_from_hist(hist[:, :rp].to(torch.int64), nmatch)


def rank_stats_triton(q, g, qp, gp, qc, gc, qcl, gcl, junk, place_rows: int = PLACE_ROWS):
    """Triton rank statistics for squared euclidean features -> (first_rank, ap, inp, nmatch) [Q] each: the host
    preparation (``match_layout``, one read-back) then ``rank_stats_launch``."""
    lay = match_layout(qp, gp, qc, gc, qcl, gcl, junk)
    return rank_stats_launch(q, g, qp, gp, lay.slot, lay.idx, lay.is_match, place_rows)


def _rank_stats_body(q: torch.Tensor, g: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, slot: torch.Tensor,
                     match_idx: torch.Tensor, is_match: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared euclidean rank statistics -> first_rank [Q] int64, ap [Q] fp64, inp [Q] fp64, num_matches [Q]
    int64 (zeros for queries without a match). slot [G], match_idx [Q, R] and is_match [Q, R] are
    ``kernels.rank_stats.match_layout`` of the labels (the protocol's junk rule is in is_match)."""
    r = finish_stats(*rank_stats_launch(q, g, q_pids, g_pids, slot, match_idx, is_match))
    return r.first_rank, r.ap, r.inp, r.num_matches


rank_stats_op = triton_op("fastccreid::rank_stats_sqeuclid", mutates_args=())(_rank_stats_body)


@rank_stats_op.register_kernel("cpu")
def _rank_stats_cpu(q, g, q_pids, g_pids, slot, match_idx, is_match):
    # the torch ops on the same layout: the seed's fp32 distances of a query chunk, then its matches sorted and its
    # non-matches placed (kernels.rank_stats.chunk_stats); host reads are fine here (an opaque CPU kernel)
    qf, gf = q.to(work_dtype(q)), g.to(work_dtype(g))
    outs = [(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64),
             torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.int64))]  # Q = 0 gives these
    rows = chunk_rows(g.shape[0])
    for s in range(0, q.shape[0], rows):
        d = seed_sqeuclidean_tiled(qf[s : s + rows], gf, normalize=False)
        outs.append(chunk_stats(d, Matches(idx=match_idx[s : s + rows], is_match=is_match[s : s + rows])))
    r = finish_stats(*(torch.cat(parts) for parts in zip(*outs, strict=True)))
    return r.first_rank, r.ap, r.inp, r.num_matches


@rank_stats_op.register_fake
def _rank_stats_fake(q, g, q_pids, g_pids, slot, match_idx, is_match):
    # shape-only kernel for tracing: the launchers cannot run on fake tensors under TRITON_INTERPRET=1
    n = q.shape[0]
    return (q.new_empty(n, dtype=torch.int64), q.new_empty(n, dtype=torch.float64),
            q.new_empty(n, dtype=torch.float64), q.new_empty(n, dtype=torch.int64))


decompose_on_cuda_only(rank_stats_op, _rank_stats_body)
