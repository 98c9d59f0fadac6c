"""Evaluation from features, fast vs the seed's reference, at real dataset sizes (D=2048), with pytest-benchmark.

Run: ``python -m pytest benchmarks/test_bench_eval.py --benchmark-only`` (add ``-m slow`` for 10k x 1M). The
reference (dense fp32 distance matrix + numpy argsort + per-query Python loop) runs once per size; it cannot hold
MSMT17's matrices, so MSMT17 and 10k x 1M are fast-only. Peak RSS goes into ``extra_info``; timings are never
asserted, only the results' agreement with the reference.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from fastccreid.bench import peak_rss_bytes
from fastccreid.bench.eval import CASES, _reference_eval, fast_eval, make_features


def _data(name):
    nq, ng, nid = CASES[name]
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid)
    return qf, gf, qp, gp, qc, gc


@pytest.mark.parametrize("name", ["ltcc", "celeb"])
def test_eval_fast_vs_reference(benchmark, name):
    torch.set_num_threads(torch.get_num_threads())
    data = _data(name)
    t0 = time.perf_counter()
    ref_cmc, ref_map, *_ = _reference_eval(*data)
    t_ref = time.perf_counter() - t0
    res = benchmark.pedantic(fast_eval, args=data, rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(reference_s=t_ref, speedup=t_ref / benchmark.stats.stats.median,
                                peak_rss_mib=peak_rss_bytes() / 2**20, mAP=res.mAP, rank1=res.rank(1))
    assert abs(res.mAP - float(ref_map)) < 1e-6
    np.testing.assert_allclose(res.cmc, ref_cmc[: len(res.cmc)], atol=1e-6)


def test_eval_msmt17_fast_only(benchmark):
    data = _data("msmt17")
    res = benchmark.pedantic(fast_eval, args=data, rounds=1, iterations=1)
    benchmark.extra_info.update(peak_rss_mib=peak_rss_bytes() / 2**20, mAP=res.mAP, rank1=res.rank(1))
    assert res.num_valid_queries > 0


@pytest.mark.slow
def test_eval_10k_by_1m_fast_only(benchmark):
    """10,000 queries against 1,000,000 gallery items, D=2048 (features stored bf16 to fit; computed in fp32)."""
    nq, ng, nid = 10_000, 1_000_000, 20_000
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid, dtype=torch.bfloat16)
    res = benchmark.pedantic(fast_eval, args=(qf, gf, qp, gp, qc, gc), rounds=1, iterations=1)
    benchmark.extra_info.update(peak_rss_mib=peak_rss_bytes() / 2**20, mAP=res.mAP)
    print(f"10k x 1M: {benchmark.stats.stats.median:.1f} s, peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")
    assert res.num_valid_queries > 0
