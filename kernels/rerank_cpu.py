"""CPU kernels of the k-reciprocal re-ranking (``kernels/csrc/rerank_cpu.c``), called through ctypes.

``fastccreid.rerank`` uses them on CPU tensors (``build_reranker(..., backend=)``): one pass over each block of the
N x N neighbour search instead of torch's five, and the Jaccard sums of a query chunk row by row. Both compute the
torch path's numbers bit for bit (tests/test_rerank_native.py). The library is built by ``pip install`` (setup.py,
an optional extension: without a C compiler the package installs and re-ranks on the torch path).

Threads: ctypes releases the GIL during a foreign call, so ``threads`` calls run at once on disjoint parts (columns
of a block; rows of a chunk), as many as torch's intra-op threads.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_LIB: ctypes.CDLL | None = None
_TRIED = False
_POOL: ThreadPoolExecutor | None = None

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float


def library_path() -> Path | None:
    """The built shared library next to this module, or None (not built)."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = here / f"_rerank_cpu{suffix}"
        if p.exists():
            return p
    return None


def _lib() -> ctypes.CDLL | None:
    global _LIB, _TRIED
    if not _TRIED:
        _TRIED = True
        path = library_path()
        if path is not None:
            lib = ctypes.CDLL(str(path))
            lib.scan_block.argtypes = [_P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P]
            lib.scan_block.restype = None
            lib.jaccard_rows.argtypes = [_I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _F, _F, _P, _P]
            lib.jaccard_rows.restype = None
            _LIB = lib
    return _LIB


def available() -> bool:
    """Whether the compiled kernels are there (``FASTCCREID_NO_NATIVE=1`` hides them: the torch path)."""
    return os.environ.get("FASTCCREID_NO_NATIVE", "0") in ("", "0") and _lib() is not None


def _run(fn, parts: list[tuple]) -> None:
    """fn(*args) for every args in parts, on as many threads as there are parts (GIL released in the calls)."""
    global _POOL
    if len(parts) == 1:
        fn(*parts[0])
        return
    if _POOL is None or _POOL._max_workers < len(parts):
        _POOL = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="fastccreid-rerank")
    for f in [_POOL.submit(fn, *a) for a in parts]:
        f.result()


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _check(t: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device} "
                         f"(contiguous={t.is_contiguous()})")


def scan_block(d: torch.Tensor, s: int, kq: int, cval: torch.Tensor, cidx: torch.Tensor, cthr: torch.Tensor,
               cmax: torch.Tensor, threads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over the block d [R, W] (rows and columns s.., row stride d.stride(0); finite values).

    Updates in place, for the columns j >= s + R (their transposed candidates among rows s..s+R-1): the running
    lists cval / cidx [N, kq] (sorted by (distance, index)), their last values cthr [N] and maxima cmax [N].
    Returns the rows' own candidates over the block: (values [T, R, kq], indices [T, R, kq], maxima [T, R]), one
    list per thread's column range, each sorted by (distance, index) and padded with (inf, -1); merge them."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("the re-ranking CPU kernels are not built (pip install -e . builds them)")
    r, w = d.shape
    if d.stride(1) != 1:
        raise ValueError("scan_block: the block's rows must be contiguous")
    for t, dt, name in ((cval, torch.float32, "cval"), (cidx, torch.int64, "cidx"), (cthr, torch.float32, "cthr"),
                        (cmax, torch.float32, "cmax")):
        _check(t, dt, name)
    t_n = max(1, min(threads, w // 256 or 1))
    rv = torch.full((t_n, r, kq), float("inf"), dtype=torch.float32)
    ri = torch.full((t_n, r, kq), -1, dtype=torch.int64)
    rm = torch.full((t_n, r), float("-inf"), dtype=torch.float32)
    edges = [w * t // t_n for t in range(t_n + 1)]
    parts = [(_ptr(d), r, d.stride(0), edges[t], edges[t + 1], s, kq, _ptr(rv[t]), _ptr(ri[t]), _ptr(rm[t]),
              _ptr(cval), _ptr(cidx), _ptr(cthr), _ptr(cmax)) for t in range(t_n)]
    _run(lib.scan_block, parts)
    return rv, ri, rm


def jaccard_rows(out: torch.Tensor, ent_ptr: torch.Tensor, ent_col: torch.Tensor, ent_val: torch.Tensor,
                 g_ptr: torch.Tensor, g_row: torch.Tensor, g_val: torch.Tensor, scale: torch.Tensor, lam: float,
                 threads: int) -> torch.Tensor:
    """out [C, G] (the chunk's original distances on entry) becomes its re-ranked distances, in place: per row i
    the Jaccard sums over its V entries ent_col / ent_val [ent_ptr[i] : ent_ptr[i+1]] (in the order they are to be
    added) against the gallery lists by column (g_ptr [N+1], g_row [M] int32, g_val [M]), scale [C] its rows'
    scale. Returns out."""
    lib = _lib()
    if lib is None:
        raise RuntimeError("the re-ranking CPU kernels are not built (pip install -e . builds them)")
    for t, dt, name in ((out, torch.float32, "out"), (ent_ptr, torch.int64, "ent_ptr"),
                        (ent_col, torch.int64, "ent_col"), (ent_val, torch.float32, "ent_val"),
                        (g_ptr, torch.int64, "g_ptr"), (g_row, torch.int32, "g_row"), (g_val, torch.float32, "g_val"),
                        (scale, torch.float32, "scale")):
        _check(t, dt, name)
    c, g = out.shape
    t_n = max(1, min(threads, c))
    scratch = torch.empty(t_n, g, dtype=torch.float32)
    edges = [c * t // t_n for t in range(t_n + 1)]
    # (float32 scalars as torch's in-place mul_ by a Python float rounds them: lam, and 1 - lam computed in double)
    parts = [(edges[t], edges[t + 1], g, _ptr(ent_ptr), _ptr(ent_col), _ptr(ent_val), _ptr(g_ptr), _ptr(g_row),
              _ptr(g_val), _ptr(scale), float(lam), float(1 - lam), _ptr(out), _ptr(scratch[t])) for t in range(t_n)]
    _run(lib.jaccard_rows, parts)
    return out
