"""fastccreid.compat.strong_baseline against a per-query oracle written from reid-strong-baseline's conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastccreid.compat import strong_baseline as sb


def oracle_eval(dm, qp, gp, qc, gc, max_rank):
    """Stable sort per row, drop same pid + same camera, skip queries without a match; CMC float32 mean, AP mean
    of precision at the matches."""
    cut = min(max_rank, dm.shape[1])
    cmcs, aps = [], []
    for i in range(dm.shape[0]):
        order = np.argsort(dm[i], kind="stable")
        keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        hit = (gp[order] == qp[i])[keep]
        if not hit.any():
            continue
        c = np.zeros(cut, dtype=np.float32)
        c[np.argmax(hit):] = 1
        cmcs.append(c)
        pos = np.nonzero(hit)[0]
        aps.append(np.mean((np.arange(len(pos)) + 1) / (pos + 1)))
    return np.sum(cmcs, 0, dtype=np.float32) / np.float32(len(cmcs)), np.mean(aps)


def _case(seed, nq=12, ng=30, ties=False, distractors=False):
    rng = np.random.default_rng(seed)
    dm = rng.integers(0, 3, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng)).astype(np.float32)
    qp, gp = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    if distractors:
        gp[rng.random(ng) < 0.3] = -1
        qp[0] = 99  # an identity absent from the gallery
    return dm, qp, gp, rng.integers(0, 3, nq), rng.integers(0, 3, ng)


@pytest.mark.parametrize("seed,ties,distractors,max_rank", [(0, False, False, 50), (1, True, False, 5),
                                                             (2, True, True, 50), (3, False, True, 1)])
def test_eval_func_matches_oracle(seed, ties, distractors, max_rank):
    dm, qp, gp, qc, gc = _case(seed, ties=ties, distractors=distractors)
    cmc, mAP = sb.eval_func(dm, qp, gp, qc, gc, max_rank=max_rank)
    ocmc, omap = oracle_eval(dm, qp, gp, qc, gc, max_rank)
    assert cmc.dtype == np.float32 and cmc.shape == (min(max_rank, dm.shape[1]),)
    np.testing.assert_array_equal(cmc, ocmc)
    assert isinstance(mAP, np.float64) and abs(mAP - omap) < 1e-12


def test_eval_func_single_gallery_and_no_valid_query():
    cmc, mAP = sb.eval_func(np.zeros((2, 1), np.float32), [1, 2], [1], [0, 0], [1])
    np.testing.assert_array_equal(cmc, [1.0])
    assert mAP == 1.0
    # theirs: assert num_valid_q > 0; ours a ValueError that is an AssertionError too
    with pytest.raises(AssertionError, match="no query has a true match") as info:
        sb.eval_func(np.zeros((1, 3)), [5], [1, 2, 3], [0], [1, 1, 1])
    assert isinstance(info.value, ValueError)


def _features(seed, n=40, d=6):
    rng = np.random.default_rng(seed)
    f = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
    return f, rng.integers(0, 5, n), rng.integers(0, 3, n)


def _their_distmat(qf, gf):
    """||q||^2 + ||g||^2 - 2 q.g in float64 (an fp64 reference of their addmm form)."""
    q, g = qf.double().numpy(), gf.double().numpy()
    return (q ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None, :] - 2 * q @ g.T


@pytest.mark.parametrize("feat_norm", [True, False])
def test_r1_map_eval_compute(feat_norm):
    f, pids, cams = _features(0)
    nq = 10
    m = sb.R1_mAP_eval(nq, max_rank=50, feat_norm=feat_norm)
    m.reset()
    for s in range(0, 40, 7):
        m.update((f[s : s + 7], list(pids[s : s + 7]), cams[s : s + 7]))
    cmc, mAP, distmat, p, c, qf, gf = m.compute()
    ff = f / f.norm(dim=1, keepdim=True).clamp(min=1e-12) if feat_norm else f
    torch.testing.assert_close(qf, ff[:nq])
    torch.testing.assert_close(gf, ff[nq:])
    assert distmat.dtype == np.float32 and distmat.shape == (nq, 30)
    np.testing.assert_allclose(distmat, _their_distmat(ff[:nq], ff[nq:]), atol=1e-5)
    ocmc, omap = oracle_eval(distmat, pids[:nq], pids[nq:], cams[:nq], cams[nq:], 50)
    np.testing.assert_array_equal(cmc, ocmc)
    assert abs(mAP - omap) < 1e-12
    assert list(p) == list(pids) and list(c) == list(cams)
    # return_distmat=False: no [Q, G] kept, same metrics (features well separated from ties here)
    m2 = sb.R1_mAP_eval(nq, feat_norm=feat_norm, return_distmat=False)
    m2.update((f[:20], pids[:20], cams[:20]))
    m2.update((f[20:], pids[20:], cams[20:]))
    cmc2, mAP2, dm2, *_ = m2.compute()
    assert dm2 is None
    np.testing.assert_array_equal(cmc2, cmc)
    assert abs(mAP2 - mAP) < 1e-9


def test_r1_map_ignite_forms_and_reranking():
    from fastccreid.rerank import re_ranking

    f, pids, cams = _features(1)
    nq = 10
    m = sb.R1_mAP(nq, feat_norm="yes")
    m.update((f, pids, cams))
    cmc, mAP = m.compute()
    fn = torch.nn.functional.normalize(f, dim=1)
    ocmc, omap = oracle_eval(_their_distmat(fn[:nq], fn[nq:]), pids[:nq], pids[nq:], cams[:nq], cams[nq:], 50)
    np.testing.assert_array_equal(cmc, ocmc)
    assert abs(mAP - omap) < 1e-9
    with pytest.raises(ValueError, match="feat_norm must be 'yes' or 'no'"):
        sb.R1_mAP(nq, feat_norm=True)
    for cls, k1, k2 in ((sb.R1_mAP_reranking, 20, 6), (sb.R1_mAP_eval, 50, 15)):
        m = cls(nq, reranking=True) if cls is sb.R1_mAP_eval else cls(nq)
        m.update((f, pids, cams))
        out = m.compute()
        rd = np.asarray(re_ranking(fn[:nq], fn[nq:], k1=k1, k2=k2, lambda_value=0.3))
        ocmc, omap = oracle_eval(rd, pids[:nq], pids[nq:], cams[:nq], cams[nq:], 50)
        np.testing.assert_array_equal(out[0], ocmc)
        assert abs(out[1] - omap) < 1e-12


def test_bad_input_names_the_argument():
    f, pids, cams = _features(2)
    m = sb.R1_mAP_eval(50)
    m.update((f, pids, cams))
    with pytest.raises(ValueError, match=r"num_query \(50\) is larger than the number of features updated \(40\)"):
        m.compute()
    m = sb.R1_mAP_eval(5)
    g = f.clone()
    g[3, 0] = float("nan")
    m.update((g, pids, cams))
    with pytest.raises(ValueError, match="NaN"):
        m.compute()
    m = sb.R1_mAP_eval(5)
    with pytest.raises(ValueError, match=r"pid must be 1-D with one entry per row of feat \(40\), got 39"):
        m.update((f, pids[:-1], cams))
    with pytest.raises(ValueError, match=r"camid must be 1-D with one entry per row of feat \(40\)"):
        m.update((f, pids, cams[:3]))
    with pytest.raises(ValueError, match=r"feat must be 2-D \[B, D\]"):
        m.update((f[0], pids[:1], cams[:1]))
    with pytest.raises(ValueError, match="num_query must be a positive int"):
        sb.R1_mAP_eval(0)
    with pytest.raises(ValueError, match=r"R1_mAP_eval.compute\(\) before any update\(\)"):
        sb.R1_mAP_eval(5).compute()
    with pytest.raises(AssertionError, match="no query has a true match"):  # their assert in eval_func
        m = sb.R1_mAP_eval(5)
        m.update((f, np.arange(40), cams))  # every identity once: no query has a gallery match
        m.compute()


def test_compute_uses_eval_func_default_max_rank():
    """Their compute() calls eval_func(distmat, q_pids, g_pids, q_camids, g_camids) without max_rank: the CMC has
    50 entries whatever max_rank the metric was built with (80 gallery items here)."""
    f, pids, cams = _features(3, n=90)
    nq = 10
    fn = torch.nn.functional.normalize(f, dim=1)
    ocmc, omap = oracle_eval(_their_distmat(fn[:nq], fn[nq:]), pids[:nq], pids[nq:], cams[:nq], cams[nq:], 50)
    for m in (sb.R1_mAP_eval(nq, max_rank=5), sb.R1_mAP_eval(nq, max_rank=5, return_distmat=False),
              sb.R1_mAP(nq, max_rank=5)):
        m.update((f[:45], pids[:45], cams[:45]))
        m.update((f[45:], pids[45:], cams[45:]))
        cmc, mAP = m.compute()[:2]
        assert cmc.dtype == np.float32 and cmc.shape == (50,)
        np.testing.assert_array_equal(cmc, ocmc)
        assert abs(mAP - omap) < 1e-9


def test_feat_norm_by_truth_value_as_theirs():
    """TransReID / CLIP-ReID pass cfg.TEST.FEAT_NORM ('yes' / 'no') and test ``if self.feat_norm``: 'no' is truthy,
    so it normalises (with a warning here); False does not."""
    f, pids, cams = _features(4)
    f = f * torch.linspace(0.5, 3.0, 40)[:, None]  # unequal norms: normalising changes the ranking
    fn = torch.nn.functional.normalize(f, dim=1)
    with pytest.warns(UserWarning, match="normalises the features"):
        m = sb.R1_mAP_eval(10, feat_norm="no")
    m.update((f, pids, cams))
    _, _, dm, *_, qf, gf = m.compute()
    torch.testing.assert_close(qf, fn[:10])
    np.testing.assert_allclose(dm, _their_distmat(fn[:10], fn[10:]), atol=1e-5)
    m = sb.R1_mAP_eval(10, feat_norm=False)
    m.update((f, pids, cams))
    _, _, dm, *_ = m.compute()
    np.testing.assert_allclose(dm, _their_distmat(f[:10], f[10:]), rtol=1e-5, atol=1e-4)
