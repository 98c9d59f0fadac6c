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


def _valid_queries(qp, gp, qc, gc) -> int:
    """Queries with a true match under the market protocol (a gallery image of the same id from another camera),
    counted from the labels alone: per id, the set of its gallery cameras."""
    cams: dict[int, set[int]] = {}
    for p, c in zip(gp.tolist(), gc.tolist(), strict=True):
        cams.setdefault(p, set()).add(c)
    return sum(1 for p, c in zip(qp.tolist(), qc.tolist(), strict=True) if cams.get(p, set()) - {c})


def _check_against_reference_on_queries(data, n: int, g: int | None = None) -> None:
    """The fast path on the first ``n`` queries (against the first ``g`` gallery items; all by default) equals the
    reference there (its dense [n, G] arrays fit where the whole query set's do not)."""
    qf, gf, qp, gp, qc, gc = data
    sub = (qf[:n].float(), gf[:g].float(), qp[:n], gp[:g], qc[:n], gc[:g])
    ref_cmc, ref_map, *_ = _reference_eval(*sub)
    res = fast_eval(*sub)
    assert abs(res.mAP - float(ref_map)) < 1e-5
    np.testing.assert_allclose(res.cmc, ref_cmc[: len(res.cmc)], atol=1e-5)


def test_eval_msmt17_fast_only(benchmark):
    data = _data("msmt17")
    res = benchmark.pedantic(fast_eval, args=data, rounds=1, iterations=1)
    benchmark.extra_info.update(peak_rss_mib=peak_rss_bytes() / 2**20, mAP=res.mAP, rank1=res.rank(1))
    assert res.num_queries == len(data[2])
    assert res.num_valid_queries == _valid_queries(*data[2:])
    assert 0.0 < res.mAP < 1.0 and np.all(np.diff(res.cmc) >= 0) and res.cmc[-1] <= 1.0
    _check_against_reference_on_queries(data, 64)


@pytest.mark.slow
def test_eval_10k_by_1m_fast_only(benchmark):
    """10,000 queries against 1,000,000 gallery items, D=2048 (features stored bf16 to fit; computed in fp32)."""
    nq, ng, nid = 10_000, 1_000_000, 20_000
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid, dtype=torch.bfloat16)
    res = benchmark.pedantic(fast_eval, args=(qf, gf, qp, gp, qc, gc), rounds=1, iterations=1)
    benchmark.extra_info.update(peak_rss_mib=peak_rss_bytes() / 2**20, mAP=res.mAP)
    print(f"10k x 1M: {benchmark.stats.stats.median:.1f} s, peak RSS {peak_rss_bytes() / 2**30:.2f} GiB")
    assert res.num_queries == nq and res.num_valid_queries == _valid_queries(qp, gp, qc, gc)
    assert 0.0 < res.mAP < 1.0 and np.all(np.diff(res.cmc) >= 0) and res.cmc[-1] <= 1.0
    _check_against_reference_on_queries((qf, gf, qp, gp, qc, gc), 16, 50_000)  # fp32 copy: 400 MB
