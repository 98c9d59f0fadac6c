"""k-reciprocal re-ranking on top-k neighbours against a dense transcription of the seed's algorithm (exact, with
the Jaccard term in float32 as ours) and against the seed's reference itself (its float16 Jaccard sums: a bound)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.rerank_cases import dense_rerank_fp32_jaccard

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


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 20, 6, 0.3), (1, 20, 6, 0.3), (2, 8, 3, 0.5), (3, 20, 1, 0.3)])
def test_matches_dense_transcription_exactly(seed, k1, k2, lam):
    q, g, *_ = _feats(seed)
    ours = re_ranking(q, g, k1=k1, k2=k2, lambda_value=lam)
    want = dense_rerank_fp32_jaccard(q, g, k1, k2, lam)
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
