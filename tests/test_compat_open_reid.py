"""fastccreid.compat.open_reid against per-query loops written from open-reid's conventions (ranking.py)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

from fastccreid.compat import open_reid as orr


def oracle_cmc(dm, qids, gids, qcams, gcams, topk, separate, sgs, fmb):
    ret = np.zeros(topk)
    nvalid = 0
    for i in range(dm.shape[0]):
        order = np.argsort(dm[i], kind="stable")
        match = gids[order] == qids[i]
        valid = (gids[order] != qids[i]) | (gcams[order] != qcams[i])
        if separate:
            valid &= gcams[order] != qcams[i]
        if not np.any(match & valid):
            continue
        groups = OrderedDict()
        for j in np.nonzero(valid)[0]:
            groups.setdefault(gids[order][j], []).append(j)
        reps = 10 if sgs else 1
        for _ in range(reps):
            if sgs:
                pick = np.zeros(len(valid), dtype=bool)
                for members in groups.values():
                    pick[np.random.choice(members)] = True
                sel = valid & pick
            else:
                sel = valid
            hits = np.nonzero(match[sel])[0]
            for j, k in enumerate(hits):
                if k - j >= topk:
                    break
                if fmb:
                    ret[k - j] += 1
                    break
                ret[k - j] += 1.0 / (len(hits) * reps)
        nvalid += 1
    return ret.cumsum() / nvalid


def oracle_ap(dm, qids, gids, qcams, gcams):
    """sklearn's average precision with tied scores as one threshold: sum over thresholds of recall step x
    precision at the threshold, written as a loop over the distinct distances."""
    aps = []
    for i in range(dm.shape[0]):
        valid = (gids != qids[i]) | (gcams != qcams[i])
        d, y = dm[i][valid], (gids == qids[i])[valid]
        if not y.any():
            continue
        ap = 0.0
        for t in np.unique(d):
            at = d == t
            if y[at].any():
                ap += y[at].sum() / y.sum() * (y[d <= t].sum() / (d <= t).sum())
        aps.append(ap)
    return np.mean(aps)


def _case(seed, nq=15, ng=40, ties=True, distractors=True):
    rng = np.random.default_rng(seed)
    dm = rng.integers(0, 4, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng))
    qp, gp = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    if distractors:
        gp[rng.random(ng) < 0.2] = -1
        qp[1] = 77
    return dm, qp, gp, rng.integers(0, 3, nq), rng.integers(0, 3, ng)


FLAGS = [(s, g, f) for s in (False, True) for g in (False, True) for f in (False, True)]


@pytest.mark.parametrize("separate,sgs,fmb", FLAGS)
@pytest.mark.parametrize("seed,ties,topk", [(0, True, 100), (1, False, 5)])
def test_cmc_every_flag(separate, sgs, fmb, seed, ties, topk):
    dm, qp, gp, qc, gc = _case(seed, ties=ties)
    np.random.seed(123)
    ours = orr.cmc(dm, qp, gp, qc, gc, topk=topk, separate_camera_set=separate, single_gallery_shot=sgs,
                   first_match_break=fmb)
    np.random.seed(123)
    ref = oracle_cmc(dm, qp, gp, qc, gc, topk, separate, sgs, fmb)
    assert ours.dtype == np.float64 and ours.shape == (topk,)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_cmc_defaults_and_single_gallery_item():
    dm = np.array([[0.2, 0.1, 0.3], [0.5, 0.5, 0.1]])
    np.testing.assert_allclose(orr.cmc(dm, topk=3), oracle_cmc(dm, np.arange(2), np.arange(3), np.zeros(2),
                                                                np.ones(3), 3, False, False, False))
    out = orr.cmc(np.array([[0.3]]), [4], [4], [0], [1], topk=5, **orr.MARKET)
    np.testing.assert_array_equal(out, np.ones(5))
    assert orr.mean_ap(np.array([[0.3]]), [4], [4], [0], [1]) == 1.0


@pytest.mark.parametrize("seed,ties", [(0, True), (1, False), (2, True)])
def test_mean_ap_matches_sklearn_convention(seed, ties):
    dm, qp, gp, qc, gc = _case(seed, ties=ties)
    ours = orr.mean_ap(dm, qp, gp, qc, gc)
    assert isinstance(ours, np.float64)
    assert abs(ours - oracle_ap(dm, qp, gp, qc, gc)) < 1e-12


@pytest.mark.parametrize("seed,ties", [(5, True), (6, False), (7, True)])
def test_mean_ap_against_sklearn_when_installed(seed, ties):
    """open-reid's mean_ap is sklearn's average_precision_score per query (scikit-learn is in the dev extra)."""
    metrics = pytest.importorskip("sklearn.metrics")
    dm, qp, gp, qc, gc = _case(seed, ties=ties)
    aps = []
    for i in range(dm.shape[0]):
        valid = (gp != qp[i]) | (gc != qc[i])
        y = (gp == qp[i])[valid]
        if y.any():
            aps.append(metrics.average_precision_score(y, -dm[i][valid]))
    assert abs(orr.mean_ap(dm, qp, gp, qc, gc) - np.mean(aps)) < 1e-12


def test_bad_input():
    dm, qp, gp, qc, gc = _case(0)
    with pytest.raises(ValueError, match=r"gallery_ids must be 1-D with one entry per gallery item \(40\)"):
        orr.cmc(dm, qp, gp[:-1], qc, gc)
    bad = dm.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="distmat contains NaN"):
        orr.mean_ap(bad, qp, gp, qc, gc)
    for flags in (orr.MARKET, orr.CUHK03, orr.ALLSHOTS):  # theirs: RuntimeError("No valid query")
        with pytest.raises(RuntimeError, match="no valid query") as info:
            orr.cmc(dm, qp + 1000, gp, qc, gc, **flags)
        assert isinstance(info.value, ValueError)
    with pytest.raises(RuntimeError, match="no valid query"):
        orr.mean_ap(dm, qp + 1000, gp, qc, gc)
    with pytest.raises(ValueError, match="topk must be a positive int"):
        orr.cmc(dm, qp, gp, qc, gc, topk=0)
