"""CPU kernel of the rank statistics' placement (``kernels/csrc/rank_place_cpu.c``; library: ``_cpu_library``).

``place_rows`` computes the histogram ``rank_stats.place`` computes (each non-match counted at the number of matches
ranked before it), in one pass per row instead of torch's five: the same integers, so the same AP / CMC / INP bits
(tests/test_rank_place_native.py). Rows are split over ``threads`` calls that run at once.
"""

from __future__ import annotations

import torch

from fastccreid.kernels._cpu_library import available, check_cpu, required, run_parts

__all__ = ["available", "place_rows"]


def place_rows(dist: torch.Tensor, ms: torch.Tensor, msidx: torch.Tensor, nmatch: torch.Tensor, hist: torch.Tensor,
               threads: int, col0: int | torch.Tensor = 0) -> None:
    """Add into hist [C, >= Rmax + 2] (int64) each element of dist [C, T] (float32; matches and junk already +inf)
    at p = the matches of its row ranked before it: ms [C, Rmax] the row's match distances ascending (ties by
    gallery index), msidx [C, Rmax] their gallery indices, nmatch [C] how many. Column j is gallery item col0 + j,
    or col0[j] where col0 is an int64 index map [T] (``rank_stats.place``'s convention).
    ValueError where a distance is NaN (a NaN has no rank)."""
    lib = required()
    for t, dt, name in ((dist, torch.float32, "dist"), (ms, torch.float32, "ms"), (msidx, torch.int64, "msidx"),
                        (nmatch, torch.int64, "nmatch"), (hist, torch.int64, "hist")):
        check_cpu(t, dt, name)
    c, g = dist.shape
    rmax = ms.shape[1]
    if hist.shape[0] != c or hist.shape[1] < rmax + 2 or ms.shape != msidx.shape or ms.shape[0] != c:
        raise ValueError(f"place_rows: shapes disagree: dist {tuple(dist.shape)}, ms {tuple(ms.shape)}, "
                         f"msidx {tuple(msidx.shape)}, hist {tuple(hist.shape)}")
    cmap, off = 0, 0
    if isinstance(col0, torch.Tensor):
        check_cpu(col0, torch.int64, "col0")
        if col0.shape != (g,):
            raise ValueError(f"place_rows: col0 must be [{g}], got {tuple(col0.shape)}")
        cmap = col0.data_ptr()
    else:
        off = int(col0)
    k = int(min(4096, max(256, 64 * rmax)))  # bins per row: few elements share a bin with a match
    t_n = max(1, min(threads, c))
    tables = torch.empty(t_n, k + 3, dtype=torch.int32)
    edges = [c * t // t_n for t in range(t_n + 1)]
    parts = [(edges[t], edges[t + 1], g, dist.data_ptr(), cmap, off, ms.data_ptr(), msidx.data_ptr(),
              nmatch.data_ptr(), rmax, hist.data_ptr(), hist.shape[1], k, tables[t].data_ptr()) for t in range(t_n)]
    nans = sum(run_parts(lib.place_rows, parts))
    if nans:
        raise ValueError(f"the distances hold {nans} NaN value(s): a NaN has no rank (check the features or the "
                         "distance matrix for NaN / inf)")
