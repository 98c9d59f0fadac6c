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
