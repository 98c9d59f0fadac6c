"""Distance + k smallest per query, streamed over query chunks: (values [Q, k], indices [Q, k]) ascending.

Ties are broken by gallery index (as a stable sort). Optional exclusion by a protocol's junk rule (same pid and same
camera, or same pid and same camera or clothes) so the top-k is over the valid gallery; excluded or missing slots
(fewer than k valid items) come back as +inf with index -1. Memory O(chunk·G), never Q×G.
"""

from __future__ import annotations

import math

import torch

from fastccreid.kernels._backend import kernel_backend
from fastccreid.kernels.checks import JUNK_CODES, check_positive_int, check_rank_inputs
from fastccreid.kernels.seed_distance import chunk_distance, chunk_rows, gallery_cache

TOPK_METRICS = ("sqeuclidean", "euclidean", "cosine", "precomputed")


def _stable_topk(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest per row with ties by column index: select a superset with topk, then a stable sort of it."""
    kk = min(d.shape[1], k)
    vals = torch.topk(d, kk, dim=1, largest=False, sorted=True).values
    kth = vals[:, -1:]
    # every entry <= the k-th value competes (ties at the boundary must be resolved by index, not by topk)
    cand = d <= kth
    if int(cand.sum(1).max().item()) == kk:
        idx = torch.nonzero(cand)[:, 1].view(d.shape[0], kk)
        v = d.gather(1, idx)
        order = torch.sort(v, dim=1, stable=True).indices
        return v.gather(1, order), idx.gather(1, order)
    order = torch.sort(d, dim=1, stable=True)
    return order.values[:, :kk], order.indices[:, :kk]


def topk_ranking(
    q,
    g=None,
    k: int = 50,
    metric: str = "sqeuclidean",
    *,
    q_pids=None,
    g_pids=None,
    q_camids=None,
    g_camids=None,
    q_clothes=None,
    g_clothes=None,
    junk: str | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest gallery items of each query: values [Q, k] fp32 ascending and indices [Q, k] int64.

    ``q`` [Q, D], ``g`` [G, D] features (metric sqeuclidean | euclidean | cosine, the seed's fp32 formulas), or
    ``metric="precomputed"`` with ``q`` a distance matrix [Q, G] and ``g`` None. ``junk`` None | "market" |
    "ltcc-cc" needs the pid / camera (/ clothes) labels and leaves those items out.
    """
    inp = check_rank_inputs(q, g, metric, TOPK_METRICS, junk=junk, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                            g_camids=g_camids, q_clothes=q_clothes, g_clothes=g_clothes, labels_required=False,
                            allow_inf=True, finite_features=True)
    check_positive_int(k, "k")
    dm, q, g, nq, ng, device, labels = inp.dm, inp.q, inp.g, inp.nq, inp.ng, inp.device, inp.labels
    tensors = (dm,) if metric == "precomputed" else (q, g)
    if kernel_backend(backend, *tensors) == "triton" and metric == "sqeuclidean":
        if q.is_cuda:  # the registered op (torch.compile sees through it); on CPU its kernel is the torch path
            from fastccreid.kernels._topk_triton import topk_op

            dummy = torch.zeros(1, dtype=torch.int64, device=device)
            lab = [dummy if t is None else t for t in (labels or (None,) * 6)]
            return topk_op(q, g, k, *lab, JUNK_CODES[junk])
        from fastccreid.kernels._topk_triton import topk_triton

        return topk_triton(q, g, k, labels, junk)
    # precomputed / euclidean / cosine: the chunked torch path, on the tensors' own device, for every backend
    kk = min(k, ng)
    vals = torch.full((nq, k), math.inf, dtype=torch.float32, device=device)
    inds = torch.full((nq, k), -1, dtype=torch.int64, device=device)
    rows = chunk_size or chunk_rows(ng)
    gcache = gallery_cache(g, metric) if metric != "precomputed" else None
    for s in range(0, nq, rows):
        e = min(nq, s + rows)
        d = dm[s:e].to(torch.float32).clone() if metric == "precomputed" else chunk_distance(q[s:e], g, metric, gcache)
        if labels is not None:
            qp, gp, qc, gc, qcl, gcl = labels
            same = gp[None, :] == qp[s:e, None]
            bad = same & (gc[None, :] == qc[s:e, None])
            if junk == "ltcc-cc":
                bad = bad | (same & (gcl[None, :] == qcl[s:e, None]))
            d = d.masked_fill_(bad, math.inf)
        v, i = _stable_topk(d, kk)
        i = torch.where(torch.isinf(v) & (v > 0) if labels is not None else torch.zeros_like(v, dtype=torch.bool),
                        torch.full_like(i, -1), i)
        vals[s:e, :kk] = v
        inds[s:e, :kk] = i
    return vals, inds
