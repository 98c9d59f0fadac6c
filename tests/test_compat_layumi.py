"""fastccreid.compat.layumi against loops written from layumi's evaluate_gpu.py conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastccreid.compat import layumi


def oracle(qf, ql, qc, gf, gl, gc):
    """Rank by descending similarity (ties by index), junk = distractors + same id same camera, trapezoid AP."""
    score = gf.double().numpy() @ qf.double().numpy()
    order = sorted(range(len(score)), key=lambda j: (-score[j], j))
    cmc = np.zeros(len(order), dtype=np.int32)
    good = [j for j in range(len(gl)) if gl[j] == ql and gc[j] != qc]
    if not good:
        cmc[0] = -1
        return 0.0, cmc
    kept = [j for j in order if not (gl[j] == -1 or (gl[j] == ql and gc[j] == qc))]
    ap, hits = 0.0, 0
    for r, j in enumerate(kept):
        if j in good:
            # (precision before + precision at the match) / 2 per recall step 1/n_good, in their float order
            before = hits * 1.0 / r if r != 0 else 1.0
            ap = ap + (1.0 / len(good)) * (before + (hits + 1) * 1.0 / (r + 1)) / 2
            hits += 1
            if hits == 1:
                cmc[r:] = 1
    return ap, cmc


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True)])
def test_evaluate_matches_oracle(seed, ties):
    rng = np.random.default_rng(seed)
    if ties:
        gf = torch.from_numpy(rng.integers(-1, 2, (30, 4)).astype(np.float32))
    else:
        gf = torch.from_numpy(rng.normal(size=(30, 4)).astype(np.float32))
    gl, gc = rng.integers(0, 5, 30), rng.integers(0, 3, 30)
    gl[rng.random(30) < 0.2] = -1
    for i in range(8):
        qf = gf[i].clone() if ties else torch.from_numpy(rng.normal(size=4).astype(np.float32))
        ql, qc = (int(gl[i]) if gl[i] >= 0 else 3, int(rng.integers(0, 3))) if i != 7 else (99, 0)
        ap, cmc = layumi.evaluate(qf, ql, qc, gf, gl, gc)
        oap, ocmc = oracle(qf, ql, qc, gf, gl, gc)
        assert cmc.dtype == torch.int32 and cmc.shape == (30,)
        np.testing.assert_array_equal(cmc.numpy(), ocmc)
        assert ap == oap  # their arithmetic, bit for bit


def test_evaluate_ap_bits_with_many_matches():
    """Hundreds of matches: the AP is their sequential float64 sum, not a pairwise or reordered one."""
    rng = np.random.default_rng(11)
    gf = torch.from_numpy(rng.normal(size=(600, 8)).astype(np.float32))
    gl, gc = rng.integers(0, 2, 600), rng.integers(0, 4, 600)
    for i in range(6):
        qf = torch.from_numpy(rng.normal(size=8).astype(np.float32))
        ap, cmc = layumi.evaluate(qf, i % 2, i % 4, gf, gl, gc)
        oap, ocmc = oracle(qf, i % 2, i % 4, gf, gl, gc)
        assert ap == oap
        np.testing.assert_array_equal(cmc.numpy(), ocmc)


def test_compute_map_trapezoid_by_hand():
    # ranking 5, 3, 9, 1, 7: junk 3; good 9 and 7 -> kept ranking 5, 9, 1, 7: good at rows 1 and 3
    ap, cmc = layumi.compute_mAP(np.array([5, 3, 9, 1, 7]), np.array([9, 7]), np.array([3]))
    assert abs(ap - ((0.0 + 1 / 2) / 2 / 2 + (1 / 3 + 2 / 4) / 2 / 2)) < 1e-15  # precision before, at each match
    np.testing.assert_array_equal(cmc.numpy(), [0, 1, 1, 1, 1])
    ap, cmc = layumi.compute_mAP(np.array([2]), np.array([2]), np.array([], dtype=np.int64))
    assert ap == 1.0 and cmc.tolist() == [1]
    ap, cmc = layumi.compute_mAP(np.array([0, 1]), np.array([], dtype=np.int64), np.array([]))
    assert ap == 0 and cmc.tolist() == [-1, 0]


def test_bad_input():
    gf = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="gf must be"):
        layumi.evaluate(torch.zeros(2), 1, 0, gf, np.zeros(4), np.zeros(4))
    with pytest.raises(ValueError, match="gl and gc must have one entry per gallery row"):
        layumi.evaluate(torch.zeros(3), 1, 0, gf, np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="qf contains NaN"):
        layumi.evaluate(torch.tensor([0.0, float("nan"), 1.0]), 1, 0, gf, np.zeros(4), np.zeros(4))
    g = gf.clone()
    g[2, 1] = float("inf")
    with pytest.raises(ValueError, match="gf contains NaN or Inf"):
        layumi.evaluate(torch.zeros(3), 1, 0, g, np.zeros(4), np.zeros(4))


def test_new_compat_forms_import_no_dali_torchvision_sklearn():
    import subprocess
    import sys

    code = ("import sys; import fastccreid.metrics, fastccreid.compat.strong_baseline, fastccreid.compat.open_reid, "
            "fastccreid.compat.layumi, fastccreid.compare; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'nvidia', 'sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
