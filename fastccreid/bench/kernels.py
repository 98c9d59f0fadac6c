"""``fastccreid bench kernels``: the distance and triplet kernels, fast vs the seed's formulation, D=2048.

Cases (one "fast" and one "reference" row each):
- ``triplet B=<B>``: batch-hard triplet loss forward + backward at training sizes B = 32, 64, 256, 512
  (P x K = B/4 x 4); reference = ``euclidean_dist`` + ``hard_example_mining`` + MarginRankingLoss, as the seed.
- ``pdist B=<B>``: the [B, B] training distance; reference = the seed's addmm ``euclidean_dist``.
- ``pdist eval 493x7050``: LTCC-sized query x gallery euclidean distances.
On CUDA also pdist at 1024, 4096 and 8192 rows and the triplet forward at B = 1024 and 4096, each with its
FLOP rate as a fraction of cuBLAS's ``x @ y.T`` on the same shapes, several calls per timed unit, timed on the
device by CUDA events (the host syncs around a unit are outside what is timed). Each row carries the median time
(wall on CPU, device on CUDA), process peak RSS, and in ``extra`` the peak RSS growth during one call
(``peak_rss_delta_bytes``, measured by resetting the kernel's high-water mark) plus, on CUDA, the peak of
allocated device memory. Quick mode (< 60 s on 2 cores): B = 32 and 256, and the LTCC-sized distance.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from fastccreid.bench.common import BenchRow, interleaved_medians, keep_partial, peak_rss_bytes
from fastccreid.kernels import batch_hard_triplet_loss, pairwise_distance
from fastccreid.reference.losses import TripletLoss, euclidean_dist

D = 2048
TRIPLET_SIZES = (32, 64, 256, 512)
QUICK_TRIPLET_SIZES = (32, 256)
EVAL_SIZE = (493, 7050)
CUDA_PDIST_SIZES = (1024, 4096, 8192)  # CUDA only: [M, M] distances, D = 2048
CUDA_TRIPLET_SIZES = (1024, 4096)


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss_delta(fn: Callable[[], object]) -> int | None:
    """Peak RSS growth of the process during one ``fn()`` call (Linux: resets VmHWM via /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    fn()
    after = _status_bytes("VmHWM")
    if before is None or after is None:
        return None
    return max(0, after - before)


def _cuda_peak(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def _rows(case: str, fns: dict[str, Callable[[], object]], items: int, repeats: int, device: torch.device,
          extra: dict | None = None) -> list[BenchRow]:
    med = interleaved_medians(fns, repeats, device, events=True)  # CUDA: event-timed, syncs outside
    rows = []
    for path, fn in fns.items():
        info = dict(extra or {})
        info["peak_rss_delta_bytes"] = peak_rss_delta(fn)
        info["cuda_peak_alloc_bytes"] = _cuda_peak(fn, device)
        info["threads"] = torch.get_num_threads()
        rows.append(BenchRow(suite="kernels", case=case, path=path, median_s=med[path],
                             items_per_s=items / med[path] if med[path] > 0 else 0.0,
                             peak_rss_bytes=peak_rss_bytes(), repeats=repeats, items=items, extra=info))
    return rows


def triplet_case(b: int, device: torch.device, repeats: int, seed: int = 0) -> list[BenchRow]:
    """Forward + backward of the batch-hard triplet loss (margin 0.3) on a P x 4 batch of B random features."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D, generator=gen).to(device).requires_grad_()
    labels = torch.arange(b // 4, device=device).repeat_interleave(4)
    ref = TripletLoss(0.3)

    def reference():
        x.grad = None
        ref(x, labels).backward()

    def fast():
        x.grad = None
        batch_hard_triplet_loss(x, labels, margin=0.3).backward()

    return _rows(f"triplet fwd+bwd B={b} D={D}", {"fast": fast, "reference": reference}, b, repeats, device)


def _inner_calls(flops: float, device: torch.device) -> int:
    """Calls per timed unit on CUDA: enough that one unit does >= ~0.25 TFLOP (~5 ms at 50 TFLOP/s), so the two
    host syncs around it and the launch overhead are a small part of what is timed; 1 on CPU."""
    if device.type != "cuda":
        return 1
    return int(min(200, max(1, round(2.5e11 / flops))))


def _repeat(fn: Callable[[], object], n: int) -> Callable[[], object]:
    if n == 1:
        return fn

    def run() -> None:
        for _ in range(n):
            fn()
    return run


def pdist_case(m: int, n: int, device: torch.device, repeats: int, seed: int = 0) -> list[BenchRow]:
    """Euclidean distance [M, N] (forward only), ours vs the seed's addmm ``euclidean_dist``. On CUDA each timed
    unit runs ``inner`` calls between its two host syncs, and the rows carry the cuBLAS ``x @ y.T`` time on the
    same shapes and ``fraction_of_cublas_flop_rate`` (cuBLAS time / this path's time, the GEMM FLOPs 2 M N D alike)
    for shapes of >= 1024 rows or columns (smaller ones mostly time launches)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, D, generator=gen).to(device)
    y = x if m == n else torch.randn(n, D, generator=gen).to(device)
    flops = 2.0 * m * n * D
    inner = _inner_calls(flops, device)
    extra: dict = {"flops": flops, "calls_per_timed_unit": inner}
    fns = {"fast": _repeat(lambda: pairwise_distance(x, y, "euclidean"), inner),
           "reference": _repeat(lambda: euclidean_dist(x, y), inner)}
    if device.type == "cuda":
        mm = interleaved_medians({"mm": _repeat(lambda: x @ y.t(), inner)}, repeats, device, events=True)["mm"]
        extra["cublas_s"] = mm / inner
    rows = _rows(f"pdist euclidean {m}x{n} D={D}", fns, m * n * inner, repeats, device, extra)
    for r in rows:  # per call, not per timed unit
        r.median_s /= inner
        r.items //= inner
        if device.type == "cuda" and max(m, n) >= 1024:
            r.extra["fraction_of_cublas_flop_rate"] = extra["cublas_s"] / r.median_s
    return rows


def triplet_forward_case(b: int, device: torch.device, repeats: int, seed: int = 0) -> list[BenchRow]:
    """CUDA only: the fused batch-hard triplet forward (Triton: distance tiles + mining) at B >= 1024 against the
    cuBLAS Gram ``x @ x.T`` it must at least compute (``fraction_of_cublas_flop_rate``), host syncs outside each
    timed unit of ``inner`` calls; reference = the seed's TripletLoss forward."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D, generator=gen).to(device)
    labels = torch.arange(b // 4, device=device).repeat_interleave(4)
    flops = 2.0 * b * b * D
    inner = _inner_calls(flops, device)
    ref = TripletLoss(0.3)
    cublas = interleaved_medians({"mm": _repeat(lambda: x @ x.t(), inner)}, repeats, device, events=True)["mm"] / inner
    extra = {"flops": flops, "calls_per_timed_unit": inner, "cublas_s": cublas}
    rows = _rows(f"triplet fwd B={b} D={D}", {"fast": _repeat(lambda: batch_hard_triplet_loss(x, labels, 0.3), inner),
                                             "reference": _repeat(lambda: ref(x, labels), inner)},
                 b * inner, repeats, device, extra)
    for r in rows:
        r.median_s /= inner
        r.items //= inner
        r.items_per_s = r.items / r.median_s
        r.extra["fraction_of_cublas_flop_rate"] = cublas / r.median_s
    return rows


def run(quick: bool) -> list[BenchRow]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = QUICK_TRIPLET_SIZES if quick else TRIPLET_SIZES
    repeats = int(os.environ.get("FASTCCREID_BENCH_REPEATS", 15 if quick else 30))
    rows: list[BenchRow] = []
    for b in sizes:
        rows += triplet_case(b, device, repeats)
        keep_partial(rows)
    for b in sizes:
        rows += pdist_case(b, b, device, repeats)
        keep_partial(rows)
    rows += pdist_case(*EVAL_SIZE, device, max(3, repeats // 5))
    keep_partial(rows)
    if device.type == "cuda":  # the FLOP-rate figures: shapes where the GEMM, not the launch, is timed
        for m in CUDA_PDIST_SIZES:
            rows += pdist_case(m, m, device, max(3, repeats // 3))
            keep_partial(rows)
        for b in CUDA_TRIPLET_SIZES:
            rows += triplet_forward_case(b, device, max(3, repeats // 3))
            keep_partial(rows)
    return rows
