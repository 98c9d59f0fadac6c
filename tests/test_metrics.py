"""fastccreid.metrics.evaluate: parity with the seed's evaluation on every protocol, edge cases, input checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastccreid.metrics import evaluate
from fastccreid.reference import evaluation as ref_eval


def seed_eval_stable(distmat, q_pids, g_pids, q_camids=None, g_camids=None, q_cl=None, g_cl=None,
                     junk="market", max_rank=50):
    """The oracle: ``fastccreid.reference.evaluation`` (the seed's loops; stable sort, short rows padded) for the
    protocol's junk rule -> (cmc, mAP, mINP, number of valid queries)."""
    if junk == "market":
        cmc, mAP, mINP = ref_eval.evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank)
        n = _n_valid(distmat, q_pids, g_pids, q_camids, g_camids, q_cl, g_cl, junk)
    elif junk == "ltcc-cc":
        cmc, mAP, mINP = ref_eval.evaluate_ltcc(distmat, q_pids, g_pids, q_camids, g_camids, q_cl, g_cl,
                                               ltcc_cc_setting=True, max_rank=max_rank)
        n = _n_valid(distmat, q_pids, g_pids, q_camids, g_camids, q_cl, g_cl, junk)
    else:
        cmc, mAP, mINP = ref_eval.evaluate_prcc_all_gallery(distmat, q_pids, g_pids, max_rank=max_rank,
                                                           skip_no_match=True)
        n = _n_valid(distmat, q_pids, g_pids, q_camids, g_camids, q_cl, g_cl, junk)
    return cmc, float(mAP), float(mINP), n


def _n_valid(distmat, q_pids, g_pids, q_camids, g_camids, q_cl, g_cl, junk):
    same = q_pids[:, None] == g_pids[None, :]
    if junk == "market":
        same = same & (q_camids[:, None] != g_camids[None, :])
    elif junk == "ltcc-cc":
        same = same & (q_camids[:, None] != g_camids[None, :]) & (q_cl[:, None] != g_cl[None, :])
    return int(same.any(1).sum())


def _random_case(rng, nq, ng, npid, ncam=3, ncl=3, ties=False):
    qp = rng.integers(0, npid, nq)
    gp = rng.integers(0, npid, ng)
    qc, gc = rng.integers(0, ncam, nq), rng.integers(0, ncam, ng)
    qcl, gcl = rng.integers(0, ncl, nq), rng.integers(0, ncl, ng)
    dm = rng.integers(0, 5, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng)).astype(np.float32)
    return dm, qp, gp, qc, gc, qcl, gcl


PROTO_JUNK = [("market", "market"), ("ltcc-general", "market"), ("celeb", "market"), ("ltcc-cc", "ltcc-cc"),
              ("prcc", None)]


def _check(res, ref, tol=1e-6):
    cmc, mAP, mINP, n = ref
    assert res.num_valid_queries == n
    np.testing.assert_allclose(res.cmc, cmc[: len(res.cmc)], atol=tol, rtol=0)
    assert abs(res.mAP - mAP) < tol
    assert abs(res.mINP - mINP) < tol


@pytest.mark.parametrize("protocol,junk", PROTO_JUNK)
@pytest.mark.parametrize("ties", [False, True])
def test_parity_distmat_all_protocols(protocol, junk, ties):
    rng = np.random.default_rng(hash((protocol, ties)) % 2**32)
    for nq, ng, npid in [(17, 60, 6), (9, 7, 3), (30, 120, 25), (5, 1, 2)]:
        dm, qp, gp, qc, gc, qcl, gcl = _random_case(rng, nq, ng, npid, ties=ties)
        try:
            ref = seed_eval_stable(dm, qp, gp, qc, gc, qcl, gcl, junk=junk)
        except ValueError:
            with pytest.raises(ValueError, match="no query"):
                evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                         protocol=protocol)
            continue
        res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                       protocol=protocol, chunk_size=4)
        _check(res, ref)
        assert len(res.cmc) == min(50, ng)


