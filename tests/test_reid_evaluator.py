"""ReIDEvaluator (one process and 2 / 3 gloo processes, equal in fp64), the ltcc-sc protocol against a per-query
oracle, Simple-CCReID's SC mode through it, and the ROC figures against a dense numpy computation."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers.dist import init_env, spawn

from fastccreid.compat.simple_ccreid import evaluate_with_clothes
from fastccreid.metrics import ReIDEvaluator, evaluate


def sc_oracle(dm, qp, gp, qc, gc, qcl, gcl):
    """CAL's same-clothes rule, per query: good = same pid, other camera, same clothes; junk = same pid and (same
    camera or other clothes); stable sort; (first rank, AP, INP) per valid query."""
    out = []
    for i in range(dm.shape[0]):
        order = np.argsort(dm[i], kind="stable")
        same = gp[order] == qp[i]
        junk = same & ((gc[order] == qc[i]) | (gcl[order] != qcl[i]))
        hit = same[~junk]
        if not hit.any():
            continue
        pos = np.nonzero(hit)[0]
        out.append((pos[0] + 1, np.mean((np.arange(len(pos)) + 1) / (pos + 1)), len(pos) / (pos[-1] + 1)))
    return out


def _case(seed, nq=25, ng=60, ties=False):
    rng = np.random.default_rng(seed)
    dm = rng.integers(0, 4, (nq, ng)).astype(np.float64) if ties else rng.random((nq, ng))
    return (dm, rng.integers(0, 6, nq), rng.integers(0, 6, ng), rng.integers(0, 3, nq), rng.integers(0, 3, ng),
            rng.integers(0, 2, nq), rng.integers(0, 2, ng))


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_ltcc_sc_matches_oracle(seed, ties):
    dm, qp, gp, qc, gc, qcl, gcl = _case(seed, ties=ties)
    qp[0] = 50  # absent from the gallery
    ref = sc_oracle(dm, qp, gp, qc, gc, qcl, gcl)
    res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                   protocol="ltcc-sc", max_rank=dm.shape[1])
    assert res.num_valid_queries == len(ref)
    assert abs(res.mAP - np.mean([r[1] for r in ref])) < 1e-12
    assert abs(res.mINP - np.mean([r[2] for r in ref])) < 1e-12
    first = np.array([r[0] for r in ref])
    np.testing.assert_allclose(res.cmc, [(first <= k).mean() for k in range(1, dm.shape[1] + 1)], atol=1e-12)
    cmc, mAP = evaluate_with_clothes(dm, qp, gp, qc, gc, qcl, gcl, mode="SC")
    np.testing.assert_allclose(cmc, res.cmc, atol=0)
    assert mAP == res.mAP
    # features through the same rule (the torch rank path)
    rng = np.random.default_rng(seed)
    qf, gf = rng.normal(size=(25, 5)), rng.normal(size=(60, 5))
    r2 = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                  protocol="ltcc-sc", normalize=False)
    d2 = ((qf[:, None, :] - gf[None]) ** 2).sum(-1)
    assert abs(r2.mAP - np.mean([r[1] for r in sc_oracle(d2, qp, gp, qc, gc, qcl, gcl)])) < 1e-9
    with pytest.raises(ValueError, match="protocol 'ltcc-sc' needs q_clothes and g_clothes"):
        evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, protocol="ltcc-sc")


def dense_roc(dm, qp, gp, qc, gc, qcl, gcl, protocol, fprs):
    """Every non-junk pair sorted; TPR at the loosest threshold accepting at most floor(f * #neg) negatives."""
    same = qp[:, None] == gp[None, :]
    if protocol == "market":
        junk = same & (qc[:, None] == gc[None, :])
    elif protocol == "ltcc-sc":
        junk = same & ((qc[:, None] == gc[None, :]) | (qcl[:, None] != gcl[None, :]))
    else:
        junk = np.zeros_like(same)
    pos = np.sort(dm[same & ~junk])
    neg = np.sort(dm[~same])
    out = {}
    for f in fprs:
        k = int(np.floor(f * len(neg)))
        best = 0.0
        for t in np.concatenate([pos, neg]):  # threshold "accept d <= t"
            if (neg <= t).sum() <= k:
                best = max(best, (pos <= t).sum() / len(pos))
        out[f] = best
    return out


@pytest.mark.parametrize("protocol,ties", [("market", False), ("market", True), ("ltcc-sc", True), ("prcc", False)])
def test_roc_matches_dense(protocol, ties):
    dm, qp, gp, qc, gc, qcl, gcl = _case(3, nq=40, ng=80, ties=ties)
    res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                   protocol=protocol, roc=True, chunk_size=7)
    ref = dense_roc(dm, qp, gp, qc, gc, qcl, gcl, protocol, (1e-4, 1e-3, 1e-2))
    assert res.roc == pytest.approx(ref, abs=1e-12)
    assert set(res.as_dict()["roc"]) == {"TPR@FPR=1e-04", "TPR@FPR=1e-03", "TPR@FPR=1e-02"}
    assert "TPR@FPR=1e-02" in res.table()


