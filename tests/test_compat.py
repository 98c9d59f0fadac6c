"""torchreid / fast-reid call forms: same shapes and dtypes as theirs, our numbers, fixed edge cases."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers.eval_cases import market_loop, torchreid_cuhk03

from fastccreid.compat import fastreid as fr_compat
from fastccreid.compat import torchreid as tr_compat


def _case(seed=0, nq=20, ng=90, npid=8):
    rng = np.random.default_rng(seed)
    return (rng.random((nq, ng)).astype(np.float32), rng.integers(0, npid, nq), rng.integers(0, npid, ng),
            rng.integers(0, 3, nq), rng.integers(0, 3, ng))


def test_torchreid_form_and_values():
    dm, qp, gp, qc, gc = _case()
    cmc, mAP = tr_compat.evaluate_rank(dm, qp, gp, qc, gc, max_rank=50, use_metric_cuhk03=False, use_cython=True)
    ref_cmc, ref_ap, _ = market_loop(dm, qp, gp, qc, gc, 50)
    assert cmc.dtype == np.float32 and cmc.shape == (50,)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert isinstance(mAP, float) and abs(mAP - np.mean(ref_ap)) < 1e-6


def test_fastreid_form_and_values():
    dm, qp, gp, qc, gc = _case(1)
    cmc, all_ap, all_inp = fr_compat.evaluate_rank(dm, qp, gp, qc, gc)
    ref_cmc, ref_ap, ref_inp = market_loop(dm, qp, gp, qc, gc, 50)
    assert cmc.dtype == np.float32 and all_ap.dtype == np.float32 and all_inp.dtype == np.float32
    assert all_ap.shape == (len(ref_ap),) and all_inp.shape == (len(ref_inp),)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    np.testing.assert_allclose(all_ap, ref_ap, atol=1e-6)
    np.testing.assert_allclose(all_inp, ref_inp, atol=1e-6)
    _, ap_list, inp_list = fr_compat.evaluate_rank(dm, qp, gp, qc, gc, use_cython=False)
    assert isinstance(ap_list, list) and isinstance(inp_list[0], float)


def test_short_valid_gallery_does_not_crash():
    # 4 gallery items, max_rank 50: after junk removal the first query keeps 3 -> ragged in their Python loop.
    dm = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    qp, gp = np.array([1, 2]), np.array([1, 2, 1, 2])
    qc, gc = np.array([0, 0]), np.array([0, 1, 1, 1])
    with pytest.raises(ValueError, match="inhomogeneous"):  # theirs: numpy refuses the ragged list of CMC rows
        market_loop(dm, qp, gp, qc, gc, 50)
    cmc, mAP = tr_compat.evaluate_rank(dm, qp, gp, qc, gc)
    np.testing.assert_allclose(cmc, [0.5, 1.0, 1.0, 1.0])
    cmc2, ap, _ = fr_compat.evaluate_rank(dm, qp, gp, qc, gc)
    np.testing.assert_allclose(cmc2, cmc)
    assert mAP == pytest.approx(float(np.mean(ap)), abs=1e-6)


def test_cuhk03_form_and_values_match_torchreids_draws():
    """use_metric_cuhk03: both call forms against torchreid's own loop (np.random.choice per identity) seeded alike,
    not against each other."""
    dm, qp, gp, qc, gc = _case(2)
    np.random.seed(7)
    want = torchreid_cuhk03(dm, qp, gp, qc, gc, 50)
    want_map = float(np.mean(market_loop(dm, qp, gp, qc, gc, 50)[1]))  # mAP: no draws in it
    for compat in (tr_compat, fr_compat):
        np.random.seed(7)
        cmc, mAP = compat.evaluate_rank(dm, qp, gp, qc, gc, use_metric_cuhk03=True)
        assert cmc.dtype == np.float32 and cmc.shape == (50,)
        np.testing.assert_allclose(cmc, want, atol=1e-6)
        assert mAP == pytest.approx(want_map, abs=1e-9)
    np.random.seed(8)
    other = tr_compat.evaluate_rank(dm, qp, gp, qc, gc, use_metric_cuhk03=True)[0]
    assert not np.allclose(other, want)  # the draws do come from numpy's global RNG


SCRIPT = """
import numpy as np
{import_line}

def test(distmat, q_pids, g_pids, q_camids, g_camids, ranks=(1, 5, 10, 20)):
    {call}
    print("mAP: {{:.6f}}".format(mAP))
    for r in ranks:
        print("Rank-{{:<3}}: {{:.6f}}".format(r, cmc[r - 1]))