def test_features_match_reference_get_distmat():
    """From features: same numbers as the reference's get_distmat + evaluate (the seed's fp32 addmm distance)."""
    rng = np.random.default_rng(3)
    qf = torch.from_numpy(rng.standard_normal((40, 96)).astype(np.float32))
    gf = torch.from_numpy(rng.standard_normal((300, 96)).astype(np.float32))
    qp, gp = rng.integers(0, 12, 40), rng.integers(0, 12, 300)
    qc, gc = rng.integers(0, 3, 40), rng.integers(0, 3, 300)
    qcl, gcl = rng.integers(0, 3, 40), rng.integers(0, 3, 300)
    dm = ref_eval.get_distmat(qf, gf)
    for protocol, junk in PROTO_JUNK:
        ref = seed_eval_stable(dm, qp, gp, qc, gc, qcl, gcl, junk=junk, max_rank=20)
        res = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl,
                       g_clothes=gcl, protocol=protocol, max_rank=20, chunk_size=16)
        _check(res, ref)


def test_prcc_seed_counts_no_match_queries_we_skip():
    dm = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float32)
    qp, gp = np.array([1, 9]), np.array([1, 2])
    with np.errstate(invalid="ignore"):
        _, seed_map, _ = ref_eval.evaluate_prcc_all_gallery(dm, qp, gp)
    assert np.isnan(seed_map)  # the seed's unguarded PRCC (SPEC §7)
    res = evaluate(dm, q_pids=qp, g_pids=gp, protocol="prcc")
    assert res.num_valid_queries == 1 and res.mAP == 1.0


def test_low_precision_is_opt_in_and_close():
    rng = np.random.default_rng(8)
    cent = rng.standard_normal((10, 64))
    qp, gp = rng.integers(0, 10, 30), rng.integers(0, 10, 200)
    qf = (cent[qp] + 0.5 * rng.standard_normal((30, 64))).astype(np.float32)
    gf = (cent[gp] + 0.5 * rng.standard_normal((200, 64))).astype(np.float32)
    exact = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, protocol="prcc")
    for precision in ("bf16", "fp16"):
        approx = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, protocol="prcc", precision=precision)
        assert abs(approx.mAP - exact.mAP) < 0.05 and approx.num_valid_queries == exact.num_valid_queries
    with pytest.raises(ValueError, match="precision"):
        evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, protocol="prcc", precision="int8")


def test_short_valid_gallery_cmc_is_one_after_first_match():
    # 3 gallery items, one junk: the valid gallery (2) is shorter than max_rank: the seed's loop would be ragged.
    dm = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]], dtype=np.float32)
    qp, gp = np.array([1, 2]), np.array([1, 2, 1])
    qc, gc = np.array([0, 0]), np.array([0, 1, 1])
    res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert len(res.cmc) == 3
    # query 0: gallery 0 is junk; valid ranking [g1 (non-match), g2 (match)] -> first match at rank 2
    # query 1: valid ranking [g2, g1(match), g0] -> first match at rank 2
    np.testing.assert_allclose(res.cmc, [0.0, 1.0, 1.0])
    assert res.mAP == pytest.approx(0.5)


def test_single_image_gallery_and_no_valid_query_error():
    res = evaluate(np.array([[0.5], [0.1]]), q_pids=[3, 4], g_pids=[3], q_camids=[0, 0], g_camids=[1])
    assert res.num_valid_queries == 1 and res.cmc.tolist() == [1.0] and res.mAP == 1.0
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(np.array([[0.5]]), q_pids=[3], g_pids=[3], q_camids=[0], g_camids=[0])


def test_return_per_query_and_table():
    rng = np.random.default_rng(2)
    dm, qp, gp, qc, gc, *_ = _random_case(rng, 12, 40, 4)
    res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, return_per_query=True, max_rank=10)
    assert res.all_AP.shape == (res.num_valid_queries,) and res.mAP == pytest.approx(res.all_AP.mean())
    assert len(res.cmc) == 10 and "mAP" in res.table()
    d = res.as_dict()
    assert d["rank-1"] == res.cmc[0] and d["rank-20"] == res.cmc[-1]


