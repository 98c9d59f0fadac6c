"""The compiled CPU kernels (kernels/csrc/*.c, one shared library built by setup.py as an optional extension),
loaded with ctypes: no Python or torch headers, so the build needs only a C compiler, and without one the package
installs and takes the torch paths. ``FASTCCREID_NO_NATIVE=1`` hides the library (the torch paths, e.g. to compare).

ctypes releases the GIL during a foreign call, so ``run_parts`` runs one call per thread on disjoint parts.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
# name -> (argument types, result type): the C signatures (kernels/csrc/rerank_cpu.c, rank_place_cpu.c)
SIGNATURES = {
    "scan_block": ([_P, _I, _I, _I, _I, _I, _I, _P, _P, _P, _P, _P, _P, _P], None),
    "jaccard_rows": ([_I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _F, _F, _P, _P], None),
    "place_rows": ([_I, _I, _I, _P, _P, _I, _P, _P, _P, _I, _P, _I, _I, _P], ctypes.c_int64),
}

_LIB: ctypes.CDLL | None = None
_TRIED = False
_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_SIZE = 0


def library_path() -> Path | None:
    """The built shared library next to this module, or None (not built)."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = here / f"_cpu_kernels{suffix}"
        if p.exists():
            return p
    return None


def library() -> ctypes.CDLL | None:
    """The loaded library with its signatures set, or None where it is not built."""
    global _LIB, _TRIED
    if not _TRIED:
        _TRIED = True
        path = library_path()
        if path is not None:
            lib = ctypes.CDLL(str(path))
            for name, (args, res) in SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            _LIB = lib
    return _LIB


def available() -> bool:
    """Whether the compiled kernels can be used (built, and ``FASTCCREID_NO_NATIVE`` unset or 0)."""
    return os.environ.get("FASTCCREID_NO_NATIVE", "0") in ("", "0") and library() is not None


def required() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise RuntimeError("the compiled CPU kernels are not built (pip install -e . builds them; needs a C compiler)")
    return lib


def run_parts(fn, parts: list[tuple]) -> list:
    """[fn(*args) for args in parts], on as many threads as there are parts (the GIL is released in the calls)."""
    global _POOL, _POOL_PID, _POOL_SIZE
    if len(parts) == 1:
        return [fn(*parts[0])]
    # a new pool in a forked child (the parent's worker threads do not exist there, yet the pool counts them as idle
    # and would never run a task) and when more threads are asked for
    if _POOL is None or _POOL_PID != os.getpid() or _POOL_SIZE < len(parts):
        _POOL = ThreadPoolExecutor(max_workers=len(parts), thread_name_prefix="fastccreid-cpu")
        _POOL_PID, _POOL_SIZE = os.getpid(), len(parts)
    return [f.result() for f in [_POOL.submit(fn, *a) for a in parts]]


def check_cpu(t: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    """ValueError naming ``name`` unless t is a contiguous CPU tensor of ``dtype`` (what the C code indexes)."""
    if t.device.type != "cpu" or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous CPU {dtype} tensor, got {t.dtype} on {t.device} "
                         f"(contiguous={t.is_contiguous()})")
