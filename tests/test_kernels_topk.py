"""topk_ranking: k nearest by distance, ties by gallery index, junk excluded; torch and Triton (interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastccreid.kernels import topk_ranking


def _labels(gen, nq, ng, npid=4):
    return dict(q_pids=torch.randint(0, npid, (nq,), generator=gen),
                g_pids=torch.randint(0, npid, (ng,), generator=gen),
                q_camids=torch.randint(0, 2, (nq,), generator=gen), g_camids=torch.randint(0, 2, (ng,), generator=gen),
                q_clothes=torch.randint(0, 2, (nq,), generator=gen),
                g_clothes=torch.randint(0, 2, (ng,), generator=gen))


def _oracle(dm: np.ndarray, k: int, bad: np.ndarray | None):
    d = dm.astype(np.float64).copy()
    if bad is not None:
        d[bad] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(d, order, 1)
    order = np.where(np.isinf(vals), -1, order)
    return vals, order


def _bad(lab, junk):
    qp, gp = lab["q_pids"].numpy(), lab["g_pids"].numpy()
    same = qp[:, None] == gp[None]
    cam = lab["q_camids"].numpy()[:, None] == lab["g_camids"].numpy()[None]
    if junk == "market":
        return same & cam
    if junk == "ltcc-cc":
        return same & (cam | (lab["q_clothes"].numpy()[:, None] == lab["g_clothes"].numpy()[None]))
    return None


@pytest.mark.parametrize("junk", [None, "market", "ltcc-cc"])
@pytest.mark.parametrize("k", [1, 5, 50])
def test_precomputed_with_ties_and_junk(junk, k):
    gen = torch.Generator().manual_seed(k)
    dm = torch.randint(0, 4, (9, 37), generator=gen).float()  # many ties
    lab = _labels(gen, 9, 37)
    vals, idx = topk_ranking(dm, None, k, "precomputed", junk=junk, chunk_size=4, **lab)
    ov, oi = _oracle(dm.numpy(), k, _bad(lab, junk))
    kk = min(k, 37)
    assert vals.shape == (9, k) and idx.shape == (9, k)
    np.testing.assert_array_equal(idx[:, :kk].numpy(), oi)
    np.testing.assert_array_equal(vals[:, :kk].numpy(), ov.astype(np.float32))
    assert (idx[:, kk:] == -1).all()


def test_features_match_the_seed_distance():
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(13, 24, generator=gen), torch.randn(70, 24, generator=gen)
    g[9] = g[3]  # exact tie
    dm = (q.pow(2).sum(1, keepdim=True) + g.pow(2).sum(1)[None]).addmm_(q, g.t(), beta=1, alpha=-2)
    vals, idx = topk_ranking(q, g, 10)
    ov, oi = _oracle(dm.numpy(), 10, None)
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


TRITON_CHECK = """
import numpy as np, torch
from fastccreid.kernels import topk_ranking
gen = torch.Generator().manual_seed(1)
nq, ng = 11, 70
for junk, k in ((None, 4), ("market", 10), ("ltcc-cc", 80)):
    q, g = torch.randn(nq, 20, generator=gen), torch.randn(ng, 20, generator=gen)
    g[7] = g[2]
    q[1] = g[2]
    lab = dict(q_pids=torch.randint(0, 4, (nq,), generator=gen), g_pids=torch.randint(0, 4, (ng,), generator=gen),
               q_camids=torch.randint(0, 2, (nq,), generator=gen), g_camids=torch.randint(0, 2, (ng,), generator=gen),
               q_clothes=torch.randint(0, 2, (nq,), generator=gen), g_clothes=torch.randint(0, 2, (ng,), generator=gen))
    a = topk_ranking(q, g, k, junk=junk, backend="torch", **lab)
    b = topk_ranking(q, g, k, junk=junk, backend="triton", **lab)
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), atol=1e-5)
print("OK")
"""


@pytest.mark.triton
def test_triton_interpreter_matches_torch():
    """The Triton kernel under TRITON_INTERPRET=1 in a fresh process (the variable must be set before Triton is
    first imported)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


OP_CHECK = """
import numpy as np, torch
from fastccreid.kernels import topk_ranking
import fastccreid.kernels._topk_triton as T  # registers fastccreid::topk_sqeuclid
op = torch.ops.fastccreid.topk_sqeuclid
gen = torch.Generator().manual_seed(3)
nq, ng = 9, 50
for junk, k in ((None, 3), ("market", 7), ("ltcc-cc", 60)):
    q, g = torch.randn(nq, 16, generator=gen), torch.randn(ng, 16, generator=gen)
    g[4] = g[1]  # an exact tie
    lab = dict(q_pids=torch.randint(0, 3, (nq,), generator=gen), g_pids=torch.randint(0, 3, (ng,), generator=gen),
               q_camids=torch.randint(0, 2, (nq,), generator=gen), g_camids=torch.randint(0, 2, (ng,), generator=gen),
               q_clothes=torch.randint(0, 2, (nq,), generator=gen), g_clothes=torch.randint(0, 2, (ng,), generator=gen))
    ref = topk_ranking(q, g, k, junk=junk, backend="torch", **lab)
    args = (q, g, k, *lab.values(), T.JUNK_CODES[junk])
    # the op on CPU tensors (its CPU kernel) and the op's Triton body (interpreter) against the torch path
    for name, out in (("op", op(*args)), ("body", T.topk_op._init_fn(*args))):
        assert out[0].dtype == torch.float32 and out[1].dtype == torch.int64, name
        np.testing.assert_array_equal(out[1].numpy(), ref[1].numpy(), err_msg=f"{name} {junk}")
        np.testing.assert_allclose(out[0].numpy(), ref[0].numpy(), atol=1e-5, err_msg=f"{name} {junk}")
    # dynamo traces the op as one node (fake kernel for shapes): fullgraph raises on a graph break
    comp = torch.compile(lambda *a: op(*a)[1] * 2, fullgraph=True, backend="eager")
    assert torch.equal(comp(*args), ref[1] * 2), junk
print("OK")
"""


@pytest.mark.triton
def test_registered_op_matches_torch_and_compiles_fullgraph():
    """torch.ops.fastccreid.topk_sqeuclid (CPU kernel and Triton body under TRITON_INTERPRET=1) equals the torch
    path, and torch.compile(fullgraph=True) traces a function calling it without a graph break."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="2")
    env.pop("FASTCCREID_BACKEND", None)
    out = subprocess.run([sys.executable, "-c", OP_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
