"""Batch-hard mining and triplet loss on the Triton kernel against a float64 per-anchor oracle (and the seed's
hard_example_mining on P x K batches), gradients against float64 autograd, and the registered op
``fastccreid::batch_hard_mining``.

Tolerances: the kernel computes distances in fp32 from the (upcast) inputs, so every dtype is compared with the
oracle on the same rounded values (1e-5); gradients come back in the input dtype: one rounding of the fp32 value."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.kernel_oracles import triplet_loss_oracle

from fastccreid.kernels import batch_hard_mining, batch_hard_triplet_loss
from fastccreid.reference.losses import euclidean_dist, hard_example_mining

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_PK = torch.arange(9).repeat_interleave(4)
LABELS = {
    "pk_shuffled": _PK[torch.randperm(36, generator=torch.Generator().manual_seed(0))],
    "unequal": torch.tensor([5, 5, 5, 9, 1, 1, 7, 7, 7, 7, 2, 5, 3, 3, 3, 0, 0, 8, 8, 8, 8]),
    "one_label": torch.zeros(19, dtype=torch.long),
}
DIMS = [40, 7, 130]
# (dtype, distance atol, gradient atol, gradient rtol)
DTYPES = [(torch.float32, 1e-5, 1e-5, 1e-5), (torch.float16, 1e-5, 1e-5, 2e-3), (torch.bfloat16, 1e-5, 1e-4, 1e-2)]


def _features(n: int, d: int, dtype, seed: int) -> torch.Tensor:
    return (torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 0.3).to(dtype)


def _mining_oracle(x: torch.Tensor, labels: torch.Tensor):
    """Per anchor in float64: farthest positive (the anchor included) and closest negative, lowest index on ties;
    d = sqrt(max(|a - b|^2, 1e-12)); no negative: d_an = inf, index -1."""
    x64 = x.double()
    sq = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    lab = labels.tolist()
    d_ap, d_an, pos, neg = [], [], [], []
    for i, li in enumerate(lab):
        ps = [j for j, lj in enumerate(lab) if lj == li]
        ns = [j for j, lj in enumerate(lab) if lj != li]
        pj = max(ps, key=lambda j: (float(sq[i, j]), -j))
        pos.append(pj)
        d_ap.append(math.sqrt(max(float(sq[i, pj]), 1e-12)))
        if ns:
            nj = min(ns, key=lambda j: (float(sq[i, j]), j))
            neg.append(nj)
            d_an.append(math.sqrt(max(float(sq[i, nj]), 1e-12)))
        else:
            neg.append(-1)
            d_an.append(math.inf)
    f64 = torch.float64
    return torch.tensor(d_ap, dtype=f64), torch.tensor(d_an, dtype=f64), torch.tensor(pos), torch.tensor(neg)


@pytest.mark.parametrize("dtype,atol,gatol,grtol", DTYPES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("case", list(LABELS))
def test_triton_mining_matches_oracle(case, d, dtype, atol, gatol, grtol):
    labels = LABELS[case]
    x = _features(labels.numel(), d, dtype, seed=d)
    d_ap, d_an, pi, ni = batch_hard_mining(x.to(DEVICE), labels.to(DEVICE), backend="triton")
    r_ap, r_an, rpi, rni = _mining_oracle(x.float(), labels)
    assert d_ap.dtype == torch.float32 and d_an.dtype == torch.float32
    assert torch.equal(pi.cpu(), rpi) and torch.equal(ni.cpu(), rni)
    torch.testing.assert_close(d_ap.cpu().double(), r_ap, atol=atol, rtol=atol)
    fin = torch.isfinite(r_an)
    assert torch.equal(torch.isfinite(d_an.cpu()), fin)
    torch.testing.assert_close(d_an.cpu().double()[fin], r_an[fin], atol=atol, rtol=atol)


def test_triton_mining_matches_the_seeds_hard_example_mining():
    labels = LABELS["pk_shuffled"]
    x = _features(labels.numel(), 40, torch.float32, seed=3)
    d_ap, d_an, pi, ni = batch_hard_mining(x.to(DEVICE), labels.to(DEVICE), backend="triton")
    r_ap, r_an, rpi, rni = hard_example_mining(euclidean_dist(x, x), labels, return_inds=True)
    torch.testing.assert_close(d_ap.cpu(), r_ap, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d_an.cpu(), r_an, rtol=1e-5, atol=1e-5)
    assert torch.equal(pi.cpu(), rpi) and torch.equal(ni.cpu(), rni)


@pytest.mark.parametrize("margin", [0.3, None])
@pytest.mark.parametrize("dtype,atol,gatol,grtol", DTYPES)
@pytest.mark.parametrize("case", list(LABELS))
def test_triton_loss_and_gradient_match_float64(case, dtype, atol, gatol, grtol, margin):
    labels = LABELS[case]
    x0 = _features(labels.numel(), 40, dtype, seed=11)
    x = x0.clone().to(DEVICE).requires_grad_()
    loss = batch_hard_triplet_loss(x, labels.to(DEVICE), margin=margin, backend="triton")
    loss.backward()
    x64 = x0.detach().double().requires_grad_()
    ref = triplet_loss_oracle(x64, labels, margin)
    ref.backward()
    torch.testing.assert_close(loss.detach().double().cpu(), ref.detach(), atol=atol, rtol=atol)
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=gatol, rtol=grtol)


def test_registered_op_matches_oracle_autograd_and_compile():
    """torch.ops.fastccreid.batch_hard_mining (its CPU or CUDA kernel): outputs and gradient against the float64
    oracle; torch.compile(fullgraph=True) traces it without a graph break."""
    import fastccreid.kernels._triplet_triton  # noqa: F401  (registers fastccreid::batch_hard_mining)

    op = torch.ops.fastccreid.batch_hard_mining
    labels = LABELS["pk_shuffled"]
    x0 = _features(36, 24, torch.float32, seed=5)
    x = x0.clone().to(DEVICE).requires_grad_()
    d_ap, d_an, pi, ni, n_same = op(x, labels.to(DEVICE))
    g = torch.autograd.grad((d_ap - d_an).sum(), x)[0]
    r_ap, r_an, rpi, rni = _mining_oracle(x0, labels)
    assert torch.equal(pi.cpu(), rpi) and torch.equal(ni.cpu(), rni) and int(n_same.min()) == 4
    torch.testing.assert_close(d_ap.detach().cpu().double(), r_ap, atol=1e-5, rtol=1e-5)
    x64 = x0.detach().double().requires_grad_()
    sq = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1).clamp(min=1e-12).sqrt()
    ar = torch.arange(36)
    gr = torch.autograd.grad((sq[ar, rpi] - sq[ar, rni]).sum(), x64)[0]
    torch.testing.assert_close(g.double().cpu(), gr, atol=1e-5, rtol=1e-5)
    comp = torch.compile(lambda a, b: op(a, b)[0].sum(), fullgraph=True, backend="eager")
    torch.testing.assert_close(comp(x.detach(), labels.to(DEVICE)).double().cpu(), r_ap.sum(), atol=1e-3, rtol=1e-6)
