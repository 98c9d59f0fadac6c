"""Exact ROC figures (TPR at fixed FPR, as fast-reid reports them) without holding Q×G distances.

Pairs: every (query, gallery item) pair that the protocol does not call junk. Positives are the true matches
(same pid, not junk), negatives the other pids. For a target FPR ``f`` over ``N`` negatives the operating point
is the loosest threshold that accepts at most ``k = floor(f·N)`` negatives: a pair is accepted when its distance is
strictly below the (k+1)-th smallest negative distance ``t_f`` (so ties with that negative are rejected, and at
most k negatives pass), and TPR(f) = #(positives < t_f) / #positives. Only the ``max k + 1`` smallest negative
distances are kept (a running top-k over query chunks, about 1 % of the negatives for f = 1e-2) plus every
positive distance (Q·R): memory O(chunk·G + f·Q·G + Q·R), never Q×G.
"""

from __future__ import annotations

import math

import torch

from fastccreid.kernels.rank_stats import PidIndex
from fastccreid.kernels.seed_distance import chunk_distance, chunk_rows

ROC_FPRS = (1e-4, 1e-3, 1e-2)


def roc_tpr(dm: torch.Tensor | None, q: torch.Tensor | None, g: torch.Tensor | None, *, qp, gp, qc, gc, qcl, gcl,
            junk, fprs=ROC_FPRS, chunk_size: int | None = None) -> dict[float, float]:
    """TPR at each FPR in ``fprs`` (module docstring) -> {fpr: tpr}.

    Distances: ``dm`` [Q, G] (smaller is closer), or the squared euclidean of the features ``q`` [Q, D] and
    ``g`` [G, D] as given (normalise them first for the seed's distance). Labels int64 tensors as
    ``rank_stats`` takes them (None where the junk rule does not use them)."""
    for f in fprs:
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"roc FPR targets must be in (0, 1), got {f}")
    nq = dm.shape[0] if dm is not None else q.shape[0]
    ng = dm.shape[1] if dm is not None else g.shape[0]
    index = PidIndex(gp)
    lo, cnt = index.ranges(qp)
    n_neg = int(nq * ng - int(cnt.sum().item()))
    if n_neg == 0:
        raise ValueError("roc=True needs negative pairs (gallery items of another identity than the query)")
    ks = {float(f): math.floor(float(f) * n_neg) for f in fprs}
    keep = min(n_neg, max(ks.values()) + 1)
    dev = dm.device if dm is not None else q.device
    best = torch.empty(0, dtype=torch.float64, device=dev)
    pos = []
    rows = chunk_size or chunk_rows(ng)
    lo_safe = torch.where(cnt > 0, lo, torch.zeros_like(lo))
    for s in range(0, nq, rows):
        e = min(nq, s + rows)
        d = (dm[s:e] if dm is not None else chunk_distance(q[s:e], g, "sqeuclidean")).to(torch.float64)
        d = d.clone() if dm is not None else d  # our own buffer: same-pid entries are overwritten below
        m = index.gather(lo_safe[s:e], cnt[s:e], qc[s:e] if qc is not None else None, gc,
                         qcl[s:e] if qcl is not None else None, gcl, junk)
        rmax = m.idx.shape[1]
        inside = torch.arange(rmax, device=dev)[None, :] < cnt[s:e, None]
        rr = torch.arange(e - s, device=dev)[:, None].expand(m.idx.shape)
        pos.append(d[rr[m.is_match], m.idx[m.is_match]])
        d[rr[inside], m.idx[inside]] = math.inf  # same pid (true matches and junk) leave the negatives
        flat = d.reshape(-1)
        flat = flat[torch.isfinite(flat)]
        cand = torch.cat([best, flat])
        best = torch.topk(cand, min(keep, cand.numel()), largest=False, sorted=False).values
    best = torch.sort(best).values
    pos_d = torch.cat(pos) if pos else torch.empty(0, dtype=torch.float64, device=dev)
    if pos_d.numel() == 0:
        raise ValueError("roc=True needs positive pairs: no query has a true match in the gallery")
    out = {}
    for f, k in ks.items():
        t = best[k] if k < best.numel() else math.inf
        out[f] = float((pos_d < t).sum().item()) / pos_d.numel()
    return out
