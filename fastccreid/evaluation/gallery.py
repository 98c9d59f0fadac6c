"""The gallery as the evaluation driver streams it: normalised (a copy when it fits, else tile by tile), in low
precision when asked, and past ``TILE`` items served in pid-ordered tiles with their distance blocks."""

from __future__ import annotations

import math

import torch

from fastccreid.kernels.rank_stats import Matches, place, sorted_matches, stats_from_hist
from fastccreid.kernels.seed_distance import (
    RowView,
    Scratch,
    chunk_distance,
    from_sqeuclidean,
    seed_normalize,
    seed_sqeuclidean_tiled,
    sq_norms,
    work_dtype,
)

TILE = 16384  # gallery columns per tile once the gallery is larger than this
NORM_COPY_BYTES = 1536 * 2**20  # keep a normalised fp32 gallery copy up to this size, else normalise per tile


class Gallery:
    """Gallery rows [G, D] served tile by tile in the work dtype (normalised when asked; ``lowp`` keeps a bf16 /
    fp16 copy only), with the per-row squared norms cached for the euclidean metrics.

    ``perm`` [G]: the pid order in which a tiled gallery is served (None or ignored for a single tile)."""

    def __init__(self, g: torch.Tensor, metric: str, normalize: bool, tile: int, lowp: torch.dtype | None = None,
                 perm: torch.Tensor | None = None):
        ng = g.shape[0]
        self.tile = ng if ng <= tile else tile
        self.ntiles = -(-ng // self.tile)
        nbytes = ng * g.shape[1] * 4
        self.gg = None
        # Tiled galleries are served in pid order (``perm``): a pid-sorted query chunk then finds all its same-pid
        # items in a few tiles, whose distances give the match distances with the very bits of the placing pass.
        self.perm = perm if self.ntiles > 1 else None
        if normalize and nbytes <= NORM_COPY_BYTES:
            want = metric in ("sqeuclidean", "euclidean")
            src = g if self.perm is None else RowView(g, self.perm)
            self.g, self.on_the_fly = seed_normalize(src, with_sq_norms=want), False
            if want:
                self.g, self.gg = self.g
            self.permuted = self.perm is not None
        else:
            self.g, self.on_the_fly = g, normalize
            self.permuted = False
        self.dtype = work_dtype(g) if lowp is None else lowp
        if lowp is not None and not self.on_the_fly and self.g.dtype != lowp:
            self.g = self.g.to(lowp)  # the low-precision path keeps only a low-precision copy
        self.convert = self.on_the_fly or self.g.dtype != self.dtype
        # per-row cache over the whole gallery ([G] squared norms): computed once, tile by tile
        if self.gg is None and metric in ("sqeuclidean", "euclidean"):
            self.gg = torch.cat([sq_norms(self.rows(s, min(ng, s + self.tile)).float())
                                 for s in range(0, ng, self.tile)])

    def rows(self, s: int, e: int) -> torch.Tensor:
        """Rows s..e-1 in serving order (pid order for a tiled gallery)."""
        b = self.g[self.perm[s:e]] if self.perm is not None and not self.permuted else self.g[s:e]
        if self.on_the_fly:
            return seed_normalize(b).to(self.dtype)
        return b.to(self.dtype) if self.convert else b

    def cache(self, s: int, e: int):
        """Squared norms [e - s] of rows s..e-1 (None when the metric has no per-row cache)."""
        if self.gg is not None:
            return self.gg[s:e]
        return None


def tiled_chunk_stats(qs: torch.Tensor, gal: Gallery, metric: str, m: Matches,
                      lowp: torch.dtype | None = None, use_compile: bool = False,
                      ws: Scratch | None = None, native: bool = False) -> tuple[torch.Tensor, ...]:
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
            return t0, t1, chunk_distance(qs, rows, metric, gal.cache(t0, t1) if metric != "cosine" else None, lowp)
        # fp32 euclidean: the gallery-tiled matmul into the workspace's buffer (a kept tile gets its own), each
        # sub-tile normalised into a reused buffer when the gallery has no normalised copy
        src = RowView(gal.g, gal.perm[t0:t1]) if gal.perm is not None and not gal.permuted else gal.g[t0:t1]
        d = seed_sqeuclidean_tiled(qs, src, normalize=gal.on_the_fly, gg=gal.cache(t0, t1),
                                   ws=None if keep else ws)
        return t0, t1, from_sqeuclidean(d, metric)

    for ti in match_tiles:
        t0, t1, d = tile_dist(ti, keep=keep_cached)
        inside = (pos >= t0) & (pos < t1)
        md[inside] = d[rows_same[inside], pos[inside] - t0]
        if keep_cached:
            cached[ti] = (t0, t1, d)
    ms_pad, ms, msidx, nmatch = sorted_matches(md, m)
    hist = torch.zeros(c, ms.shape[1] + 2, dtype=torch.int64, device=dev)
    for ti in range(gal.ntiles):
        t0, t1, d = cached.pop(ti) if ti in cached else tile_dist(ti)
        inside = (pos >= t0) & (pos < t1)
        d[rows_same[inside], pos[inside] - t0] = math.inf  # same-pid entries leave the non-match pool
        place(d, gal.perm[t0:t1], ms_pad, ms, msidx, hist, nmatch, use_compile, ws, native)
    return stats_from_hist(hist[:, : ms.shape[1]], nmatch)