rng = np.random.RandomState(0)
distmat = rng.rand(30, 200).astype(np.float32)
test(distmat, rng.randint(0, 10, 30), rng.randint(0, 10, 200), rng.randint(0, 4, 30), rng.randint(0, 4, 200))
"""


@pytest.mark.parametrize(
    "import_line,call",
    [
        ("from fastccreid.compat.torchreid import evaluate_rank",
         "cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, use_metric_cuhk03=False)"),
        ("from fastccreid.compat.fastreid import evaluate_rank",
         "cmc, all_AP, all_INP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids); mAP = np.mean(all_AP)"),
    ],
)
def test_swapped_import_in_a_peer_style_script(import_line, call, tmp_path):
    script = tmp_path / "eval_script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(import_line=import_line, call=call)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    rng = np.random.RandomState(0)
    dm = rng.rand(30, 200).astype(np.float32)
    qp, gp, qc, gc = rng.randint(0, 10, 30), rng.randint(0, 10, 200), rng.randint(0, 4, 30), rng.randint(0, 4, 200)
    ref_cmc, ref_ap, _ = market_loop(dm, qp, gp, qc, gc, 50)
    assert f"mAP: {np.mean(ref_ap):.6f}" in out
    assert f"Rank-1  : {ref_cmc[0]:.6f}" in out


# ------------------------------------------------------------------ Simple-CCReID / CAL and the seed / FIRe forms


def _simple_ccreid_oracle(dm, qp, gp, qc, gc, qcl=None, gcl=None, mode=None):
    """Simple-CCReID's loop written out from its definition (stable sort): per query the good set (same pid, other
    camera; CC: other clothes, SC: same clothes) and junk set (same pid with the same camera; CC: or the same
    clothes, SC: or other clothes); AP as its running sum of precision / #good; CMC [G] = 1 from the first good
    item (ranked among the non-junk) onwards; both averaged over queries with a good item."""
    ng = dm.shape[1]
    cmc_sum, ap_sum, n = np.zeros(ng), 0.0, 0
    for i in range(dm.shape[0]):
        same = gp == qp[i]
        good = same & (gc != qc[i])
        junk = same & (gc == qc[i])
        if mode == "CC":
            good &= gcl != qcl[i]
            junk |= same & (gcl == qcl[i])
        elif mode == "SC":
            good &= gcl == qcl[i]
            junk |= same & (gcl != qcl[i])
        if not good.any():
            continue
        order = [j for j in np.argsort(dm[i], kind="stable") if not junk[j]]
        hits = [r for r, j in enumerate(order) if good[j]]
        ap = 0.0
        for k, r in enumerate(hits):
            ap += (1.0 / len(hits)) * ((k + 1.0) / (r + 1.0))
        cmc = np.zeros(ng)
        cmc[hits[0]:] = 1.0
        cmc_sum += cmc
        ap_sum += ap
        n += 1
    return cmc_sum / n, ap_sum / n


def _cc_case(seed: int, ties: bool):
    rng = np.random.default_rng(seed)
    nq, ng = 23, 70
    dm = rng.integers(0, 4, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng)).astype(np.float32)
    return (dm, rng.integers(0, 9, nq), rng.integers(0, 7, ng), rng.integers(0, 3, nq), rng.integers(0, 3, ng),
            rng.integers(0, 3, nq), rng.integers(0, 3, ng))


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_simple_ccreid_forms(seed, ties):
    from fastccreid.compat import simple_ccreid as sc

    dm, qp, gp, qc, gc, qcl, gcl = _cc_case(seed, ties)
    cmc, mAP = sc.evaluate(dm, qp, gp, qc, gc)
    ref_cmc, ref_map = _simple_ccreid_oracle(dm, qp, gp, qc, gc)
    assert cmc.dtype == np.float64 and cmc.shape == (dm.shape[1],) and isinstance(mAP, np.float64)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-12)
    assert abs(mAP - ref_map) <= 1e-12
    for mode in ("CC", "SC"):
        cmc, mAP = sc.evaluate_with_clothes(dm, qp, gp, qc, gc, qcl, gcl, mode=mode)
        ref_cmc, ref_map = _simple_ccreid_oracle(dm, qp, gp, qc, gc, qcl, gcl, mode)
        assert cmc.shape == (dm.shape[1],) and isinstance(mAP, np.float64), mode
        np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-12, err_msg=mode)
        assert abs(mAP - ref_map) <= 1e-12, mode


def test_simple_ccreid_no_ground_truth_and_bad_mode():
    from fastccreid.compat import simple_ccreid as sc

    dm, qp, gp, qc, gc, qcl, gcl = _cc_case(3, False)
    cmc, mAP = sc.evaluate_with_clothes(dm, qp, gp, qc, gc, qcl, gcl + 10, mode="SC")  # no same clothes anywhere
    assert mAP == 0 and cmc.shape == (dm.shape[1],) and not cmc.any()
    with pytest.raises(ValueError, match=r"mode must be one of \('CC', 'SC'\)"):
        sc.evaluate_with_clothes(dm, qp, gp, qc, gc, qcl, gcl, mode="cc")
    # bad lengths: one line naming the argument (not a numpy broadcasting error)
    with pytest.raises(ValueError, match=r"g_clothes must be 1-D with one entry per gallery item \(70\)"):
        sc.evaluate_with_clothes(dm, qp, gp, qc, gc, qcl, gcl[:5], mode="SC")
    # theirs divides by zero valid queries in evaluate: ours is a ValueError and a ZeroDivisionError
    with pytest.raises(ZeroDivisionError, match="no query has a true match") as info:
        sc.evaluate(dm, qp + 100, gp, qc, gc)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("seed,ties", [(4, False), (5, True)])
def test_fire_forms_equal_the_seed(seed, ties):
    from fastccreid.compat import fire
    from fastccreid.reference import evaluation as ref

    dm, qp, gp, qc, gc, qcl, gcl = _cc_case(seed, ties)
    calls = [(fire.evaluate(dm, qp, gp, qc, gc, max_rank=20), ref.evaluate(dm, qp, gp, qc, gc, max_rank=20)),
             (fire.evaluate_prcc_all_gallery(dm, qp, gp, max_rank=100),
              ref.evaluate_prcc_all_gallery(dm, qp, gp, max_rank=100, skip_no_match=True))]
    for cc in (False, True):
        calls.append((fire.evaluate_ltcc(dm, qp, gp, qc, gc, qcl, gcl, ltcc_cc_setting=cc),
                      ref.evaluate_ltcc(dm, qp, gp, qc, gc, qcl, gcl, ltcc_cc_setting=cc)))
    for k, ((cmc, mAP), (rcmc, rmap, _)) in enumerate(calls):
        assert cmc.dtype == np.float32 and isinstance(mAP, np.float64), k
        np.testing.assert_array_equal(cmc, rcmc, err_msg=str(k))  # float32 sums / count, as theirs: bit-equal
        assert abs(mAP - rmap) <= 1e-12, k
