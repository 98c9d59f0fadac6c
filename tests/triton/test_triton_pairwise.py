"""pairwise_distance's Triton kernel against float64 explicit differences (and the seed's euclidean_dist), its
gradients against float64 autograd, and the registered op ``fastccreid::pairwise_distance``.

Tolerances: the kernel computes in fp32 from the (upcast) input values, so every dtype is compared with the float64
oracle on the same rounded values: rtol 1e-5 and atol 1e-5 times the largest distance (one fp32 matmul)."""

from __future__ import annotations

import pytest
import torch
from helpers.kernel_oracles import pairwise_oracle

from fastccreid.kernels import pairwise_distance
from fastccreid.reference.losses import euclidean_dist

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
METRICS = ("euclidean", "sqeuclidean", "cosine")
SHAPES = [(1, 1, 1), (37, 21, 50), (19, 23, 33), (65, 40, 130)]  # (M, N, D)
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-5, 1e-5), (torch.bfloat16, 1e-5, 1e-5)]


def _close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> None:
    scale = max(float(want.abs().max()), 1.0)
    torch.testing.assert_close(got.double().cpu(), want.cpu(), atol=atol * scale, rtol=rtol)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_forward_matches_float64(shape, dtype, atol, rtol, metric):
    m, n, d = shape
    gen = torch.Generator().manual_seed(m * 1000 + n + d)
    x, y = torch.randn(m, d, generator=gen).to(dtype), torch.randn(n, d, generator=gen).to(dtype)
    out = pairwise_distance(x.to(DEVICE), y.to(DEVICE), metric, backend="triton")
    assert out.dtype == torch.float32 and out.shape == (m, n)
    _close(out, pairwise_oracle(x, y, metric), atol, rtol)
    if metric == "euclidean" and dtype == torch.float32:
        _close(out, euclidean_dist(x, y).double(), atol, rtol)  # the seed's own function


@pytest.mark.parametrize("metric", METRICS)
def test_triton_self_distance(metric):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(33, 24, generator=gen)
    got, want = pairwise_distance(x.to(DEVICE), metric=metric, backend="triton").cpu(), pairwise_oracle(x, x, metric)
    off = ~torch.eye(33, dtype=torch.bool)
    _close(got[off], want[off], 1e-5, 1e-5)
    # the diagonal is fp32 cancellation in |x|^2 + |x|^2 - 2 x.x (~1e-6 of |x|^2), square-rooted for euclidean
    assert float(got.diagonal().abs().max()) < (1e-2 if metric == "euclidean" else 1e-4)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("shape", [(19, 23, 33), (4, 70, 9)])
def test_triton_gradients_match_float64_autograd(shape, metric):
    m, n, d = shape
    gen = torch.Generator().manual_seed(d)
    x0, y0 = torch.randn(m, d, generator=gen), torch.randn(n, d, generator=gen)
    w = torch.randn(m, n, generator=gen)
    x, y = x0.clone().to(DEVICE).requires_grad_(), y0.clone().to(DEVICE).requires_grad_()
    got = torch.autograd.grad((pairwise_distance(x, y, metric, backend="triton") * w.to(DEVICE)).sum(), [x, y])
    x64, y64 = x0.detach().double().requires_grad_(), y0.detach().double().requires_grad_()
    want = torch.autograd.grad((pairwise_oracle(x64, y64, metric) * w.double()).sum(), [x64, y64])
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double().cpu(), b, atol=1e-4, rtol=1e-4)


def test_triton_strided_input():
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(40, 66, generator=gen)[:, ::2]
    _close(pairwise_distance(xs.to(DEVICE), metric="sqeuclidean", backend="triton"),
           pairwise_oracle(xs, xs, "sqeuclidean"), 1e-5, 1e-5)


def test_registered_op_matches_float64_and_compiles_fullgraph():
    """torch.ops.fastccreid.pairwise_distance (CPU kernel or CUDA kernel): forward and gradient against the float64
    oracle; torch.compile(fullgraph=True) traces it without a graph break."""
    import fastccreid.kernels._pairwise_distance_triton  # noqa: F401  (registers fastccreid::pairwise_distance)

    op = torch.ops.fastccreid.pairwise_distance
    gen = torch.Generator().manual_seed(2)
    x0, y0 = torch.randn(19, 33, generator=gen), torch.randn(23, 33, generator=gen)
    w = torch.randn(19, 23, generator=gen)
    x = x0.clone().to(DEVICE).requires_grad_()
    d = op(x, y0.to(DEVICE), 1)  # euclidean
    (d * w.to(DEVICE)).sum().backward()
    x64 = x0.detach().double().requires_grad_()
    ref = pairwise_oracle(x64, y0, "euclidean")
    (ref * w.double()).sum().backward()
    _close(d.detach(), ref.detach(), 1e-5, 1e-5)
    torch.testing.assert_close(x.grad.double().cpu(), x64.grad, atol=1e-4, rtol=1e-4)
    comp = torch.compile(lambda a, b: op(a, b, 0).sum(), fullgraph=True, backend="eager")
    got = comp(x0.to(DEVICE), y0.to(DEVICE))
    torch.testing.assert_close(got.double().cpu(), pairwise_oracle(x0, y0, "sqeuclidean").sum(), atol=1e-2, rtol=1e-5)
