"""Re-ranked evaluation streamed by query chunks: ``fastccreid.metrics.evaluate(rerank=True)`` -> here.

``fastccreid.rerank.build_reranker`` keeps the k-reciprocal encodings V of the stacked query + gallery set
(O(N·k1)); each query chunk's re-ranked distances [C, G] go straight to ``rank_stats`` as precomputed distances,
so no Q×G array is ever held (peak O(N·k1 + C·N)). The chunks are those ``fastccreid.rerank.re_ranking`` puts
together, so the result is that of evaluating the dense re-ranked matrix, exactly.
"""

from __future__ import annotations

import dataclasses

import torch

from fastccreid.evaluation.engine import rank_stats
from fastccreid.kernels.rank_stats import RankStats
from fastccreid.rerank import build_reranker


def _rows(t: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    return None if t is None else t[s:e]


def reranked_rank_stats(q: torch.Tensor, g: torch.Tensor, *, k1: int, k2: int, lambda_value: float, q_pids, g_pids,
                        q_camids=None, g_camids=None, q_clothes=None, g_clothes=None, junk: str | None = "market",
                        chunk_size: int | None = None, backend: str = "auto") -> RankStats:
    """Per-query ``RankStats`` [Q] of the k-reciprocal re-ranked distance of query features q [Q, D] against
    gallery features g [G, D] (already normalised as the caller wants; labels as tensors on their device)."""
    rr = build_reranker(q, g, k1, k2, lambda_value)
    parts = []
    for s, e, d in rr.chunks():
        parts.append(rank_stats(d, None, "precomputed", q_pids=q_pids[s:e], g_pids=g_pids,
                                q_camids=_rows(q_camids, s, e), g_camids=g_camids, q_clothes=_rows(q_clothes, s, e),
                                g_clothes=g_clothes, junk=junk, chunk_size=chunk_size, backend=backend))
        del d
    return RankStats(**{f.name: torch.cat([getattr(p, f.name) for p in parts])
                        for f in dataclasses.fields(RankStats)})
