"""fastccreid.metrics.evaluate: parity with the seed's evaluation on every protocol, edge cases, input checks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.eval_cases import random_case, torchreid_cuhk03
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
    # a stable seed per case (``hash()`` of a string changes with PYTHONHASHSEED, so a failure would not reproduce)
    rng = np.random.default_rng([PROTO_JUNK.index((protocol, junk)), int(ties)])
    for nq, ng, npid in [(17, 60, 6), (9, 7, 3), (30, 120, 25), (5, 1, 2)]:
        dm, qp, gp, qc, gc, qcl, gcl = random_case(rng, nq, ng, npid, ties=ties)
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
    assert np.isnan(seed_map)  # the seed's unguarded PRCC (README, Differences from the official code)
    res = evaluate(dm, q_pids=qp, g_pids=gp, protocol="prcc")
    assert res.num_valid_queries == 1 and res.mAP == 1.0


def _lowp_case():
    """Features whose match / non-match distances differ by about bf16's resolution of the dot products (1e-2 on
    unit rows) but far above fp32's: a shared base vector plus small identity and noise offsets."""
    rng = np.random.default_rng(8)
    nid, d, nq, ng = 10, 64, 30, 200
    base, cent = rng.standard_normal(d), rng.standard_normal((nid, d))
    qp, gp = rng.integers(0, nid, nq), rng.integers(0, nid, ng)
    qf = (base + 0.07 * cent[qp] + 0.05 * rng.standard_normal((nq, d))).astype(np.float32)
    gf = (base + 0.07 * cent[gp] + 0.05 * rng.standard_normal((ng, d))).astype(np.float32)
    return qf, gf, qp, gp


def _lowp_distances(qf, gf, dtype):
    """What ``precision=`` promises, written out: the seed's fp32 normalisation and squared norms, the dot products
    of the normalised rows cast to ``dtype`` (a CPU matmul in that dtype rounds its output to it), in fp32 after."""
    q, g = torch.from_numpy(qf), torch.from_numpy(gf)
    qn = q / (torch.norm(q, 2, dim=-1, keepdim=True) + 1e-12)
    gn = g / (torch.norm(g, 2, dim=-1, keepdim=True) + 1e-12)
    dot = torch.mm(qn.to(dtype), gn.to(dtype).t()).float()
    return (qn.pow(2).sum(1)[:, None] + gn.pow(2).sum(1)[None, :] - 2 * dot).numpy()


def test_low_precision_computes_the_dot_products_in_that_precision():
    qf, gf, qp, gp = _lowp_case()
    exact = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, protocol="prcc")
    ref = seed_eval_stable(ref_eval.get_distmat(torch.from_numpy(qf), torch.from_numpy(gf)), qp, gp, junk=None)
    _check(exact, ref, tol=1e-12)  # fp32 is the seed's evaluation exactly
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        approx = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, protocol="prcc", precision=precision)
        want = evaluate(_lowp_distances(qf, gf, dtype), q_pids=qp, g_pids=gp, protocol="prcc")
        assert abs(want.mAP - exact.mAP) > 1e-5, precision  # the data is one where the precision matters
        assert approx.mAP == pytest.approx(want.mAP, abs=1e-12), precision
        assert approx.mINP == pytest.approx(want.mINP, abs=1e-12), precision
        np.testing.assert_allclose(approx.cmc, want.cmc, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="precision must be one of"):
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
    dm, qp, gp, qc, gc, *_ = random_case(rng, 12, 40, 4)
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


def test_cuhk03_single_shot_matches_torchreid_draws():
    rng = np.random.default_rng(4)
    dm, qp, gp, qc, gc, *_ = random_case(rng, 15, 80, 9)
    np.random.seed(123)
    ref = torchreid_cuhk03(dm, qp, gp, qc, gc, 50)
    np.random.seed(123)
    res = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, protocol="cuhk03", cuhk03_seed=None)
    np.testing.assert_allclose(res.cmc, ref, atol=1e-6)
    np.random.seed(0)
    ref0 = torchreid_cuhk03(dm, qp, gp, qc, gc, 50)
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
    dm, qp, gp, qc, gc, qcl, gcl = random_case(rng, nq, ng, npid, ncam=2, ncl=2)
    dm = np.floor(dm * levels).astype(np.float64)  # few levels: many ties
    try:
        ref = seed_eval_stable(dm, qp, gp, qc, gc, qcl, gcl, junk=junk, max_rank=max_rank)
    except ValueError:
        with pytest.raises(ValueError, match="no query has a true match"):
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
