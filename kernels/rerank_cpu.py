"""CPU kernels of the k-reciprocal re-ranking (``kernels/csrc/rerank_cpu.c``; library: ``_cpu_library``).

``fastccreid.rerank`` uses them on CPU tensors (``build_reranker(..., backend=)``): one pass over each block of the
N x N neighbour search instead of torch's five, and the Jaccard sums of a query chunk row by row. Both compute the
torch path's numbers bit for bit (tests/test_rerank_native.py). ``threads`` calls run at once on disjoint parts
(columns of a block; rows of a chunk), as many as torch's intra-op threads.
"""

from __future__ import annotations

import torch

from fastccreid.kernels._cpu_library import available, check_cpu, library_path, required, run_parts

_ptr = torch.Tensor.data_ptr

__all__ = ["available", "jaccard_rows", "library_path", "scan_block"]


def scan_block(d: torch.Tensor, s: int, kq: int, cval: torch.Tensor, cidx: torch.Tensor, cthr: torch.Tensor,
               cmax: torch.Tensor, threads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the block d [R, W] (rows and columns s.., row stride d.stride(0); finite values).

    Updates in place, for the columns j >= s + R (their transposed candidates among rows s..s+R-1): the running
    lists cval / cidx [N, kq] (sorted by (distance, index)), their last values cthr [N] and maxima cmax [N].
    Returns the rows' own candidates over the block: (values [R, T * kq], indices [R, T * kq], maxima [R]), per row
    the T threads' lists (one per column range, each sorted by (distance, index), padded with (inf, -1)) side by side
    for an exact merge, and the row maxima."""
    lib = required()
    r, w = d.shape
    if d.stride(1) != 1:
        raise ValueError("scan_block: the block's rows must be contiguous")
    for t, dt, name in ((cval, torch.float32, "cval"), (cidx, torch.int64, "cidx"), (cthr, torch.float32, "cthr"),
                        (cmax, torch.float32, "cmax")):
        check_cpu(t, dt, name)
    t_n = max(1, min(threads, w // 256 or 1))
    rv = torch.full((t_n, r, kq), float("inf"), dtype=torch.float32)
    ri = torch.full((t_n, r, kq), -1, dtype=torch.int64)
    rm = torch.full((t_n, r), float("-inf"), dtype=torch.float32)
    edges = [w * t // t_n for t in range(t_n + 1)]
    parts = [(_ptr(d), r, d.stride(0), edges[t], edges[t + 1], s, kq, _ptr(rv[t]), _ptr(ri[t]), _ptr(rm[t]),
              _ptr(cval), _ptr(cidx), _ptr(cthr), _ptr(cmax)) for t in range(t_n)]
    run_parts(lib.scan_block, parts)
    return rv.permute(1, 0, 2).reshape(r, t_n * kq), ri.permute(1, 0, 2).reshape(r, t_n * kq), rm.amax(0)


def jaccard_rows(out: torch.Tensor, ent_ptr: torch.Tensor, ent_col: torch.Tensor, ent_val: torch.Tensor,
                 g_ptr: torch.Tensor, g_row: torch.Tensor, g_val: torch.Tensor, scale: torch.Tensor, lam: float,
                 threads: int) -> torch.Tensor:
    """out [C, G] (the chunk's original distances on entry) becomes its re-ranked distances, in place: per row i
    the Jaccard sums over its V entries ent_col / ent_val [ent_ptr[i] : ent_ptr[i+1]] (in the order they are to be
    added) against the gallery lists by column (g_ptr [N+1], g_row [M] int32, g_val [M]), scale [C] its rows'
    scale. Returns out."""
    lib = required()
    for t, dt, name in ((out, torch.float32, "out"), (ent_ptr, torch.int64, "ent_ptr"),
                        (ent_col, torch.int64, "ent_col"), (ent_val, torch.float32, "ent_val"),
                        (g_ptr, torch.int64, "g_ptr"), (g_row, torch.int32, "g_row"), (g_val, torch.float32, "g_val"),
                        (scale, torch.float32, "scale")):
        check_cpu(t, dt, name)
    c, g = out.shape
    t_n = max(1, min(threads, c))
    scratch = torch.empty(t_n, g, dtype=torch.float32)
    edges = [c * t // t_n for t in range(t_n + 1)]
    # (float32 scalars as torch's in-place mul_ by a Python float rounds them: lam, and 1 - lam computed in double)
    shared = (_ptr(ent_ptr), _ptr(ent_col), _ptr(ent_val), _ptr(g_ptr), _ptr(g_row), _ptr(g_val), _ptr(scale),
              float(lam), float(1 - lam), _ptr(out))
    parts = [(edges[t], edges[t + 1], g, *shared, _ptr(scratch[t])) for t in range(t_n)]
    run_parts(lib.jaccard_rows, parts)
    return out
