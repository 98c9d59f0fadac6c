"""The oracle for fastccreid.rerank: the seed's dense k-reciprocal re-ranking with its Jaccard term in float32 (shares
no code with fastccreid.rerank)."""

from __future__ import annotations

import numpy as np
import torch


def dense_rerank_fp32_jaccard(q: torch.Tensor, g: torch.Tensor, k1: int, k2: int, lam: float) -> np.ndarray:
    """The seed's dense algorithm (column-max normalisation, k-reciprocal sets and their expansion, float16 V, the
    float16 mean over the k2 nearest) with the Jaccard sums and distance in float32 instead of float16."""
    nq = q.shape[0]
    feat = torch.cat([q, g])
    n = feat.shape[0]
    sq = feat.pow(2).sum(1, keepdim=True)
    dist = (sq.expand(n, n) + sq.expand(n, n).t()).addmm(feat, feat.t(), beta=1, alpha=-2).numpy()
    dist = np.transpose(dist / np.max(dist, axis=0))
    v = np.zeros_like(dist).astype(np.float16)
    rank = np.argsort(dist, kind="stable").astype(np.int32)
    half = int(np.around(k1 / 2)) + 1
    for i in range(n):
        fwd = rank[i, : k1 + 1]
        rec = fwd[np.where(rank[fwd, : k1 + 1] == i)[0]]
        expansion = rec
        for c in rec:
            cf = rank[c, :half]
            crec = cf[np.where(rank[cf, :half] == c)[0]]
            if len(np.intersect1d(crec, rec)) > 2 / 3 * len(crec):
                expansion = np.append(expansion, crec)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        v[i, expansion] = w / np.sum(w)
    if k2 != 1:
        v = np.stack([np.mean(v[rank[i, :k2], :], axis=0) for i in range(n)])
    vf = v.astype(np.float32)
    m = np.stack([np.minimum(vf[i][None, :], vf[nq:]).sum(1) for i in range(nq)])
    jac = 1 - m / (2 - m)
    return (jac * (1 - lam) + dist[:nq, nq:] * lam).astype(np.float32)