def test_roc_features_matches_dense_and_loose_fpr():
    from fastccreid.evaluation.roc import roc_tpr
    from fastccreid.kernels.checks import check_labels

    rng = np.random.default_rng(4)
    qf, gf = rng.normal(size=(30, 6)), rng.normal(size=(70, 6))
    qp, gp, qc, gc = rng.integers(0, 4, 30), rng.integers(0, 4, 70), rng.integers(0, 2, 30), rng.integers(0, 2, 70)
    res = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, roc=True)
    qn = qf / (np.linalg.norm(qf, axis=1, keepdims=True) + 1e-12)
    gn = gf / (np.linalg.norm(gf, axis=1, keepdims=True) + 1e-12)
    d = ((qn[:, None] - gn[None]) ** 2).sum(-1)
    assert res.roc == pytest.approx(dense_roc(d, qp, gp, qc, gc, None, None, "market", (1e-4, 1e-3, 1e-2)),
                                    abs=1e-12)
    lab = {k: check_labels(v, k, len(v)) for k, v in (("qp", qp), ("gp", gp), ("qc", qc), ("gc", gc))}
    got = roc_tpr(torch.from_numpy(d), None, None, qcl=None, gcl=None, junk="market", fprs=(0.1, 0.3), **lab)
    assert got == pytest.approx(dense_roc(d, qp, gp, qc, gc, None, None, "market", (0.1, 0.3)), abs=1e-12)


def _items(seed=5, n=89, d=8):
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d))
    f[10] = f[40]  # exact feature ties
    return (f, rng.integers(0, 7, n), rng.integers(0, 3, n), rng.integers(0, 2, n), rng.random(n) < 0.3)


def _summary(res):
    return dict(cmc=res.cmc, mAP=res.mAP, mINP=res.mINP, n=res.num_valid_queries, roc=res.roc)


def test_evaluator_one_process_equals_evaluate():
    f, p, c, cl, isq = _items()
    ev = ReIDEvaluator(max_rank=20)
    for s in range(0, 89, 13):
        sl = slice(s, s + 13)
        ev.update(torch.from_numpy(f[sl]), p[sl], c[sl], cl[sl], is_query=isq[sl])
    assert len(ev) == 89
    for proto in ("market", "ltcc-sc", "ltcc-cc"):
        got = ev.compute(proto, roc=True)
        ref = evaluate(qf=f[isq], gf=f[~isq], q_pids=p[isq], g_pids=p[~isq], q_camids=c[isq], g_camids=c[~isq],
                       q_clothes=cl[isq], g_clothes=cl[~isq], protocol=proto, max_rank=20, roc=True)
        assert _summary(got)["mAP"] == ref.mAP and got.roc == ref.roc
        np.testing.assert_array_equal(got.cmc, ref.cmc)
    ev.reset()
    with pytest.raises(ValueError, match="before any update"):
        ev.compute()


