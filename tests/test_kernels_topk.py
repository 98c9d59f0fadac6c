"""topk_ranking: k nearest by distance, ties by gallery index, junk excluded; the torch path (the Triton kernel:
tests/triton/test_triton_topk.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.eval_cases import exact_rows, junk_mask, labels_numpy, topk_oracle, torch_labels

from fastccreid.kernels import topk_ranking


def _bad(lab, junk):
    return None if junk is None else junk_mask(*labels_numpy(lab), junk)


@pytest.mark.parametrize("junk", [None, "market", "ltcc-cc"])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_precomputed_with_ties_and_junk(junk, k):
    gen = torch.Generator().manual_seed(k)
    dm = torch.randint(0, 4, (9, 37), generator=gen).float()  # many ties
    lab = torch_labels(gen, 9, 37)
    vals, idx = topk_ranking(dm, None, k, "precomputed", junk=junk, chunk_size=4, **lab)
    ov, oi = topk_oracle(dm.numpy(), k, _bad(lab, junk))
    kk = min(k, 37)
    assert vals.shape == (9, k) and idx.shape == (9, k)
    np.testing.assert_array_equal(idx[:, :kk].numpy(), oi)
    np.testing.assert_array_equal(vals[:, :kk].numpy(), ov.astype(np.float32))
    assert (idx[:, kk:] == -1).all()


def test_features_match_the_seed_distance():
    gen = torch.Generator().manual_seed(0)
    # exact_rows: every distance exact in fp32 (and many exact ties), so the chunked top-k and this one-shot matrix
    # must agree bit for bit whatever shapes the BLAS sees
    q, g = exact_rows(gen, 13, 24), exact_rows(gen, 70, 24)
    g[9] = g[3]
    dm = (q.pow(2).sum(1, keepdim=True) + g.pow(2).sum(1)[None]).addmm_(q, g.t(), beta=1, alpha=-2)
    vals, idx = topk_ranking(q, g, 10)
    ov, oi = topk_oracle(dm.numpy(), 10, None)
    np.testing.assert_array_equal(idx.numpy(), oi)
    np.testing.assert_allclose(vals.numpy(), ov, rtol=0, atol=0)
    ve, ie = topk_ranking(q, g, 10, "euclidean")
    np.testing.assert_array_equal(ie.numpy(), oi)
    np.testing.assert_allclose(ve.numpy() ** 2, vals.clamp(min=1e-12).numpy(), rtol=1e-5)
    _, ic = topk_ranking(q, g, 10, "cosine")
    cos = 1 - torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(g, dim=1).t()
    np.testing.assert_array_equal(ic[:, 0].numpy(), cos.argmin(1).numpy())


def test_bad_inputs():
    q = torch.randn(3, 4)
    with pytest.raises(ValueError, match="metric"):
        topk_ranking(q, q, 2, "manhattan")
    with pytest.raises(ValueError, match="k must"):
        topk_ranking(q, q, 0)
    with pytest.raises(ValueError, match="equal D"):
        topk_ranking(q, torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match="NaN"):
        topk_ranking(torch.full((2, 4), float("nan")), q, 2)
    with pytest.raises(ValueError, match="q_camids"):
        topk_ranking(q, q, 2, junk="market", q_pids=[0, 1, 2], g_pids=[0, 1, 2])
    with pytest.raises(ValueError, match="junk"):
        topk_ranking(q, q, 2, junk="bogus")
