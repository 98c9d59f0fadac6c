"""Re-ranked evaluation streamed by query chunks: ``fastccreid.metrics.evaluate(rerank=True)`` -> here.

``fastccreid.rerank.build_reranker`` keeps the k-reciprocal encodings V of the stacked query + gallery set
(O(N·k1)); each query chunk's re-ranked distances [C, G] go straight to the rank statistics' chunk routine
(``fastccreid.kernels.rank_stats.chunk_stats``, in the chunk's own buffer: what ``rank_stats(d, None, "precomputed")``
computes per query, without its copies), so no Q×G array is ever held (peak O(N·k1 + C·N)). The chunks are those
``fastccreid.rerank.re_ranking`` puts together, so the result is that of evaluating the dense re-ranked matrix,
exactly.

Over N processes (``comm``): the N×N neighbour search is split by row blocks (``build_reranker(comm=)``) and the
query chunks by contiguous runs; each process evaluates its run and the per-query stats are gathered in query
order, so every process returns the one-process stats.
"""

from __future__ import annotations

import dataclasses

import torch

from fastccreid.evaluation.workspace import Workspace
from fastccreid.kernels._backend import rank_stats_backend, torch_ops_requested
from fastccreid.kernels.rank_stats import Matches, PidIndex, RankStats, chunk_stats, finish_stats
from fastccreid.rerank import build_reranker, split_range


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx]


def _empty_stats(device: torch.device) -> RankStats:
    i64, f64 = dict(dtype=torch.int64, device=device), dict(dtype=torch.float64, device=device)
    return RankStats(first_rank=torch.zeros(0, **i64), ap=torch.zeros(0, **f64), inp=torch.zeros(0, **f64),
                     num_matches=torch.zeros(0, **i64), valid=torch.zeros(0, dtype=torch.bool, device=device))


def reranked_rank_stats(q: torch.Tensor, g: torch.Tensor, *, k1: int, k2: int, lambda_value: float, q_pids, g_pids,
                        q_camids=None, g_camids=None, q_clothes=None, g_clothes=None, junk: str | None = "market",
                        chunk_size: int | None = None, backend: str = "auto", comm=None) -> RankStats:
    """Per-query ``RankStats`` [Q] of the k-reciprocal re-ranked distance of query features q [Q, D] against
    gallery features g [G, D] (already normalised as the caller wants; labels as tensors on their device).

    ``comm`` (``fastccreid.evaluation.sharded.Comm``): every process passes the same whole inputs and gets the
    whole result; the work is split over the processes."""
    rank_stats_backend(backend, q)  # (a bad choice fails here; re-ranked chunks never take the Triton path)
    # "torch" keeps every step on torch ops; otherwise the CPU kernels where they apply (same bits either way)
    rr = build_reranker(q, g, k1, k2, lambda_value, comm=comm,
                        backend="torch" if torch_ops_requested(backend) else "auto")
    edges = rr.boundaries()  # a function of V: the same on every process
    nchunks = len(edges) - 1
    a, b = (0, nchunks) if comm is None else split_range(nchunks, comm.rank, comm.world)
    # the rank statistics of each chunk straight from the chunk's own buffer (what rank_stats(d, None,
    # "precomputed") computes, per query the same bits, without its two copies of every [C, G] chunk)
    index = PidIndex(g_pids)
    lo, cnt = index.ranges(q_pids)
    ws = Workspace(q.device)
    parts = []
    for s, e in zip(edges[a:b], edges[a + 1 : b + 1], strict=True):
        d = rr.chunk(s, e)  # [e-s, G], ours: chunk_stats overwrites it
        first = torch.zeros(e - s, dtype=torch.int64, device=q.device)
        ap = torch.zeros(e - s, dtype=torch.float64, device=q.device)
        inp = torch.zeros(e - s, dtype=torch.float64, device=q.device)
        nmatch = torch.zeros(e - s, dtype=torch.int64, device=q.device)
        li = torch.nonzero(cnt[s:e] > 0).squeeze(1)  # only queries with a same-pid gallery item can be valid
        if li.numel():
            qi = li + s
            m = index.gather(lo[qi], cnt[qi], _rows(q_camids, qi), g_camids, _rows(q_clothes, qi), g_clothes, junk)
            dq = d if li.numel() == e - s else d[li]
            step = chunk_size or li.numel()  # (row slices of the chunk: views, no copy)
            for r0 in range(0, li.numel(), step):
                r = slice(r0, r0 + step)
                mr = Matches(idx=m.idx[r], is_match=m.is_match[r])
                first[li[r]], ap[li[r]], inp[li[r]], nmatch[li[r]] = chunk_stats(dq[r], mr, ws=ws,
                                                                                   native=rr.native)
        parts.append(finish_stats(first, ap, inp, nmatch))
        del d
    if not parts:  # (a process with no query chunk: more processes than chunks)
        parts = [_empty_stats(q.device)]
    st = RankStats(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                      for f in dataclasses.fields(RankStats)})
    if comm is None:
        return st
    sizes = [edges[split_range(nchunks, r, comm.world)[1]] - edges[split_range(nchunks, r, comm.world)[0]]
             for r in range(comm.world)]
    return RankStats(**{f.name: comm.gather_rows(getattr(st, f.name), sizes) for f in dataclasses.fields(RankStats)})
