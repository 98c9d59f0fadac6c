"""CSSC train-step throughput at 384x192, batch 8: fast path (AMP + channels_last + fused losses + fused Adam,
compile where default) vs the seed's eager fp32 step, same batch, same initial weights, with pytest-benchmark.

Run: ``python -m pytest benchmarks/test_bench_train.py --benchmark-only -s``. Timings are reported (speed-up,
images/s, peak memory per image in ``extra_info``), never asserted; what is asserted is that both paths compute the
same loss on the first step (bf16 vs fp32 within 2%).
"""

from __future__ import annotations

import time

import torch

from fastccreid.bench.train import _batch, _PeakMemory, make_fast_step, make_reference_step


def test_train_step_fast_vs_reference(benchmark):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    imgs, pids = _batch(384, 192, 8, device)
    fast, desc = make_fast_step(device)
    first_fast = float(fast(imgs, pids))
    with _PeakMemory(device) as fast_mem:
        benchmark.pedantic(fast, args=(imgs, pids), rounds=3, warmup_rounds=0, iterations=1)
    del fast
    ref = make_reference_step(device)
    first_ref = ref(imgs, pids)
    times = []
    with _PeakMemory(device) as ref_mem:
        for _ in range(2):
            t0 = time.perf_counter()
            ref(imgs, pids)
            times.append(time.perf_counter() - t0)
    ref_s = min(times)
    fast_s = benchmark.stats.stats.median
    benchmark.extra_info.update(
        **desc, reference_s=ref_s, speedup=ref_s / fast_s, fast_img_per_s=8 / fast_s, reference_img_per_s=8 / ref_s,
        fast_peak_mem_per_image_mib=fast_mem.peak / 8 / 2**20,
        reference_peak_mem_per_image_mib=ref_mem.peak / 8 / 2**20,
    )
    print(f"\ntrain step 384x192 b8 on {device}: fast {8 / fast_s:.2f} img/s ({desc}), reference {8 / ref_s:.2f} img/s,"
          f" speed-up {ref_s / fast_s:.2f}x; peak memory per image fast {fast_mem.peak / 8 / 2**20:.0f} MiB, "
          f"reference {ref_mem.peak / 8 / 2**20:.0f} MiB")
    assert abs(first_fast - first_ref) / abs(first_ref) < 0.02
