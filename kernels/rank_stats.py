"""Exact per-query rank statistics (first-match rank, AP, INP) without sorting whole gallery rows: the ops.

For one query, let the valid gallery be the gallery minus the protocol's junk, its true matches M (same pid, not
junk) and its non-matches N (other pids: never junk, since every protocol's junk shares the query's pid). Ranking
the valid gallery by distance ascending with ties broken by gallery index (a stable sort), the i-th match (0-based,
in that order) sits at rank ``r_i = i + 1 + c_i`` where ``c_i`` counts the non-matches ranked before it. So only
the R matches are sorted; every non-match is placed among them (``p`` = matches ranked before it) and a histogram of
``p`` gives all ``c_i`` at once. Placing uses a per-row lookup table over bins between the first and the last match
distance (a bin without a match distance gives ``p`` directly; the few elements sharing a bin with one are compared
exactly), or a binary search for narrow tiles.

This module holds the ops (same-pid slots, sorting the matches, placing non-matches, the histogram and the
statistics from it). The streaming driver that chunks queries, tiles and normalises the gallery and chooses the
precision is ``fastccreid.evaluation``; ``rank_stats`` below stays the public entry point and calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastccreid.kernels import rank_place_cpu
from fastccreid.kernels.checks import JUNK_RULES
from fastccreid.kernels.seed_distance import Scratch, gallery_cache, scratch, seed_normalize

METRICS = ("sqeuclidean", "euclidean", "cosine", "precomputed")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RankStats:
    """Per-query results over the valid gallery. Queries without a true match have ``valid`` False.

    first_rank [Q] int64 (1-based rank of the first true match, 0 when none), ap [Q] float64, inp [Q] float64,
    num_matches [Q] int64, valid [Q] bool.
    """

    first_rank: torch.Tensor
    ap: torch.Tensor
    inp: torch.Tensor
    num_matches: torch.Tensor
    valid: torch.Tensor



@dataclass
class Matches:
    """Same-pid gallery entries of a query chunk, padded to Rmax: idx [C, Rmax] (padding repeats a same-pid
    index), is_match [C, Rmax] (same pid, in range and not junk)."""

    idx: torch.Tensor
    is_match: torch.Tensor
    pos: torch.Tensor | None = None  # [C, Rmax] positions in the pid-sorted gallery order (``PidIndex.order``)


class PidIndex:
    """Gallery indices grouped by pid (sorted once), so a query's same-pid entries are a slice, not a Q×G mask."""

    def __init__(self, g_pids: torch.Tensor):
        self.order = torch.sort(g_pids, stable=True).indices  # same pid -> ascending gallery index
        self.sorted_pids = g_pids[self.order]

    def ranges(self, q_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.searchsorted(self.sorted_pids, q_pids, side="left")
        hi = torch.searchsorted(self.sorted_pids, q_pids, side="right")
        return lo, hi - lo

    def gather(self, lo: torch.Tensor, cnt: torch.Tensor, qc, gc, qcl, gcl, junk) -> Matches:
        rmax = int(cnt.max().item()) if cnt.numel() else 0
        rmax = max(rmax, 1)
        ar = torch.arange(rmax, device=lo.device)
        inside = ar[None, :] < cnt[:, None]
        pos = torch.where(inside, lo[:, None] + ar[None, :], lo[:, None])  # padding points at a same-pid entry
        idx = self.order[pos]
        keep = inside
        if junk == "market":
            keep = keep & (gc[idx] != qc[:, None])
        elif junk == "ltcc-cc":
            keep = keep & (gc[idx] != qc[:, None]) & (gcl[idx] != qcl[:, None])
        elif junk == "ltcc-sc":  # CAL's same-clothes setting: same pid with other clothes is junk too
            keep = keep & (gc[idx] != qc[:, None]) & (gcl[idx] == qcl[:, None])
        return Matches(idx=idx, is_match=keep, pos=pos)

    def slots(self) -> torch.Tensor:
        """slot [G] int64: each gallery item's position inside its pid group (groups in ascending gallery index),
        the column of ``gather``'s [C, Rmax] layout that item lands in."""
        ng = self.order.numel()
        start = torch.searchsorted(self.sorted_pids, self.sorted_pids, side="left")
        slot = torch.empty(ng, dtype=torch.int64, device=self.order.device)
        slot[self.order] = torch.arange(ng, device=self.order.device) - start
        return slot


@dataclass
class MatchLayout:
    """Host-side preparation of the fused rank op (``fastccreid::rank_stats_sqeuclid``), made before the op so the
    op body reads nothing back (torch.compile traces it on fake tensors). slot [G] int64 (``PidIndex.slots``),
    idx [Q, R] and is_match [Q, R] (``PidIndex.gather`` for every query; R = the widest same-pid group, >= 1)."""

    slot: torch.Tensor
    idx: torch.Tensor
    is_match: torch.Tensor


def match_layout(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk: str | None) -> MatchLayout:
    """The same-pid layout of every query for the fused op. Reads one value back (R, the widest pid group): the
    only host sync of a fused evaluation, made here, outside the op."""
    index = PidIndex(g_pids)
    lo, cnt = index.ranges(q_pids)
    # a query without any same-pid gallery item may have lo == G: point its (all-padding) row at item 0
    m = index.gather(torch.where(cnt > 0, lo, torch.zeros_like(lo)), cnt, q_camids, g_camids, q_clothes,
                     g_clothes, junk)
    return MatchLayout(slot=index.slots(), idx=m.idx, is_match=m.is_match)



def sorted_matches(md: torch.Tensor, m: Matches):
    """Sort each row's match distances (stable: equal distances keep gallery-index order); junk and padding +inf.

    Returns ms_pad [C, Rmax+1] (an extra +inf column, so every searchsorted position is a valid gather index),
    ms [C, Rmax], msidx [C, Rmax] gallery indices in that order, nmatch [C]."""
    md = md.masked_fill(~m.is_match, math.inf)
    ms, order = torch.sort(md, dim=1, stable=True)
    msidx = m.idx.gather(1, order)
    ms_pad = torch.cat([ms, torch.full((ms.shape[0], 1), math.inf, dtype=ms.dtype, device=ms.device)], 1)
    return ms_pad, ms, msidx, m.is_match.sum(1)


_LUT_BINS = 2048  # bins between a row's first and last match distance for the lookup-table placement
_LUT_MIN_COLS = 2048  # below this many columns a binary search per element is as cheap
_L2_BYTES = 8 << 20  # row blocks of the lookup-table passes (few, large: many small ops stall OpenMP threads)


def _bins(x: torch.Tensor, c2: torch.Tensor, iw: torch.Tensor, k: int) -> torch.Tensor:
    """Bin index floor(clamp(x * iw + c2, 0, k + 4)) of x [C, N] with per-row iw, c2 = 2 - lo * iw [C, 1].

    Any rounding (fused or not) only moves a value by a tiny fraction of a bin, so callers treat the bins next to
    a match distance's bin as undecided too; then comparing bins never depends on how they were rounded."""
    return torch.addcmul(c2, x, iw).clamp_(0.0, float(k + 4)).to(torch.int64)


def _gid_eager(x, c2, iw, table, k: int):
    return table.gather(1, _bins(x, c2, iw, k))


_GID_COMPILED = None


def _gid_fn(use_compile: bool):
    """The per-element lookup (bin, then table); for large problems one fused compiled loop instead of 4 passes."""
    global _GID_COMPILED
    if not use_compile:
        return _gid_eager
    if _GID_COMPILED is None:
        try:
            _GID_COMPILED = torch.compile(_gid_eager, dynamic=True, fullgraph=True)
        except Exception:  # noqa: BLE001 - no compiler available: the eager passes are exact too
            _GID_COMPILED = _gid_eager
    return _GID_COMPILED


def place(dist: torch.Tensor, col0: int | torch.Tensor, ms_pad, ms, msidx, hist: torch.Tensor, nmatch: torch.Tensor,
          use_compile: bool = False, ws: Scratch | None = None, native: bool = False) -> None:
    """Add each non-match of a distance tile [C, T] (same-pid entries already +inf; column j is gallery item
    ``col0 + j``, or ``col0[j]`` when col0 is an index tensor [T]) to
    hist [C, Rmax+2] at p = number of matches ranked before it (ties: the match first iff its index is smaller).

    Wide tiles use a per-row lookup table over bins of [first match, last match]: a bin at least one bin away from
    every match distance gives p directly; the few elements near a match distance are placed by binary search.

    ``native``: the compiled kernel (``rank_place_cpu.place_rows``: the same counts in one pass) where it is built
    and dist is a contiguous CPU float32 tile; it refuses NaN distances with a ValueError."""
    if (native and dist.device.type == "cpu" and dist.dtype == torch.float32 and dist.is_contiguous()
            and rank_place_cpu.available()):
        rank_place_cpu.place_rows(dist, ms.contiguous(), msidx.contiguous(), nmatch, hist, torch.get_num_threads(),
                                  col0)
        return
    c, t = dist.shape
    rmax = ms.shape[1]
    dev = dist.device
    if t < _LUT_MIN_COLS:
        p = torch.searchsorted(ms_pad, dist, side="left")  # [C, T] matches with a strictly smaller distance
        p = _fix_ties(dist, p, ms_pad, ms, msidx, col0)
        hist.scatter_add_(1, p, torch.ones((), dtype=torch.int64, device=dev).expand(p.shape))
        return
    k = int(min(_LUT_BINS, max(256, 64 * rmax)))
    live = torch.arange(rmax, device=dev)[None, :] < nmatch[:, None]
    lo = ms[:, :1]
    hi = ms.gather(1, (nmatch - 1).clamp(min=0)[:, None])
    lo = torch.where(nmatch[:, None] > 0, lo, torch.zeros_like(lo))
    hi = torch.where(nmatch[:, None] > 0, hi, lo)
    # rows whose match range is not finite (a +-inf match distance): finite stand-ins for the bins and every element
    # undecided (the table below is all sentinel there), so placed exactly; else their bins would be NaN
    open_rows = ~torch.isfinite(hi - lo)
    lo = torch.where(open_rows, torch.zeros_like(lo), lo)
    hi = torch.where(open_rows, torch.ones_like(hi), hi)
    width = torch.maximum(hi - lo, torch.maximum(lo.abs(), hi.abs()) * 1e-6).clamp(min=1e-30)
    iw = k / width
    c2 = 2.0 - lo * iw  # bins: lo -> 2, hi -> k + 2; below lo -> 0 or 1, above hi -> k + 3 or k + 4
    tb = _bins(torch.where(live, ms, lo), c2, iw, k)
    tb = torch.where(live, tb, torch.full_like(tb, k + 5))  # padding goes to a dump column
    counts = torch.zeros(c, k + 6, dtype=torch.int32, device=dev).scatter_add_(
        1, tb, torch.ones((), dtype=torch.int32, device=dev).expand(tb.shape))[:, : k + 5]
    below = counts.cumsum(1, dtype=torch.int32) - counts  # matches in strictly lower bins
    near = counts.clone()  # a bin is undecided when it or a neighbour holds a match distance
    near[:, 1:] += counts[:, :-1]
    near[:, :-1] += counts[:, 1:]
    sentinel = c * (rmax + 2)
    row_off = (torch.arange(c, device=dev, dtype=torch.int32) * (rmax + 2))[:, None]
    # int32 table: a decided bin holds its global histogram bin, an undecided one the sentinel
    table = (below + row_off).masked_fill_((near > 0) | open_rows, sentinel)
    rb = max(4, _L2_BYTES // (16 * t))  # row blocks that stay in cache across the passes
    fn = _gid_fn(True) if use_compile else None
    # the eager passes write into three reused block buffers (fresh multi-MB temporaries per block would each pay
    # their first-touch page faults again); each block's table entries are counted and its undecided elements
    # listed while the block is in cache, so no [C, T] index array is ever built
    if fn is None:
        xb = scratch(ws, "bins_f", (min(rb, c), t), dist.dtype, dev)
        ib = scratch(ws, "bins_i", (min(rb, c), t), torch.int64, dev)
        gb = scratch(ws, "gid", (min(rb, c), t), torch.int32, dev)
    flat = torch.zeros(sentinel + 1, dtype=torch.int64, device=dev)
    undecided_q, undecided_g = [], []
    for r0 in range(0, c, rb):
        r1 = min(c, r0 + rb)
        if fn is not None:
            gid = fn(dist[r0:r1], c2[r0:r1], iw[r0:r1], table[r0:r1], k)
        else:
            x, idx, gid = xb[: r1 - r0], ib[: r1 - r0], gb[: r1 - r0]
            torch.addcmul(c2[r0:r1], dist[r0:r1], iw[r0:r1], out=x).clamp_(0.0, float(k + 4))  # as _bins
            torch.gather(table[r0:r1], 1, idx.copy_(x), out=gid)
        counts_b = torch.bincount(gid.view(-1), minlength=sentinel + 1)
        flat += counts_b
        if counts_b[sentinel].item():
            qi, gi = (gid == sentinel).nonzero(as_tuple=True)
            undecided_q.append(qi + r0)
            undecided_g.append(gi)
    hist += flat[:sentinel].view(c, rmax + 2)
    if undecided_q:
        _place_undecided(dist, torch.cat(undecided_q), torch.cat(undecided_g), col0, ms_pad, ms, msidx, hist)


def _place_undecided(dist: torch.Tensor, qi: torch.Tensor, gi: torch.Tensor, col0: int | torch.Tensor, ms_pad,
                     ms, msidx, hist) -> None:
    """Exact placement of the elements (qi, gi) (row-major order) whose bin is next to a match distance's bin
    (a few per cent of a tile).

    They are packed row by row into a [C, max per row] block (+inf padding) and placed by one batched binary search
    against each row's sorted matches, which reads the match rows once instead of once per element."""
    c, rmax = dist.shape[0], ms.shape[1]
    per_row = torch.bincount(qi, minlength=c)
    slot = torch.arange(qi.numel(), device=dist.device) - (per_row.cumsum(0) - per_row)[qi]
    vals = torch.full((c, int(per_row.max().item())), math.inf, dtype=dist.dtype, device=dist.device)
    dv = dist[qi, gi]
    vals[qi, slot] = dv
    p = torch.searchsorted(ms_pad, vals, side="left")[qi, slot]  # matches with a strictly smaller distance
    tie = (ms_pad[qi, p] == dv) & (dv != math.inf)
    if bool(tie.any()):  # the match ranks first iff its gallery index is smaller
        p[tie] += _ties_before(ms, msidx, qi[tie], dv[tie], _col_index(gi[tie], col0))
    hist.view(-1).index_add_(0, qi * (rmax + 2) + p, torch.ones_like(p))


def _fix_ties(dist, p, ms_pad, ms, msidx, col0: int | torch.Tensor) -> torch.Tensor:
    """Ties between a non-match and a match: the match ranks first iff its gallery index is smaller."""
    tie = ms_pad.gather(1, p) == dist
    if bool(tie.any()):
        tie &= dist != math.inf
        qi, gi = tie.nonzero(as_tuple=True)
        dv = dist[qi, gi]
        p[qi, gi] += _ties_before(ms, msidx, qi, dv, _col_index(gi, col0))
    return p


def _ties_before(ms, msidx, rows: torch.Tensor, v: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """Per element (row, value v, gallery index col): the matches of its row at exactly v that rank before it
    (a smaller gallery index: the stable sort's tie rule)."""
    return ((ms[rows] == v[:, None]) & (msidx[rows] < col[:, None])).sum(1)


def _col_index(gi: torch.Tensor, col0: int | torch.Tensor) -> torch.Tensor:
    """Gallery index of tile columns ``gi``: an offset, or a lookup in the tile's index map."""
    return col0[gi] if isinstance(col0, torch.Tensor) else gi + col0


def chunk_stats(dist: torch.Tensor, m: Matches, use_compile: bool = False,
                ws: Scratch | None = None, native: bool = False) -> tuple[torch.Tensor, ...]:
    """Exact stats for a chunk from its distances [C, G] (our own buffer: it is overwritten).

    ``native``: ``place`` by the compiled kernel where it can (see there).
    Returns first_rank [C], ap [C] float64, inp [C] float64, num_matches [C]."""
    ms_pad, ms, msidx, nmatch = sorted_matches(dist.gather(1, m.idx), m)
    # Same-pid entries (matches and junk) leave the non-match pool: +inf sorts after every real match.
    dist.scatter_(1, m.idx, torch.full((), math.inf, dtype=dist.dtype, device=dist.device).expand(m.idx.shape))
    hist = torch.zeros(dist.shape[0], ms.shape[1] + 2, dtype=torch.int64, device=dist.device)
    place(dist, 0, ms_pad, ms, msidx, hist, nmatch, use_compile, ws, native)
    return stats_from_hist(hist[:, : ms.shape[1]], nmatch)


def stats_from_hist(hist: torch.Tensor, nmatch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """From hist [C, Rmax] (non-matches with exactly p matches before them) to first rank, AP, INP, #matches."""
    dev = hist.device
    rmax = hist.shape[1]
    before = hist.cumsum(1)  # c_i: non-matches ranked before match i
    i1 = torch.arange(1, rmax + 1, device=dev, dtype=torch.float64)
    ranks = i1[None, :] + before.to(torch.float64)  # 1-based rank of match i among the valid gallery
    live = torch.arange(rmax, device=dev)[None, :] < nmatch[:, None]
    prec = torch.where(live, i1[None, :] / ranks, torch.zeros((), dtype=torch.float64, device=dev))
    nm = nmatch.to(torch.float64)
    ap = prec.sum(1) / nm
    last = ranks.gather(1, (nmatch - 1).clamp(min=0)[:, None]).squeeze(1)
    inp = nm / last
    first = ranks[:, 0].to(torch.int64)
    return first, ap, inp, nmatch


def finish_stats(first, ap, inp, nmatch) -> RankStats:
    """``RankStats`` from per-query (first_rank, ap, inp, num_matches) [Q]: zeros where a query has no match."""
    valid = nmatch > 0
    zero = torch.zeros((), dtype=torch.float64, device=ap.device)
    return RankStats(
        first_rank=torch.where(valid, first, torch.zeros_like(first)),
        ap=torch.where(valid, ap, zero),
        inp=torch.where(valid, inp, zero),
        num_matches=nmatch,
        valid=valid,
    )


def rank_stats(
    q,
    g=None,
    metric: str = "sqeuclidean",
    *,
    q_pids,
    g_pids,
    q_camids=None,
    g_camids=None,
    q_clothes=None,
    g_clothes=None,
    junk: str | None = "market",
    normalize: bool = False,
    precision: str = "fp32",
    chunk_size: int | None = None,
    tile: int | None = None,
    backend: str = "auto",
) -> RankStats:
    """Exact first-match rank, AP and INP per query, as a stable full sort of each valid gallery row would give.

    ``q`` [Q, D] and ``g`` [G, D] are features, or with ``metric="precomputed"`` ``q`` is a distance matrix
    [Q, G] (numpy or torch) and ``g`` is None. ``junk``: None (whole gallery counts), "market" (drop same pid and
    same camera) or "ltcc-cc" (drop same pid and same camera or same clothes). Feature distances use the seed's
    fp32 formula (``|q|^2 + |g|^2 - 2 q.g`` via addmm); ``normalize`` first divides rows by ``||x|| + 1e-12`` as
    the seed (the gallery tile by tile when a normalised copy would not fit, so bf16 / fp16 galleries stay in their
    dtype). ``precision`` "bf16" / "fp16" computes the dot products in that precision (approximate, opt-in speed).
    Chunked over queries and, past ``tile`` items, over gallery tiles: memory O(chunk·tile + Q·R + G).

    The op's entry point; the streaming work is ``fastccreid.evaluation.rank_stats`` (same arguments, same
    results), imported here on the first call so that importing the kernels never imports the driver.
    """
    from fastccreid.evaluation.engine import rank_stats as streaming_rank_stats

    return streaming_rank_stats(
        q, g, metric, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids, q_clothes=q_clothes,
        g_clothes=g_clothes, junk=junk, normalize=normalize, precision=precision, chunk_size=chunk_size, tile=tile,
        backend=backend,
    )


__all__ = [
    "JUNK_RULES",
    "METRICS",
    "PRECISIONS",
    "MatchLayout",
    "Matches",
    "PidIndex",
    "RankStats",
    "chunk_stats",
    "finish_stats",
    "gallery_cache",
    "match_layout",
    "place",
    "rank_stats",
    "seed_normalize",
    "sorted_matches",
    "stats_from_hist",
]
