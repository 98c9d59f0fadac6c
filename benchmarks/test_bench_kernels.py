"""Kernel benchmarks with pytest-benchmark: batch-hard triplet forward + backward and pairwise distance, fast vs the
seed's formulation, D=2048, at training sizes (B = 32, 64, 256, 512) and an evaluation size (LTCC, 493 x 7,050).

Run: ``python -m pytest benchmarks/test_bench_kernels.py --benchmark-only``. The fast path and the reference are
benchmarked as separate entries of one group per case (compare them in pytest-benchmark's table); the fast entry's
``extra_info`` also holds the reference's interleaved median and the speed-up, plus peak RSS growth per call and,
on CUDA, the fraction of cuBLAS's FLOP rate. Timings are never asserted, only that both paths agree.
"""

from __future__ import annotations

import pytest
import torch

from fastccreid.bench.common import interleaved_medians
from fastccreid.bench.kernels import EVAL_SIZE, TRIPLET_SIZES, D, peak_rss_delta
from fastccreid.kernels import batch_hard_triplet_loss, pairwise_distance
from fastccreid.reference.losses import TripletLoss, euclidean_dist

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _triplet_fns(b: int):
    gen = torch.Generator().manual_seed(b)
    x = torch.randn(b, D, generator=gen).to(DEVICE).requires_grad_()
    labels = torch.arange(b // 4, device=DEVICE).repeat_interleave(4)
    ref = TripletLoss(0.3)

    def reference():
        x.grad = None
        loss = ref(x, labels)
        loss.backward()
        return loss.detach(), x.grad.clone()

    def fast():
        x.grad = None
        loss = batch_hard_triplet_loss(x, labels, margin=0.3)
        loss.backward()
        return loss.detach(), x.grad.clone()

    return fast, reference


@pytest.mark.parametrize("b", TRIPLET_SIZES)
@pytest.mark.parametrize("path", ["fast", "reference"])
def test_triplet_fwd_bwd(benchmark, b, path):
    fast, reference = _triplet_fns(b)
    benchmark.group = f"triplet fwd+bwd B={b} D={D}"
    fn = fast if path == "fast" else reference
    (loss, grad) = benchmark.pedantic(fn, rounds=20, warmup_rounds=2, iterations=1)
    ref_loss, ref_grad = reference()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
    benchmark.extra_info["peak_rss_delta_bytes"] = peak_rss_delta(fn)
    if path == "fast":
        med = interleaved_medians({"fast": fast, "reference": reference}, 20, DEVICE)
        benchmark.extra_info.update(interleaved_fast_s=med["fast"], interleaved_reference_s=med["reference"],
                                    speedup=med["reference"] / med["fast"])


@pytest.mark.parametrize("shape", [(32, 32), (256, 256), (512, 512), EVAL_SIZE], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("path", ["fast", "reference"])
def test_pairwise_distance(benchmark, shape, path):
    m, n = shape
    gen = torch.Generator().manual_seed(m + n)
    x = torch.randn(m, D, generator=gen).to(DEVICE)
    y = x if m == n else torch.randn(n, D, generator=gen).to(DEVICE)
    benchmark.group = f"pdist euclidean {m}x{n} D={D}"
    fn = (lambda: pairwise_distance(x, y, "euclidean")) if path == "fast" else (lambda: euclidean_dist(x, y))
    out = benchmark.pedantic(fn, rounds=5 if m * n > 10**6 else 20, warmup_rounds=1, iterations=1)
    ref = euclidean_dist(x, y)
    if y is x:  # self-distances: ours are exactly the 1e-6 floor, the seed's sqrt(rounding noise of ~1e3-sized norms)
        off = ~torch.eye(m, dtype=torch.bool, device=DEVICE)
        out, ref = out[off], ref[off]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-3)
    benchmark.extra_info["peak_rss_delta_bytes"] = peak_rss_delta(fn)
    if DEVICE.type == "cuda":
        mm = interleaved_medians({"mm": lambda: x @ y.t()}, 10, DEVICE)["mm"]
        benchmark.extra_info["fraction_of_cublas_flop_rate"] = mm / benchmark.stats.stats.median
