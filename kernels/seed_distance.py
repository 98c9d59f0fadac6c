"""The seed's distance forms, shared by the evaluation driver, ``topk_ranking`` and the Triton launchers.

The seed normalises features by ``x / (||x||_2 + 1e-12)`` and computes squared euclidean distances as
``|q|^2 + |g|^2 - 2 q.g`` (addmm, beta=1, alpha=-2) in fp32. Everything here reproduces those bits: row blocks
and gallery tiles are chosen so that the BLAS takes the one-shot product's code path. Imports only torch.
"""

from __future__ import annotations

from typing import Protocol

import torch

from fastccreid.kernels.checks import require_finite

# Bytes of [C, G] work buffers allowed per query chunk (distances, positions, masks); bounds peak memory.
CHUNK_BYTES = 96 * 2**20
MM_TILE = 1024  # gallery rows per matmul tile: 8 MB at D = 2048, reused from cache by every query row


class Scratch(Protocol):
    """Reusable scratch buffers (``fastccreid.evaluation.workspace.Workspace``): an uninitialised [shape] view of
    buffer ``name``."""

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor: ...


def scratch(ws: Scratch | None, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
    """Buffer ``name`` of ``ws``, or a fresh tensor without a workspace."""
    return ws.get(name, shape, dtype) if ws is not None else torch.empty(shape, dtype=dtype, device=device)


def chunk_rows(ng: int) -> int:
    """Query rows per chunk against ``ng`` gallery columns within ``CHUNK_BYTES`` (1 to 4096)."""
    per_row = max(ng, 1) * 24  # distance + int64 positions + gathered values, per query row
    return int(max(1, min(4096, CHUNK_BYTES // per_row)))


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 inputs are computed in fp64; everything else (fp32, bf16, fp16) in fp32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sq_norms(x: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
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


def seed_sqeuclidean(q: torch.Tensor, g: torch.Tensor, gg: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's ``|q|^2 + |g|^2 - 2 q.g`` (addmm with beta=1, alpha=-2), in the inputs' dtype: [C, G].

    ``gg`` [G] (``sq_norms(g)``) can be passed so a chunked caller computes it once."""
    qq = sq_norms(q)[:, None]
    gg = (sq_norms(g) if gg is None else gg)[:, None]
    base = qq.expand(q.shape[0], g.shape[0]) + gg.expand(g.shape[0], q.shape[0]).t()
    return base.addmm_(q, g.t(), beta=1, alpha=-2)


def from_sqeuclidean(d: torch.Tensor, metric: str) -> torch.Tensor:
    """Squared distances [C, G] (ours to modify) as ``metric``: euclidean is the seed's clamp(1e-12).sqrt()."""
    return d.clamp_(min=1e-12).sqrt_() if metric == "euclidean" else d


def lowp_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in low precision with an fp32 result: fp32 accumulation and output on CUDA (``out_dtype``); on CPU
    torch's bf16/fp16 matmul rounds its output to the input dtype, so the opt-in low precision is coarser there."""
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    return torch.mm(a, b).float()


def chunk_distance(q: torch.Tensor, g: torch.Tensor, metric: str, gg: torch.Tensor | None = None,
                   lowp: torch.dtype | None = None) -> torch.Tensor:
    """Distances [C, G] by ``metric``; ``gg`` caches the gallery term (squared norms, or unit rows for cosine).

    ``lowp`` (bf16 / fp16, squared euclidean only): the dot products in that precision (approximate, opt-in)."""
    if lowp is not None:
        qq = sq_norms(q.float())[:, None]
        dot = lowp_mm(q.to(lowp), g.to(lowp).t())
        return (qq + (sq_norms(g.float()) if gg is None else gg)[None, :]).sub_(dot.mul_(2))
    if metric in ("sqeuclidean", "euclidean"):
        return from_sqeuclidean(seed_sqeuclidean(q, g, gg), metric)
    qn = q / q.norm(dim=1, keepdim=True).clamp(min=1e-12)
    gn = g / g.norm(dim=1, keepdim=True).clamp(min=1e-12) if gg is None else gg
    return torch.addmm(torch.ones((), dtype=q.dtype, device=q.device), qn, gn.t(), beta=1, alpha=-1)


def gallery_cache(g: torch.Tensor, metric: str) -> torch.Tensor | None:
    """What ``chunk_distance`` reuses across query chunks for this gallery: [G] squared norms or [G, D] unit rows."""
    if metric in ("sqeuclidean", "euclidean"):
        return sq_norms(g)
    if metric == "cosine":
        return g / g.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return None


class RowView:
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
    dt = work_dtype(x)
    out = torch.empty(x.shape, dtype=dt, device=x.device) if out is None else out
    sq = torch.empty(x.shape[0], dtype=dt, device=x.device) if with_sq_norms else None
    for s in range(0, x.shape[0], rows):
        b = x[s : s + rows].to(dt)
        o = out[s : s + rows]
        torch.div(b, torch.norm(b, 2, dim=-1, keepdim=True) + 1e-12, out=o)
        if sq is not None:
            torch.sum(o.pow(2), 1, out=sq[s : s + rows])
    return (out, sq) if with_sq_norms else out


def seed_sqeuclidean_tiled(q: torch.Tensor, g, *, normalize: bool, gg: torch.Tensor | None = None,
                           tile: int = MM_TILE, ws: Scratch | None = None,
                           check_finite: bool = False) -> torch.Tensor:
    """``seed_sqeuclidean(q, seed_normalize(g) if normalize else g)`` [C, G], bit-identical, tile by tile of
    gallery rows into one [C, G] buffer. Each tile is normalised into one reused [tile, D] buffer: a fresh
    normalised [G, D] copy costs more in first-touch page faults than the normalising itself, and a cached tile
    multiplies faster than one [C, D] x [D, G] call (README, Performance). ``g`` rows may be a ``RowView``;
    ``gg`` [G] caches the squared norms. With a workspace the result is its buffer "dist" (valid until that
    buffer is asked for again). ``check_finite`` (with ``normalize``): ValueError when a gallery row holds NaN or
    Inf, seen as a non-finite squared norm of its normalised row (a finite row whose norm overflows normalises to
    0, as the seed's)."""
    c, ng = q.shape[0], g.shape[0]
    dt = q.dtype
    qq = sq_norms(q)
    out = scratch(ws, "dist", (c, ng), dt, q.device)
    # Equal tiles of at least ``tile`` rows: the BLAS takes other code paths for very narrow products (seen here:
    # fewer than 64 columns), whose sums are rounded differently; wide ones give the one-shot product's bits.
    step = -(-ng // max(1, ng // tile))
    copy = normalize or g.dtype != dt or isinstance(g, RowView)
    buf = scratch(ws, "gallery_tile", (min(step, ng), g.shape[1]), dt, q.device) if copy else None
    sq_tmp = scratch(ws, "squares", (min(128, ng), g.shape[1]), dt, q.device) if gg is None else None
    for t0 in range(0, ng, step):
        t1 = min(ng, t0 + step)
        if buf is None:
            b = g[t0:t1]
        elif normalize:
            b = seed_normalize(g[t0:t1], out=buf[: t1 - t0])
        else:
            b = buf[: t1 - t0].copy_(g[t0:t1])
        gt = sq_norms(b, sq_tmp) if gg is None else gg[t0:t1]
        if check_finite:
            require_finite(gt)
        o = out[:, t0:t1]
        torch.add(qq[:, None].expand(c, t1 - t0), gt[None, :].expand(c, t1 - t0), out=o)
        o.addmm_(q, b.t(), beta=1, alpha=-2)
    return out


__all__ = [
    "CHUNK_BYTES",
    "MM_TILE",
    "RowView",
    "Scratch",
    "chunk_distance",
    "chunk_rows",
    "from_sqeuclidean",
    "gallery_cache",
    "lowp_mm",
    "scratch",
    "seed_normalize",
    "seed_sqeuclidean",
    "seed_sqeuclidean_tiled",
    "sq_norms",
    "work_dtype",
]
