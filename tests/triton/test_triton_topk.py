"""topk_ranking's Triton tile kernel against a stable argsort of float64 distances (junk excluded, ties by
gallery index), and the registered op ``fastccreid::topk_sqeuclid``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.eval_cases import junk_mask, labels_numpy, seed_sqeuclidean_f64, topk_oracle, torch_labels

from fastccreid.kernels import topk_ranking

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(11, 70, 20), (3, 9, 16), (16, 140, 33)]  # (Q, G, D): the last spans several gallery tiles for every k
# (dtype, atol, rtol) of the fp32 distances against the float64 oracle on the same values
DTYPES = [(torch.float32, 1e-4, 1e-5)]
CASES = [(None, 4), ("market", 10), ("ltcc-cc", 80), (None, 1), ("market", 130)]


def _case(shape, seed):
    nq, ng, d = shape
    gen = torch.Generator().manual_seed(seed)
    q, g = torch.randn(nq, d, generator=gen), torch.randn(ng, d, generator=gen)
    g[7 % ng] = g[2 % ng]  # an exact tie: the smaller gallery index first
    q[1 % nq] = g[2 % ng]  # a zero distance
    return q, g, torch_labels(gen, nq, ng, npid=4)


def _bad(lab, junk):
    return None if junk is None else junk_mask(*labels_numpy(lab), junk)


@pytest.mark.parametrize("junk,k", CASES)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_stable_argsort(shape, dtype, atol, rtol, junk, k):
    q, g, lab = _case(shape, seed=sum(shape) + k)
    q, g = q.to(dtype), g.to(dtype)
    kw = {k_: v.to(DEVICE) for k_, v in lab.items()} if junk else {}
    vals, idx = topk_ranking(q.to(DEVICE), g.to(DEVICE), k, junk=junk, backend="triton", **kw)
    ov, oi = topk_oracle(seed_sqeuclidean_f64(q.float(), g.float()), k, _bad(lab, junk))
    kk = oi.shape[1]
    assert vals.shape == (shape[0], k) and idx.shape == (shape[0], k) and vals.dtype == torch.float32
    np.testing.assert_array_equal(idx[:, :kk].cpu().numpy(), oi)
    fin = np.isfinite(ov)
    np.testing.assert_allclose(vals[:, :kk].cpu().numpy()[fin], ov[fin], atol=atol, rtol=rtol)
    assert torch.isinf(vals[:, :kk].cpu()[torch.from_numpy(~fin)]).all() and (idx[:, kk:] == -1).all()


@pytest.mark.parametrize("junk,k", CASES[:3])
def test_registered_op_matches_oracle_and_compiles_fullgraph(junk, k):
    """torch.ops.fastccreid.topk_sqeuclid (its CPU or CUDA kernel, and the Triton body) against the oracle;
    torch.compile(fullgraph=True) traces a function calling it without a graph break."""
    import fastccreid.kernels._topk_triton as T  # registers fastccreid::topk_sqeuclid

    op = torch.ops.fastccreid.topk_sqeuclid
    q, g, lab = _case((9, 50, 16), seed=3)
    args = (q.to(DEVICE), g.to(DEVICE), k, *(v.to(DEVICE) for v in lab.values()), T.JUNK_CODES[junk])
    ov, oi = topk_oracle(seed_sqeuclidean_f64(q, g), k, _bad(lab, junk))
    kk = oi.shape[1]
    for out in (op(*args), T.topk_op._init_fn(*args)):
        assert out[0].dtype == torch.float32 and out[1].dtype == torch.int64
        np.testing.assert_array_equal(out[1][:, :kk].cpu().numpy(), oi)
        fin = np.isfinite(ov)
        np.testing.assert_allclose(out[0][:, :kk].cpu().numpy()[fin], ov[fin], atol=1e-4, rtol=1e-5)
    comp = torch.compile(lambda *a: op(*a)[1] * 2, fullgraph=True, backend="eager")
    assert torch.equal(comp(*args).cpu()[:, :kk], torch.from_numpy(oi) * 2)


@pytest.mark.parametrize("k", [129, 310])
def test_topk_past_the_tile_bound(k):
    """k > MAX_TILE_G (below and past the gallery size) takes the keep-every-key route: every tile keeps all
    its keys and torch.topk selects the k best; equal to the float64 stable-argsort oracle, exact tie included."""
    import fastccreid.kernels._topk_triton as T

    assert T.tile_launch(k).BG == T.MAX_TILE_G
    gen = torch.Generator().manual_seed(k)
    nq, ng = 5, 300
    q, g = torch.randn(nq, 20, generator=gen), torch.randn(ng, 20, generator=gen)
    g[200] = g[3]  # an exact tie across two gallery tiles
    lab = torch_labels(gen, nq, ng, npid=4)
    vals, idx = topk_ranking(q.to(DEVICE), g.to(DEVICE), k, junk="market", backend="triton",
                             **{k_: v.to(DEVICE) for k_, v in lab.items()})
    ov, oi = topk_oracle(seed_sqeuclidean_f64(q, g), k, _bad(lab, "market"))
    kk = oi.shape[1]
    np.testing.assert_array_equal(idx[:, :kk].cpu().numpy(), oi)
    fin = np.isfinite(ov)
    np.testing.assert_allclose(vals[:, :kk].cpu().numpy()[fin], ov[fin], atol=1e-4, rtol=1e-5)
    assert (idx[:, kk:] == -1).all()
