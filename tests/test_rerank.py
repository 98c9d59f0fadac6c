"""k-reciprocal re-ranking on top-k neighbours against a dense transcription of the seed's algorithm (exact, with
the Jaccard term in float32 as ours) and against the seed's reference itself (its float16 Jaccard sums: a bound)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastccreid.metrics import evaluate
from fastccreid.reference.reranking import re_ranking as seed_re_ranking
from fastccreid.rerank import re_ranking

SEED_FP16_BOUND = 4e-3  # the seed's float16 Jaccard sums: a few float16 ulps of values near 1


def _feats(seed, nq=24, ng=90, nid=12, d=32):
    rng = np.random.default_rng(seed)
    cent = rng.standard_normal((nid, d))
    qp, gp = rng.integers(0, nid, nq), rng.integers(0, nid, ng)
    q = cent[qp] + 0.9 * rng.standard_normal((nq, d))
    g = cent[gp] + 0.9 * rng.standard_normal((ng, d))
    q = torch.nn.functional.normalize(torch.tensor(q, dtype=torch.float32), dim=1)
    g = torch.nn.functional.normalize(torch.tensor(g, dtype=torch.float32), dim=1)
    return q, g, qp, gp, rng.integers(0, 3, nq), rng.integers(0, 3, ng)


def _dense_rerank_fp32_jaccard(q: torch.Tensor, g: torch.Tensor, k1: int, k2: int, lam: float) -> np.ndarray:
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


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 20, 6, 0.3), (1, 20, 6, 0.3), (2, 8, 3, 0.5), (3, 20, 1, 0.3)])
def test_matches_dense_transcription_exactly(seed, k1, k2, lam):
    q, g, *_ = _feats(seed)
    ours = re_ranking(q, g, k1=k1, k2=k2, lambda_value=lam)
    want = _dense_rerank_fp32_jaccard(q, g, k1, k2, lam)
    assert ours.shape == want.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_against_the_seeds_reference(seed):
    """The seed's float16 Jaccard sums move re-ranked distances by at most a few 1e-3; the evaluation on top of
    them agrees closely (the orders of near-equal distances can swap)."""
    q, g, qp, gp, qc, gc = _feats(seed)
    ref = seed_re_ranking(q, g, 20, 6, 0.3)
    ours = re_ranking(q, g, k1=20, k2=6, lambda_value=0.3)
    diff = np.abs(ours - ref)
    assert diff.max() <= SEED_FP16_BOUND
    a = evaluate(ref, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    b = evaluate(qf=q, gf=g, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, rerank=True)
    c = evaluate(ours, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert b.mAP == c.mAP and np.array_equal(b.cmc, c.cmc)  # evaluate(rerank=True) is re_ranking + evaluate
    plain = evaluate(qf=q, gf=g, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert abs(a.mAP - b.mAP) < 1e-4 < 1e-2 < abs(plain.mAP - b.mAP)  # far closer to the seed than the effect


def test_distance_input_equals_feature_input():
    q, g, *_ = _feats(2, nq=10, ng=40)

    def sq(a, b):
        return ((a[:, None, :] - b[None]) ** 2).sum(-1).numpy()

    a = re_ranking(q, g, k1=8, k2=3, lambda_value=0.3)
    b = re_ranking(q_g_dist=sq(q, g), q_q_dist=sq(q, q), g_g_dist=sq(g, g), k1=8, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(a, b, atol=2e-3)


def test_bad_arguments():
    q, g, *_ = _feats(3, nq=4, ng=6)
    with pytest.raises(ValueError, match="k1"):
        re_ranking(q, g, k1=0)
    with pytest.raises(ValueError, match="probFea"):
        re_ranking(q)
    with pytest.raises(ValueError, match="needs features"):
        evaluate(np.zeros((4, 6)), q_pids=np.zeros(4, int), g_pids=np.zeros(6, int), protocol="prcc", rerank=True)
