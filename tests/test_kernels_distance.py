"""pairwise_distance: parity with the seed's euclidean_dist and plain formulas, dtypes, gradients, validation,
torch.compile (the Triton kernel: tests/triton/test_triton_pairwise.py).

Tolerances: fp32 vs the reference 1e-5 relative + 1e-5 absolute (one matmul, different summation order); fp16 / bf16
inputs are compared with the fp32 result on the same (upcast) values, since both paths compute in fp32.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers.kernel_oracles import pairwise_oracle

from fastccreid.kernels import pairwise_distance
from fastccreid.reference.losses import euclidean_dist

METRICS = ("euclidean", "sqeuclidean", "cosine")


@pytest.mark.parametrize("m,n,d", [(1, 1, 1), (7, 13, 5), (33, 65, 129), (70, 70, 17)])
def test_euclidean_matches_reference(m, n, d):
    gen = torch.Generator().manual_seed(m * 1000 + n + d)
    x, y = torch.randn(m, d, generator=gen), torch.randn(n, d, generator=gen)
    out = pairwise_distance(x, y, backend="torch")
    assert out.dtype == torch.float32 and out.shape == (m, n)
    torch.testing.assert_close(out, euclidean_dist(x, y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("m,n,d", [(5, 9, 3), (31, 17, 64)])
def test_metrics_match_plain_formula(metric, m, n, d):
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(m, d, generator=gen) * 3, torch.randn(n, d, generator=gen)
    torch.testing.assert_close(pairwise_distance(x, y, metric, backend="torch").double(), pairwise_oracle(x, y, metric),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("metric", METRICS)
def test_self_distance_y_none_and_symmetric_gram(metric):
    # B >= 64 takes the symmetric-block Gram; ties: duplicated rows must give exactly equal columns
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(90, 40, generator=gen)
    x[10] = x[3]
    out = pairwise_distance(x, metric=metric, backend="torch")
    torch.testing.assert_close(out.double(), pairwise_oracle(x, x, metric), rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(out, out.t(), rtol=1e-5, atol=1e-5)
    assert torch.equal(out[3], out[10])
    if metric == "euclidean":
        assert torch.all(out.diagonal() == torch.tensor(1e-12).sqrt())
    torch.testing.assert_close(pairwise_distance(x, x, metric, backend="torch"), out, rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
def test_half_inputs_computed_in_fp32(dtype, metric):
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(23, 37, generator=gen).to(dtype), torch.randn(11, 37, generator=gen).to(dtype)
    out = pairwise_distance(x, y, metric, backend="torch")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pairwise_distance(x.float(), y.float(), metric, backend="torch"),
                               rtol=1e-6, atol=1e-6)


def test_half_inputs_with_large_values_do_not_overflow():
    # squared norms of these rows (~1e6) overflow fp16 (max 65504); the fp32 computation stays finite
    x = torch.full((4, 64), 200.0, dtype=torch.float16)
    y = torch.full((3, 64), -150.0, dtype=torch.float16)
    out = pairwise_distance(x, y, "euclidean", backend="torch")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full((4, 3), 350.0 * 8), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("metric", METRICS)
def test_gradcheck_float64(metric):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: pairwise_distance(a, b, metric, backend="torch"), (x, y))
    z = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: pairwise_distance(a, a, metric, backend="torch").triu(1), (z,))


def test_euclidean_gradient_matches_reference_autograd_including_clamp():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(9, 16, generator=gen)
    base[4] = base[1]  # a zero distance: the clamp holds it at the floor, autograd gives zero gradient there
    up = torch.randn(9, 9, generator=gen)
    a = base.clone().requires_grad_()
    b = base.clone().requires_grad_()
    (pairwise_distance(a, a, backend="torch") * up).sum().backward()
    (euclidean_dist(b, b) * up).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)


def test_gradient_dtype_follows_input_and_inputs_untouched():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(8, 12, generator=gen).bfloat16().requires_grad_()
    y = torch.randn(5, 12, generator=gen)
    x0, y0 = x.detach().clone(), y.clone()
    pairwise_distance(x, y, backend="torch").sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert torch.equal(x.detach(), x0) and torch.equal(y, y0)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((torch.randn(3, 4), torch.randn(3, 5)), {}, "same number of columns"),
        ((torch.randn(0, 4), torch.randn(3, 4)), {}, "at least one row"),
        ((torch.randn(3, 4), torch.randn(0, 4)), {}, "at least one row"),
        ((torch.randn(4),), {}, "2-D"),
        ((torch.ones(3, 4, dtype=torch.int64),), {}, "float32"),
        ((torch.randn(3, 4),), {"metric": "manhattan"}, "metric must be one of"),
        ((torch.randn(3, 4),), {"backend": "cuda"}, "backend must be one of"),
    ],
)
def test_bad_input_raises_value_error(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pairwise_distance(*args, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("metric", METRICS)
def test_nan_inf_rejected(bad, metric):
    x = torch.randn(5, 6)
    x[2, 3] = bad
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        pairwise_distance(x, torch.randn(4, 6), metric, backend="torch")
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        pairwise_distance(torch.randn(4, 6), x, metric, backend="torch")
    with pytest.raises(ValueError, match="NaN or Inf"):
        pairwise_distance(x.requires_grad_(), metric=metric, backend="torch")


def test_not_a_tensor_is_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        pairwise_distance([[1.0, 2.0]])


def test_triton_backend_on_cpu_without_interpreter_is_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        pairwise_distance(torch.randn(3, 4), backend="triton")


def test_import_does_not_import_triton():
    code = (
        "import sys, torch\n"
        "import fastccreid.kernels as k\n"
        "x = torch.randn(5, 4, requires_grad=True)\n"
        "k.pairwise_distance(x, x, 'cosine').sum().backward()\n"
        "k.batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1, 2])).backward()\n"
        "print('triton' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTCCREID_BACKEND")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("self_distance", [False, True])
def test_torch_compile_fullgraph_torch_path(metric, self_distance):
    """torch.compile sees through the torch path (custom autograd.Function) without a graph break, and its gradient
    is eager's: on torch 2.11 the euclidean one was all zeros while the epilogue ran in place (every metric, and the
    y = x Gram path, checked; a weighted sum so that every element's gradient counts)."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    w = torch.rand(6, 6 if self_distance else 5, generator=gen)

    def f(a, b):
        return (pairwise_distance(a, None if self_distance else b, metric, backend="torch") * w).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    x = torch.randn(6, 8, generator=gen, requires_grad=True)
    y = torch.randn(5, 8, generator=gen)
    out = compiled(x, y)
    out.backward()
    x2 = x.detach().clone().requires_grad_()
    f(x2, y).backward()
    torch.testing.assert_close(out, f(x2, y))
    assert x2.grad.abs().max() > 0.1
    torch.testing.assert_close(x.grad, x2.grad)
