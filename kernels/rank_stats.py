"""Exact per-query rank statistics (first-match rank, AP, INP) without sorting whole gallery rows.

For one query, let the valid gallery be the gallery minus the protocol's junk, its true matches M (same pid, not
junk) and its non-matches N (other pids: never junk, since every protocol's junk shares the query's pid). Ranking
the valid gallery by distance ascending with ties broken by gallery index (a stable sort), the i-th match (0-based,
in that order) sits at rank ``r_i = i + 1 + c_i`` where ``c_i`` counts the non-matches ranked before it. So only
the R matches are sorted; every non-match is placed among them (``p`` = matches ranked before it) and a histogram of
``p`` gives all ``c_i`` at once. Placing uses a per-row lookup table over bins between the first and the last match
distance (a bin without a match distance gives ``p`` directly; the few elements sharing a bin with one are compared
exactly), or a binary search for narrow tiles. Queries go in chunks and, for large galleries, the gallery in tiles:
memory O(chunk·tile + Q·R), never Q×G.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from fastccreid.kernels._backend import resolve_backend

METRICS = ("sqeuclidean", "euclidean", "cosine", "precomputed")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
JUNK_RULES = (None, "market", "ltcc-cc")
# Bytes of [C, G] work buffers allowed per query chunk (distances, positions, masks); bounds peak memory.
_CHUNK_BYTES = 96 * 2**20


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


def _as_long(x, name: str, n: int | None, device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype.kind not in "iub":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.int64, copy=False))
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integers, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if n is not None and t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} entries, expected {n}")
    return t.to(device=device, dtype=torch.int64)


def _as_float(x, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def _check_labels(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk, nq: int, ng: int, device):
    if junk not in JUNK_RULES:
        raise ValueError(f"junk must be one of {JUNK_RULES}, got {junk!r}")
    if q_pids is None or g_pids is None:
        raise ValueError("q_pids and g_pids are required")
    qp = _as_long(q_pids, "q_pids", nq, device)
    gp = _as_long(g_pids, "g_pids", ng, device)
    qc = gc = qcl = gcl = None
    if junk in ("market", "ltcc-cc"):
        if q_camids is None or g_camids is None:
            raise ValueError(f"junk={junk!r} needs q_camids and g_camids")
        qc = _as_long(q_camids, "q_camids", nq, device)
        gc = _as_long(g_camids, "g_camids", ng, device)
    if junk == "ltcc-cc":
        if q_clothes is None or g_clothes is None:
            raise ValueError("junk='ltcc-cc' needs q_clothes and g_clothes")
        qcl = _as_long(q_clothes, "q_clothes", nq, device)
        gcl = _as_long(g_clothes, "g_clothes", ng, device)
    return qp, gp, qc, gc, qcl, gcl


@dataclass
class _Matches:
    """Same-pid gallery entries of a query chunk, padded to Rmax: idx [C, Rmax] (padding repeats a same-pid
    index), is_match [C, Rmax] (same pid, in range and not junk)."""

    idx: torch.Tensor
    is_match: torch.Tensor
    pos: torch.Tensor | None = None  # [C, Rmax] positions in the pid-sorted gallery order (``_PidIndex.order``)


class _PidIndex:
    """Gallery indices grouped by pid (sorted once), so a query's same-pid entries are a slice, not a Q×G mask."""

    def __init__(self, g_pids: torch.Tensor):
        self.order = torch.sort(g_pids, stable=True).indices  # same pid -> ascending gallery index
        self.sorted_pids = g_pids[self.order]

    def ranges(self, q_pids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.searchsorted(self.sorted_pids, q_pids, side="left")
        hi = torch.searchsorted(self.sorted_pids, q_pids, side="right")
        return lo, hi - lo

    def gather(self, lo: torch.Tensor, cnt: torch.Tensor, qc, gc, qcl, gcl, junk) -> _Matches:
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
        return _Matches(idx=idx, is_match=keep, pos=pos)


def _sorted_matches(md: torch.Tensor, m: _Matches):
    """Sort each row's match distances (stable: equal distances keep gallery-index order); junk and padding +inf.

    Returns ms_pad [C, Rmax+1] (an extra +inf column, so every searchsorted position is a valid gather index),
    ms [C, Rmax], msidx [C, Rmax] gallery indices in that order, nmatch [C]."""
    md = md.masked_fill(~m.is_match, math.inf)
    ms, order = torch.sort(md, dim=1, stable=True)
    msidx = m.idx.gather(1, order)
    ms_pad = torch.cat([ms, torch.full((ms.shape[0], 1), math.inf, dtype=ms.dtype, device=ms.device)], 1)
    return ms_pad, ms, msidx, m.is_match.sum(1)


_COMPILE_MIN_PAIRS = 2_000_000_000  # Q×G from which the compiled per-element lookup is used on CPU
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


class _Workspace:
    """Scratch buffers reused across the tiles and query chunks of one ``rank_stats`` call. A fresh multi-MB
    temporary per tile is a new memory mapping whose first touch page-faults again (~0.3 ms per MB on the 2-core
    EPYC, more in other VMs: as much as the arithmetic on it). Transparent huge pages were tried for these buffers
    and were slower here (the kernel compacts memory on the fault)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised [shape] view of buffer ``name``, grown when too small."""
        n = math.prod(shape)
        b = self.bufs.get(name)
        if b is None or b.numel() < n or b.dtype != dtype:
            b = self.bufs[name] = torch.empty(n, dtype=dtype, device=self.device)
        return b[:n].view(shape)


def _scratch(ws: _Workspace | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    return ws.get(name, shape, dtype) if ws is not None else torch.empty(shape, dtype=dtype, device=device)


def _place(dist: torch.Tensor, col0, ms_pad, ms, msidx, hist: torch.Tensor, nmatch: torch.Tensor,
           use_compile: bool = False, ws: _Workspace | None = None) -> None:
    """Add each non-match of a distance tile [C, T] (same-pid entries already +inf; column j is gallery item
    ``col0 + j``, or ``col0[j]`` when col0 is an index tensor [T]) to
    hist [C, Rmax+2] at p = number of matches ranked before it (ties: the match first iff its index is smaller).

    Wide tiles use a per-row lookup table over bins of [first match, last match]: a bin at least one bin away from
    every match distance gives p directly; the few elements near a match distance are placed by binary search."""
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
    table = (below + row_off).masked_fill_(near > 0, sentinel)
    rb = max(4, _L2_BYTES // (16 * t))  # row blocks that stay in cache across the passes
    fn = _gid_fn(True) if use_compile else None
    # the eager passes write into three reused block buffers (fresh multi-MB temporaries per block would each pay
    # their first-touch page faults again); each block's table entries are counted and its undecided elements
    # listed while the block is in cache, so no [C, T] index array is ever built
    if fn is None:
        xb = _scratch(ws, "bins_f", (min(rb, c), t), dist.dtype, dev)
        ib = _scratch(ws, "bins_i", (min(rb, c), t), torch.int64, dev)
        gb = _scratch(ws, "gid", (min(rb, c), t), torch.int32, dev)
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


def _place_undecided(dist: torch.Tensor, qi: torch.Tensor, gi: torch.Tensor, col0, ms_pad, ms, msidx,
                     hist) -> None:
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


def _fix_ties(dist, p, ms_pad, ms, msidx, col0: int) -> torch.Tensor:
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


def _col_index(gi: torch.Tensor, col0) -> torch.Tensor:
    """Gallery index of tile columns ``gi``: an offset, or a lookup in the tile's index map."""
    return col0[gi] if isinstance(col0, torch.Tensor) else gi + col0


def _chunk_stats(dist: torch.Tensor, m: _Matches, use_compile: bool = False,
                 ws: _Workspace | None = None) -> tuple[torch.Tensor, ...]:
    """Exact stats for a chunk from its distances [C, G] (our own buffer: it is overwritten).

    Returns first_rank [C], ap [C] float64, inp [C] float64, num_matches [C]."""
    ms_pad, ms, msidx, nmatch = _sorted_matches(dist.gather(1, m.idx), m)
    # Same-pid entries (matches and junk) leave the non-match pool: +inf sorts after every real match.
    dist.scatter_(1, m.idx, torch.full((), math.inf, dtype=dist.dtype, device=dist.device).expand(m.idx.shape))
    hist = torch.zeros(dist.shape[0], ms.shape[1] + 2, dtype=torch.int64, device=dist.device)
    _place(dist, 0, ms_pad, ms, msidx, hist, nmatch, use_compile, ws)
    return _stats_from_hist(hist[:, : ms.shape[1]], nmatch)


def _stats_from_hist(hist: torch.Tensor, nmatch: torch.Tensor) -> tuple[torch.Tensor, ...]:
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


def _sq_norms(x: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """``x.pow(2).sum(1)`` [N] with that one-shot form's very bits (x*x is what pow(2) computes), built in row blocks
    whose squares go to a small buffer ``tmp`` [rows, D] (reusable across calls) instead of an N×D temporary."""
    if tmp is None:
        tmp = torch.empty((max(1, min(512, x.shape[0])), x.shape[1]), dtype=x.dtype, device=x.device)
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    rows = tmp.shape[0]
    for s in range(0, x.shape[0], rows):
        b = x[s : s + rows]
        torch.sum(torch.mul(b, b, out=tmp[: b.shape[0]]), 1, out=out[s : s + rows])
    return out


def _require_finite(x: torch.Tensor) -> None:
    if not _all_finite(x):
        raise ValueError("features contain NaN or Inf")


def _all_finite(x: torch.Tensor) -> bool:
    """True when x has no NaN/Inf: a cheap row-sum test first, the elementwise test only if a sum overflowed."""
    if bool(torch.isfinite(x.sum(-1)).all()):
        return True
    return bool(torch.isfinite(x).all())


def _seed_sqeuclidean(q: torch.Tensor, g: torch.Tensor, gg: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's ``|q|^2 + |g|^2 - 2 q.g`` (addmm with beta=1, alpha=-2), in the inputs' dtype: [C, G].

    ``gg`` [G] (``_sq_norms(g)``) can be passed so a chunked caller computes it once."""
    qq = _sq_norms(q)[:, None]
    gg = (_sq_norms(g) if gg is None else gg)[:, None]
    base = qq.expand(q.shape[0], g.shape[0]) + gg.expand(g.shape[0], q.shape[0]).t()
    return base.addmm_(q, g.t(), beta=1, alpha=-2)


def _from_sqeuclidean(d: torch.Tensor, metric: str) -> torch.Tensor:
    """Squared distances [C, G] (ours to modify) as ``metric``: euclidean is the seed's clamp(1e-12).sqrt()."""
    return d.clamp_(min=1e-12).sqrt_() if metric == "euclidean" else d


def _chunk_distance(q: torch.Tensor, g: torch.Tensor, metric: str, gg: torch.Tensor | None = None,
                    lowp: torch.dtype | None = None) -> torch.Tensor:
    """Distances [C, G] by ``metric``; ``gg`` caches the gallery term (squared norms, or unit rows for cosine).

    ``lowp`` (bf16 / fp16, squared euclidean only): the dot products in that precision (approximate, opt-in)."""
    if lowp is not None:
        qq = _sq_norms(q.float())[:, None]
        dot = _lowp_mm(q.to(lowp), g.to(lowp).t())
        return (qq + (_sq_norms(g.float()) if gg is None else gg)[None, :]).sub_(dot.mul_(2))
    if metric in ("sqeuclidean", "euclidean"):
        return _from_sqeuclidean(_seed_sqeuclidean(q, g, gg), metric)
    qn = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)
    gn = g / g.norm(dim=1, keepdim=True).clamp(min=1e-12) if gg is None else gg
    return torch.addmm(torch.ones((), dtype=q.dtype, device=q.device), qn, gn.t(), beta=1, alpha=-1)


def _lowp_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in low precision with an fp32 result: fp32 accumulation and output on CUDA (``out_dtype``); on CPU
    torch's bf16/fp16 matmul rounds its output to the input dtype, so the opt-in low precision is coarser there."""
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    return torch.mm(a, b).float()


def gallery_cache(g: torch.Tensor, metric: str) -> torch.Tensor | None:
    """What ``_chunk_distance`` reuses across query chunks for this gallery: [G] squared norms or [G, D] unit rows."""
    if metric in ("sqeuclidean", "euclidean"):
        return _sq_norms(g)
    if metric == "cosine":
        return g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return None


_TILE = 16384  # gallery columns per tile once the gallery is larger than this
_NORM_COPY_BYTES = 1536 * 2**20  # keep a normalised fp32 gallery copy up to this size, else normalise per tile


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 inputs are computed in fp64; everything else (fp32, bf16, fp16) in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _RowView:
    """Rows of x in the order ``perm`` without copying them all: x[perm[s:e]] block by block."""

    def __init__(self, x: torch.Tensor, perm: torch.Tensor):
        self.x, self.perm = x, perm
        self.shape = torch.Size((perm.shape[0], *x.shape[1:]))
        self.dtype, self.device = x.dtype, x.device

    def __getitem__(self, sl: slice) -> torch.Tensor:
        return self.x[self.perm[sl]]


def seed_normalize(x, rows: int = 512, with_sq_norms: bool = False, out: torch.Tensor | None = None):
    """The seed's ``x / (||x||_2 + 1e-12)`` per row in fp32 (fp64 for fp64 input) [N, D], built in row blocks.

    ``with_sq_norms`` also returns ``out.pow(2).sum(1)`` [N] (the seed's squared norms of the normalised rows,
    bit-identical), computed while each block is still in cache. ``out``: a buffer [N, D] to write into."""
    dt = _work_dtype(x)
    out = torch.empty(x.shape, dtype=dt, device=x.device) if out is None else out
    sq = torch.empty(x.shape[0], dtype=dt, device=x.device) if with_sq_norms else None
    for s in range(0, x.shape[0], rows):
        b = x[s : s + rows].to(dt)
        o = out[s : s + rows]
        torch.div(b, torch.norm(b, 2, dim=-1, keepdim=True) + 1e-12, out=o)
        if sq is not None:
            torch.sum(o.pow(2), 1, out=sq[s : s + rows])
    return (out, sq) if with_sq_norms else out


_MM_TILE = 1024  # gallery rows per matmul tile: 8 MB at D = 2048, reused from cache by every query row


def _seed_sqeuclidean_tiled(q: torch.Tensor, g, *, normalize: bool, gg: torch.Tensor | None = None,
                            tile: int = _MM_TILE, ws: _Workspace | None = None,
                            check_finite: bool = False) -> torch.Tensor:
    """``_seed_sqeuclidean(q, seed_normalize(g) if normalize else g)`` [C, G], bit-identical, tile by tile of
    gallery rows into one [C, G] buffer. Each tile is normalised into one reused [tile, D] buffer: a fresh
    normalised [G, D] copy costs more in first-touch page faults than the normalising itself, and a cached tile
    multiplies faster than one [C, D] x [D, G] call (measured at 493 x 7,050 x 2,048 on a 2-core AMD EPYC: 99 ms
    for normalise + distances vs 146 ms). ``g`` rows may be a ``_RowView``; ``gg`` [G] caches the squared norms.
    With a workspace the result is its buffer "dist" (valid until that buffer is asked for again).
    ``check_finite`` (with ``normalize``): ValueError when a gallery row holds NaN or Inf, seen as a non-finite
    squared norm of its normalised row (a finite row whose norm overflows normalises to 0, as the seed's)."""
    c, ng = q.shape[0], g.shape[0]
    dt = q.dtype
    qq = _sq_norms(q)
    out = _scratch(ws, "dist", (c, ng), dt, q.device)
    # Equal tiles of at least ``tile`` rows: the BLAS takes other code paths for very narrow products (seen here:
    # fewer than 64 columns), whose sums are rounded differently; wide ones give the one-shot product's bits.
    step = -(-ng // max(1, ng // tile))
    copy = normalize or g.dtype != dt or isinstance(g, _RowView)
    buf = _scratch(ws, "gallery_tile", (min(step, ng), g.shape[1]), dt, q.device) if copy else None
    sq_tmp = _scratch(ws, "squares", (min(128, ng), g.shape[1]), dt, q.device) if gg is None else None
    for t0 in range(0, ng, step):
        t1 = min(ng, t0 + step)
        if buf is None:
            b = g[t0:t1]
        elif normalize:
            b = seed_normalize(g[t0:t1], out=buf[: t1 - t0])
        else:
            b = buf[: t1 - t0].copy_(g[t0:t1])
        gt = _sq_norms(b, sq_tmp) if gg is None else gg[t0:t1]
        if check_finite:
            _require_finite(gt)
        o = out[:, t0:t1]
        torch.add(qq[:, None].expand(c, t1 - t0), gt[None, :].expand(c, t1 - t0), out=o)
        o.addmm_(q, b.t(), beta=1, alpha=-2)
    return out


class _Gallery:
    """Gallery rows served tile by tile in fp32 (normalised when asked), with the per-tile distance cache."""

    def __init__(self, g: torch.Tensor, metric: str, normalize: bool, tile: int, lowp: torch.dtype | None = None,
                 perm: torch.Tensor | None = None):
        ng = g.shape[0]
        self.tile = ng if ng <= tile else tile
        self.ntiles = -(-ng // self.tile)
        self.metric = metric
        nbytes = ng * g.shape[1] * 4
        self.gg = None
        # Tiled galleries are served in pid order (``perm``): a pid-sorted query chunk then finds all its same-pid
        # items in a few tiles, whose distances give the match distances with the very bits of the placing pass.
        self.perm = perm if self.ntiles > 1 else None
        if normalize and nbytes <= _NORM_COPY_BYTES:
            want = metric in ("sqeuclidean", "euclidean")
            src = g if self.perm is None else _RowView(g, self.perm)
            self.g, self.on_the_fly = seed_normalize(src, with_sq_norms=want), False
            if want:
                self.g, self.gg = self.g
            self.permuted = self.perm is not None
        else:
            self.g, self.on_the_fly = g, normalize
            self.permuted = False
        self.dtype = _work_dtype(g) if lowp is None else lowp
        if lowp is not None and not self.on_the_fly and self.g.dtype != lowp:
            self.g = self.g.to(lowp)  # the low-precision path keeps only a low-precision copy
        self.convert = self.on_the_fly or self.g.dtype != self.dtype
        # per-row cache over the whole gallery ([G] squared norms): computed once, tile by tile
        if self.gg is None and metric in ("sqeuclidean", "euclidean"):
            self.gg = torch.cat([_sq_norms(self.rows(s, min(ng, s + self.tile)).float())
                                 for s in range(0, ng, self.tile)])

    def rows(self, s: int, e: int) -> torch.Tensor:
        """Rows s..e-1 in serving order (pid order for a tiled gallery)."""
        b = self.g[self.perm[s:e]] if self.perm is not None and not self.permuted else self.g[s:e]
        if self.on_the_fly:
            return seed_normalize(b).to(self.dtype)
        return b.to(self.dtype) if self.convert else b

    def cache(self, s: int, e: int):
        if self.gg is not None:
            return self.gg[s:e]
        return None


def _tiled_chunk_stats(qs: torch.Tensor, gal: _Gallery, metric: str, m: _Matches,
                       lowp: torch.dtype | None = None, use_compile: bool = False,
                       ws: _Workspace | None = None) -> tuple[torch.Tensor, ...]:
    """Stats of a pid-sorted query chunk [C, D] against a gallery streamed in pid-ordered tiles; only [C, tile]
    distance blocks are held (plus the few tiles holding the chunk's same-pid items, kept for reuse).

    The tiles holding same-pid items come first: their distances give the match distances (same kernel, same bits
    as every other distance), then every tile's non-matches are placed among the sorted matches."""
    c = qs.shape[0]
    dev = qs.device
    ng = gal.g.shape[0]
    pos = m.pos
    rows_same = torch.arange(c, device=dev)[:, None].expand(pos.shape)
    lo_t = int(pos.min().item()) // gal.tile
    hi_t = int(pos.max().item()) // gal.tile
    match_tiles = list(range(lo_t, hi_t + 1))
    keep_cached = len(match_tiles) <= 4  # else recompute them later rather than hold many [C, tile] blocks
    md = torch.full(pos.shape, math.inf, dtype=torch.float32 if lowp is not None else qs.dtype, device=dev)
    cached = {}
    streamed = lowp is None and metric in ("sqeuclidean", "euclidean") and qs.dtype == torch.float32

    def tile_dist(ti: int, keep: bool = False):
        t0, t1 = ti * gal.tile, min(ng, (ti + 1) * gal.tile)
        if not streamed:
            rows = gal.rows(t0, t1)
            return t0, t1, _chunk_distance(qs, rows, metric, gal.cache(t0, t1) if metric != "cosine" else None, lowp)
        # fp32 euclidean: the gallery-tiled matmul into the workspace's buffer (a kept tile gets its own), each
        # sub-tile normalised into a reused buffer when the gallery has no normalised copy
        src = _RowView(gal.g, gal.perm[t0:t1]) if gal.perm is not None and not gal.permuted else gal.g[t0:t1]
        d = _seed_sqeuclidean_tiled(qs, src, normalize=gal.on_the_fly, gg=gal.cache(t0, t1),
                                    ws=None if keep else ws)
        return t0, t1, _from_sqeuclidean(d, metric)

    for ti in match_tiles:
        t0, t1, d = tile_dist(ti, keep=keep_cached)
        inside = (pos >= t0) & (pos < t1)
        md[inside] = d[rows_same[inside], pos[inside] - t0]
        if keep_cached:
            cached[ti] = (t0, t1, d)
    ms_pad, ms, msidx, nmatch = _sorted_matches(md, m)
    hist = torch.zeros(c, ms.shape[1] + 2, dtype=torch.int64, device=dev)
    for ti in range(gal.ntiles):
        t0, t1, d = cached.pop(ti) if ti in cached else tile_dist(ti)
        inside = (pos >= t0) & (pos < t1)
        d[rows_same[inside], pos[inside] - t0] = math.inf  # same-pid entries leave the non-match pool
        _place(d, gal.perm[t0:t1], ms_pad, ms, msidx, hist, nmatch, use_compile, ws)
    return _stats_from_hist(hist[:, : ms.shape[1]], nmatch)


def _chunk_rows(ng: int, rmax_hint: int = 1) -> int:
    per_row = max(ng, 1) * 24  # distance + int64 positions + gathered values, per query row
    return int(max(1, min(4096, _CHUNK_BYTES // per_row)))


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
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "precomputed":
        if g is not None:
            raise ValueError("with metric='precomputed' pass the distance matrix as q and leave g None")
        dm = _as_float(q, "distmat")
        if dm.dtype in (torch.float16, torch.bfloat16):
            dm = dm.float()  # exact widening; keeps the order, and the lookup-table arithmetic in range
        if dm.dim() != 2:
            raise ValueError(f"distmat must be 2-D [Q, G], got shape {tuple(dm.shape)}")
        nq, ng = dm.shape
        device = dm.device
    else:
        if g is None:
            raise ValueError("g (gallery features) is required unless metric='precomputed'")
        q = _as_float(q, "q")
        g = _as_float(g, "g")
        if q.dim() != 2 or g.dim() != 2:
            raise ValueError(f"q and g must be 2-D [N, D], got {tuple(q.shape)} and {tuple(g.shape)}")
        if q.shape[1] != g.shape[1]:
            raise ValueError(f"q and g feature dims differ: {q.shape[1]} vs {g.shape[1]}")
        if q.device != g.device:
            raise ValueError(f"q and g are on different devices: {q.device} vs {g.device}")
        nq, ng = q.shape[0], g.shape[0]
        device = q.device
    if nq == 0 or ng == 0:
        raise ValueError(f"need at least one query and one gallery item, got {nq} and {ng}")
    qp, gp, qc, gc, qcl, gcl = _check_labels(
        q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, junk, nq, ng, device
    )
    if metric == "precomputed":
        if bool(torch.isnan(dm).any()):
            raise ValueError("distmat contains NaN")
        if bool(torch.isinf(dm).any()):
            raise ValueError("distmat contains +-inf; distances must be finite")
        tensors = (dm,)
    else:
        _require_finite(q)  # the gallery is checked below, in its own pass where it is streamed once
        tensors = (q, g)
    use_triton = resolve_backend(backend, *tensors) == "triton"
    if use_triton and metric == "sqeuclidean":
        _require_finite(g)
        from fastccreid.kernels._rank_stats_triton import rank_stats_triton

        qn, gn = (seed_normalize(q), seed_normalize(g)) if normalize else (q, g)
        if qn.is_cuda:  # the registered op (torch.compile sees through it); on CPU its kernel is the torch path
            from fastccreid.kernels._rank_stats_triton import JUNK_CODES, rank_stats_op

            dummy = torch.zeros(1, dtype=torch.int64, device=device)
            lab = [dummy if t is None else t for t in (qc, gc, qcl, gcl)]
            return _finish(*rank_stats_op(qn, gn, qp, gp, *lab, JUNK_CODES[junk]))
        first, ap, inp, nmatch = rank_stats_triton(qn, gn, qp, gp, qc, gc, qcl, gcl, junk)
        return _finish(first, ap, inp, nmatch)
    # Precomputed distances and the other metrics run the vectorised torch path on the tensors' own device
    # (exact, chunked the same way) also when Triton is chosen.

    index = _PidIndex(gp)
    lo, cnt = index.ranges(qp)
    first = torch.zeros(nq, dtype=torch.int64, device=device)
    ap = torch.zeros(nq, dtype=torch.float64, device=device)
    inp = torch.zeros(nq, dtype=torch.float64, device=device)
    nmatch = torch.zeros(nq, dtype=torch.int64, device=device)
    # Only queries with a same-pid gallery entry can be valid; the others never touch the gallery.
    cand = torch.nonzero(cnt > 0).squeeze(1)
    if metric == "precomputed":
        rows = chunk_size or _chunk_rows(ng)
        for s in range(0, cand.numel(), rows):
            qi = cand[s : s + rows]
            m = index.gather(lo[qi], cnt[qi], qc[qi] if qc is not None else None, gc,
                             qcl[qi] if qcl is not None else None, gcl, junk)
            f, a, i, n = _chunk_stats(dm[qi].clone(), m)  # our own buffer: the chunk routine overwrites it
            first[qi], ap[qi], inp[qi], nmatch[qi] = f, a, i, n
        return _finish(first, ap, inp, nmatch)

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    lowp = PRECISIONS[precision]
    if lowp is not None and metric != "sqeuclidean":
        raise ValueError(f"precision={precision!r} is for metric='sqeuclidean' only")
    tile = tile or _TILE
    ntiles = -(-ng // tile)
    # tiled galleries get bigger query chunks: each chunk re-streams (and maybe re-normalises) the whole gallery
    budget = _CHUNK_BYTES if ntiles == 1 else 3 * _CHUNK_BYTES
    rows = chunk_size or max(1, min(4096, budget // (24 * min(ng, tile))))
    # An untiled gallery's fp32 euclidean distances go through the gallery-tiled matmul; with a single query chunk
    # its tiles are normalised on the way (no normalised gallery copy at all).
    # (fp64 keeps the one-shot product: tiled double products were seen to round differently.)
    streamed = (ntiles == 1 and lowp is None and metric in ("sqeuclidean", "euclidean")
                and _work_dtype(q) == _work_dtype(g) == torch.float32)
    one_pass = streamed and normalize and cand.numel() <= rows
    if not (one_pass and cand.numel() > 0):
        _require_finite(g)  # (a single streamed pass finds NaN / Inf in the normalised tiles' squared norms)
    gal = None if one_pass else _Gallery(g, metric, normalize, tile, lowp, perm=index.order)
    # Very large CPU problems fuse the per-element lookup with torch.compile (a one-off compile of seconds pays off
    # only there); FASTCCREID_COMPILE=0 / 1 forces it off / on.
    env = os.environ.get("FASTCCREID_COMPILE", "").strip()
    use_compile = env == "1" or (env != "0" and device.type == "cpu" and nq * ng >= _COMPILE_MIN_PAIRS)
    qf = seed_normalize(q) if normalize else q.to(_work_dtype(q))
    ws = _Workspace(device)
    if ntiles > 1:
        # process queries in pid order: a chunk's matches then share gallery rows (cheaper match gathers)
        cand = cand[torch.sort(qp[cand], stable=True).indices]
    for s in range(0, cand.numel(), rows):
        qi = cand[s : s + rows]
        m = index.gather(lo[qi], cnt[qi], qc[qi] if qc is not None else None, gc,
                         qcl[qi] if qcl is not None else None, gcl, junk)
        contiguous = qi.numel() == 0 or int(qi[-1] - qi[0]) + 1 == qi.numel()
        qs = qf[int(qi[0]) : int(qi[-1]) + 1] if contiguous and ntiles == 1 else qf[qi]  # a view, no copy
        if ntiles == 1:
            if one_pass:
                d = _seed_sqeuclidean_tiled(qs, g, normalize=True, ws=ws, check_finite=True)
            elif streamed:
                d = _seed_sqeuclidean_tiled(qs, gal.g, normalize=gal.on_the_fly, gg=gal.gg, ws=ws)
            else:
                d = _chunk_distance(qs, gal.rows(0, ng), metric, gal.cache(0, ng), lowp)
            if streamed:
                d = _from_sqeuclidean(d, metric)
            f, a, i, n = _chunk_stats(d, m, use_compile, ws)
        else:
            f, a, i, n = _tiled_chunk_stats(qs, gal, metric, m, lowp, use_compile, ws)
        first[qi], ap[qi], inp[qi], nmatch[qi] = f, a, i, n
    return _finish(first, ap, inp, nmatch)


def _finish(first, ap, inp, nmatch) -> RankStats:
    valid = nmatch > 0
    zero = torch.zeros((), dtype=torch.float64, device=ap.device)
    return RankStats(
        first_rank=torch.where(valid, first, torch.zeros_like(first)),
        ap=torch.where(valid, ap, zero),
        inp=torch.where(valid, inp, zero),
        num_matches=nmatch,
        valid=valid,
    )