def test_evaluator_bad_input():
    ev = ReIDEvaluator()
    f, p, c, cl, _ = _items()
    with pytest.raises(ValueError, match="pids must be 1-D with one entry per item"):
        ev.update(f[:5], p[:4], c[:5], is_query=True)
    with pytest.raises(TypeError, match="is_query must be a bool or a bool array"):
        ev.update(f[:5], p[:5], c[:5], is_query=np.ones(4, bool))
    ev.update(f[:5], p[:5], c[:5], is_query=True)
    with pytest.raises(ValueError, match="features have 3 columns but earlier batches had 8"):
        ev.update(f[:5, :3], p[:5], c[:5], is_query=False)
    with pytest.raises(ValueError, match="clothes must be given on every update or on none"):
        ev.update(f[5:9], p[5:9], c[5:9], cl[5:9], is_query=False)
    with pytest.raises(ValueError, match="no gallery item"):
        ev.compute()
    g = f[5:20].copy()
    g[2, 1] = np.nan
    ev.update(g, p[5:20], c[5:20], is_query=False)
    with pytest.raises(ValueError, match="NaN"):
        ev.compute()


def _ddp_worker(rank, world, store, out):
    init_env(rank, world, store)
    from fastccreid.engine.distributed import cleanup, setup

    setup(use_cpu=True)
    try:
        f, p, c, cl, isq = _items()
        n = len(p)
        res = {}
        # contiguous shards in rank order, batches of 11 (one rank may hold no query)
        lo, hi = n * rank // world, n * (rank + 1) // world
        ev = ReIDEvaluator(max_rank=30, process_group=True)
        for s in range(lo, hi, 11):
            sl = slice(s, min(hi, s + 11))
            ev.update(torch.from_numpy(f[sl]), p[sl], c[sl], cl[sl], is_query=isq[sl])
        res["contiguous"] = {pr: _summary(ev.compute(pr, roc=True)) for pr in ("market", "ltcc-sc")}
        # DistributedSampler-style interleaving with padding (89 items: 1 repeated for 2 and 3 ranks): the index
        # restores the dataset order and drops the repeat
        idx = np.arange(rank, n + (-n) % world, world) % n
        ev2 = ReIDEvaluator(max_rank=30, process_group=True)
        for s in range(0, len(idx), 9):
            j = idx[s : s + 9]
            ev2.update(f[j], p[j], c[j], cl[j], is_query=isq[j], index=j)
        res["interleaved"] = _summary(ev2.compute("market", roc=True))
        # TransReID's R1_mAP_eval over the same contiguous shards: num_query counts the queries of all ranks
        from fastccreid.compat.strong_baseline import R1_mAP_eval

        sb = R1_mAP_eval(30, return_distmat=False, process_group=True)
        for s in range(lo, hi, 11):
            sl = slice(s, min(hi, s + 11))
            sb.update((torch.from_numpy(f[sl]), p[sl], c[sl]))
        res["strong_baseline"] = sb.compute()[:2]
        torch.save(res, os.path.join(out, f"rank{rank}.pt"))
    finally:
        cleanup()


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])  # each ~20 s on 2 loaded cores
def test_evaluator_ddp_equals_one_process(world, tmp_path):
    spawn(_ddp_worker, world, (world, str(tmp_path), str(tmp_path)), timeout=240.0)
    f, p, c, cl, isq = _items()
    ev = ReIDEvaluator(max_rank=30)
    ev.update(f, p, c, cl, is_query=isq)
    one = {pr: _summary(ev.compute(pr, roc=True)) for pr in ("market", "ltcc-sc")}
    from fastccreid.compat.strong_baseline import R1_mAP_eval

    m = R1_mAP_eval(30, return_distmat=False)
    m.update((torch.from_numpy(f), p, c))
    sb_one = m.compute()[:2]
    for r in range(world):
        got = torch.load(os.path.join(tmp_path, f"rank{r}.pt"), weights_only=False)
        for key, ref in [(("contiguous", "market"), one["market"]), (("contiguous", "ltcc-sc"), one["ltcc-sc"]),
                         (("interleaved",), one["market"])]:
            g = got[key[0]] if len(key) == 1 else got[key[0]][key[1]]
            np.testing.assert_allclose(g["cmc"], ref["cmc"], rtol=0, atol=1e-12)
            assert abs(g["mAP"] - ref["mAP"]) <= 1e-12 and abs(g["mINP"] - ref["mINP"]) <= 1e-12
            assert g["n"] == ref["n"] and g["roc"] == ref["roc"]
        np.testing.assert_allclose(got["strong_baseline"][0], sb_one[0], rtol=0, atol=1e-6)
        assert abs(got["strong_baseline"][1] - sb_one[1]) <= 1e-12