def test_bad_inputs_raise_clear_errors():
    dm = np.zeros((2, 3))
    with pytest.raises(ValueError, match="protocol"):
        evaluate(dm, q_pids=[0, 1], g_pids=[0, 1, 2], protocol="nope")
    with pytest.raises(ValueError, match="g_pids"):
        evaluate(dm, q_pids=[0, 1], g_pids=[0, 1], q_camids=[0, 0], g_camids=[0, 0, 0])
    with pytest.raises(ValueError, match="q_camids"):
        evaluate(dm, q_pids=[0, 1], g_pids=[0, 1, 2])
    with pytest.raises(ValueError, match="q_clothes"):
        evaluate(dm, q_pids=[0, 1], g_pids=[0, 1, 2], q_camids=[0, 0], g_camids=[1, 1, 1], protocol="ltcc-cc")
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.full((2, 3), np.nan), q_pids=[0, 1], g_pids=[0, 1, 2], protocol="prcc")
    with pytest.raises(ValueError, match="either distmat"):
        evaluate(q_pids=[0], g_pids=[0])
    with pytest.raises(TypeError, match="q_pids"):
        evaluate(dm, q_pids=[0.5, 1.0], g_pids=[0, 1, 2], protocol="prcc")
    with pytest.raises(ValueError, match="NaN or Inf"):
        evaluate(qf=np.array([[np.inf, 0.0]]), gf=np.ones((2, 2)), q_pids=[0], g_pids=[0, 1], protocol="prcc")
    with pytest.raises(ValueError, match="empty"):
        evaluate(np.zeros((0, 3)), q_pids=[], g_pids=[0, 1, 2], protocol="prcc")


def _torchreid_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's eval_cuhk03 loop (np.random.choice per identity), CMC padded as in our fix."""
    from collections import defaultdict

    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc = []
    for q_idx in range(num_q):
        order = indices[q_idx]
        keep = ~((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx]))
        raw = matches[q_idx][keep]
        if not np.any(raw):
            continue
        groups = defaultdict(list)
        for idx, pid in enumerate(g_pids[order][keep]):
            groups[pid].append(idx)
        cmc = np.zeros(max_rank)
        for _ in range(10):
            mask = np.zeros(len(raw), dtype=bool)
            for _, idxs in groups.items():
                mask[np.random.choice(idxs)] = True
            c = raw[mask].cumsum()
            c[c > 1] = 1
            full = np.ones(max_rank)
            full[: min(max_rank, len(c))] = c[:max_rank]
            cmc += full
        all_cmc.append(cmc / 10)
    return np.mean(all_cmc, 0)


def test_cuhk03_single_shot_matches_torchreid_draws():
    rng = np.random.default_rng(4)
    dm, qp, gp, qc, gc, *_ = _random_case(rng, 15, 80, 9)
    np.random.seed(123)
    ref = _torchreid_cuhk03(dm, qp, gp, qc, gc, 50)
    np.random.seed(123)
    res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, protocol="cuhk03", cuhk03_seed=None)
    np.testing.assert_allclose(res.cmc, ref, atol=1e-6)
    np.random.seed(0)
    ref0 = _torchreid_cuhk03(dm, qp, gp, qc, gc, 50)
    res0 = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, protocol="cuhk03")  # seed 0, private
    np.testing.assert_allclose(res0.cmc, ref0, atol=1e-6)
    market = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    assert res.mAP == pytest.approx(market.mAP)


@settings(max_examples=60, deadline=None)
@given(
    nq=st.integers(1, 8), ng=st.integers(1, 30), npid=st.integers(1, 5), levels=st.integers(1, 6),
    junk_i=st.integers(0, len(PROTO_JUNK) - 1), seed=st.integers(0, 2**31 - 1), max_rank=st.integers(1, 60),
)
def test_property_matches_stable_seed_loop(nq, ng, npid, levels, junk_i, seed, max_rank):
    rng = np.random.default_rng(seed)
    protocol, junk = PROTO_JUNK[junk_i]
    dm, qp, gp, qc, gc, qcl, gcl = _random_case(rng, nq, ng, npid, ncam=2, ncl=2)
    dm = np.floor(dm * levels).astype(np.float64)  # few levels: many ties
    try:
        ref = seed_eval_stable(dm, qp, gp, qc, gc, qcl, gcl, junk=junk, max_rank=max_rank)
    except ValueError:
        with pytest.raises(ValueError):
            evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                     protocol=protocol, max_rank=max_rank)
        return
    res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                   protocol=protocol, max_rank=max_rank, chunk_size=3)
    _check(res, ref)


def test_import_is_light():
    code = (
        "import sys, fastccreid.metrics, fastccreid.compat.torchreid, fastccreid.compat.fastreid\n"
        "import numpy as np\n"
        "fastccreid.metrics.evaluate(np.random.rand(3, 4), q_pids=[0, 1, 2], g_pids=[0, 1, 2, 0], protocol='prcc')\n"
        "bad = [m for m in ('torchvision', 'nvidia.dali', 'triton') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
