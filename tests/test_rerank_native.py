"""The re-ranking CPU kernels (kernels/csrc/rerank_cpu.c via ``fastccreid.kernels.rerank_cpu``; issue 27): the
block scan against a brute-force sort of the distances (any thread count, ties, duplicates, lists that later rows
must displace), and ``build_reranker(backend="native")`` against ``backend="torch"``: the same V, scales and
re-ranked chunks, bit for bit, on the streamed tests' edge cases with many neighbour blocks and query chunks.
The other re-ranking tests run the default ("auto": these kernels on CPU), so they check them against the oracles
too; this file keeps the torch path checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_rerank_streamed import CASES, _case

import fastccreid.rerank as rerank_mod
from fastccreid.kernels import rerank_cpu
from fastccreid.metrics import evaluate
from fastccreid.rerank import build_reranker


def test_kernels_are_built():
    """pip install builds them (setup.py); without them "auto" silently takes the slower torch path."""
    assert rerank_cpu.library_path() is not None and rerank_cpu.available()


def _brute(d: np.ndarray, kq: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the kq smallest by (distance, index) of the full [N, N] distance: numpy's stable argsort."""
    order = np.argsort(d, axis=1, kind="stable")[:, :kq]
    return order, np.take_along_axis(d, order, 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kq", [1, 3, 21])
def test_scan_blocks_equal_a_full_sort(threads, kq):
    """The symmetric neighbour search driven block by block through scan_block (odd block sizes, several threads'
    column ranges, a block narrower than kq) gives every row its kq nearest, their distances and its maximum."""
    gen = torch.Generator().manual_seed(kq * 10 + threads)
    f = torch.randint(-3, 4, (150, 9), generator=gen).float()  # exact distances: many ties
    f[60:66] = f[5]  # exact duplicates: ties at every cut
    n = f.shape[0]
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)  # exact in fp32
    inf = float("inf")
    val = torch.full((n, kq), inf)
    idx = torch.full((n, kq), -1, dtype=torch.int64)
    thr = torch.full((n,), inf)
    mx = torch.full((n,), -inf)
    for s, e in [(0, 37), (37, 38), (38, 100), (100, 149), (149, 150)]:
        rv, ri, rm = rerank_cpu.scan_block(d[s:e, s:].contiguous(), s, kq, val, idx, thr, mx, threads)
        mx[s:e] = torch.maximum(mx[s:e], rm)
        val[s:e], idx[s:e] = rerank_mod._merge(val[s:e], idx[s:e], rv, ri, kq)
        np.testing.assert_array_equal(thr[e:].numpy(), val[e:, kq - 1].numpy())  # the contiguous copy kept up
    want_i, want_v = _brute(d.numpy(), kq)
    np.testing.assert_array_equal(idx.numpy(), want_i)
    np.testing.assert_array_equal(val.numpy(), want_v)
    np.testing.assert_array_equal(mx.numpy(), d.numpy().max(1))


def test_scan_block_reads_a_strided_block():
    """A block that is a column slice of a wider buffer (row stride > width) is read with its stride."""
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(40, 5, generator=gen)
    d = torch.cdist(f, f).pow(2)
    wide = torch.full((40, 60), -7.0)
    wide[:, :40] = d
    kq = 4
    val, idx = torch.full((40, kq), float("inf")), torch.full((40, kq), -1, dtype=torch.int64)
    thr, mx = torch.full((40,), float("inf")), torch.full((40,), float("-inf"))
    rv, ri, rm = rerank_cpu.scan_block(wide[:, :40], 0, kq, val, idx, thr, mx, 2)
    got_v, got_i = rerank_mod._merge(val, idx, rv, ri, kq)
    want_i, want_v = _brute(d.numpy(), kq)
    np.testing.assert_array_equal(got_i.numpy(), want_i)
    np.testing.assert_array_equal(got_v.numpy(), want_v)
    np.testing.assert_array_equal(rm.numpy(), d.numpy().max(1))


def _same(a, b) -> None:
    for f in ("v_ptr", "v_col", "v_val", "g_ptr", "scale"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.boundaries() == b.boundaries()
    for (s0, e0, x), (s1, e1, y) in zip(a.chunks(), b.chunks(), strict=True):
        assert (s0, e0) == (s1, e1)
        assert torch.equal(x, y), float((x - y).abs().max())


@pytest.mark.parametrize("kind,k1,k2,lam", CASES)
@pytest.mark.parametrize("tiny", [False, True])
def test_native_equals_torch_bit_for_bit(monkeypatch, kind, k1, k2, lam, tiny):
    q, g, _ = _case(kind, seed=2)
    if tiny:  # many 16-row neighbour blocks and one-query chunks
        monkeypatch.setattr(rerank_mod, "NEIGHBOUR_CHUNK_BYTES", 1)
        monkeypatch.setattr(rerank_mod, "QUERY_CHUNK_BYTES", 1)
    a = build_reranker(q, g, k1, k2, lam, backend="torch")
    b = build_reranker(q, g, k1, k2, lam, backend="native")
    assert b.native and not a.native
    _same(a, b)


def test_native_with_two_threads_equals_torch():
    """The kernels split blocks by columns and chunks by rows over torch's thread count."""
    q, g, lab = _case("duplicates", seed=4)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = build_reranker(q, g, backend="torch")
        b = build_reranker(q, g, backend="native")
    finally:
        torch.set_num_threads(old)
    _same(a, b)


def test_distance_input_chunks_equal_torch():
    """Given distance matrices (no symmetric scan): the chunks' Jaccard sums by the kernel, the same bits."""
    q, g, _ = _case("random", seed=5)
    qg, qq, gg = torch.cdist(q, g).pow(2), torch.cdist(q, q).pow(2), torch.cdist(g, g).pow(2)
    a = build_reranker(q_g_dist=qg, q_q_dist=qq, g_g_dist=gg, backend="torch")
    b = build_reranker(q_g_dist=qg, q_q_dist=qq, g_g_dist=gg, backend="native")
    assert b.native
    _same(a, b)


def test_huge_features_take_the_torch_scan(monkeypatch):
    """Squared norms >= 2^120 could overflow a distance to inf, which the scan does not order as torch's top-k:
    such inputs take the torch neighbour search (the same answer as backend="torch")."""
    q, g, _ = _case("random", seed=7)
    q, g = q * 2.0**61, g * 2.0**61
    calls = []
    real = rerank_cpu.scan_block
    monkeypatch.setattr(rerank_cpu, "scan_block", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = build_reranker(q, g, backend="native")
    assert not calls
    a = build_reranker(q, g, backend="torch")
    _same(a, b)
    build_reranker(q / 2.0**61, g / 2.0**61, backend="native")
    assert calls  # (and ordinary features do use it)


def test_backend_argument():
    q, g, _ = _case("tiny")
    with pytest.raises(ValueError, match="backend must be one of"):
        build_reranker(q, g, backend="cuda")


def test_no_native_environment_falls_back(monkeypatch):
    """FASTCCREID_NO_NATIVE=1 hides the kernels: "auto" takes the torch path, "native" is refused by name."""
    q, g, lab = _case("random")
    monkeypatch.setenv("FASTCCREID_NO_NATIVE", "1")
    assert not build_reranker(q, g).native
    with pytest.raises(ValueError, match="backend='native' needs"):
        build_reranker(q, g, backend="native")
    a = evaluate(qf=q, gf=g, rerank=True, return_per_query=True, **lab)
    monkeypatch.delenv("FASTCCREID_NO_NATIVE")
    b = evaluate(qf=q, gf=g, rerank=True, return_per_query=True, **lab)
    assert a.mAP == b.mAP and np.array_equal(a.all_AP, b.all_AP) and np.array_equal(a.cmc, b.cmc)


def test_doctor_reports_the_kernels(monkeypatch):
    """``fastccreid doctor`` compares them with the torch path, and says "skipped" (not "ok") where they are hidden."""
    from fastccreid import doctor
    from fastccreid.doctor import SkipCheck

    def cpu_rank_stats_note() -> str:
        rows = doctor.backend_choices(devices=("cpu",), dtypes=(torch.float32,))
        return next(r["why"] for r in rows if r["op"] == "rank_stats")

    ok, detail = doctor.native_rerank_check().fn()
    assert ok and "identical" in detail
    assert "compiled CPU kernel" in cpu_rank_stats_note()
    monkeypatch.setenv("FASTCCREID_NO_NATIVE", "1")
    check = doctor.native_rerank_check()
    assert check.name.endswith("(skipped)")
    with pytest.raises(SkipCheck, match="not built"):
        check.fn()
    assert "compiled CPU kernel" not in cpu_rank_stats_note()


def test_threads_work_in_a_forked_child():
    """The kernels' thread pool is made again in a forked child (the parent's threads are not there)."""
    import multiprocessing as mp

    from fastccreid.kernels import _cpu_library

    d = torch.arange(12.0).view(3, 4)
    import time

    # the parent's pool with both threads started (two tasks at once) and idle again
    _cpu_library.run_parts(lambda x: time.sleep(0.3), [(1,), (2,)])
    time.sleep(0.1)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_fork_child, (d,)).get(timeout=30)  # (the parent's pool there: a hang)
    assert got == [1, 2]


def _fork_child(d):
    from fastccreid.kernels import _cpu_library

    return _cpu_library.run_parts(lambda x: x, [(1,), (2,)]) if d.numel() else []


def test_evaluate_backend_torch_keeps_torch_ops(monkeypatch):
    """evaluate(rerank=True, backend="torch") runs no kernel; "auto" runs all three; the same stats bits."""
    from fastccreid.kernels import rank_place_cpu

    q, g, lab = _case("ties", seed=8)
    calls = []
    for mod, name in ((rerank_cpu, "scan_block"), (rerank_cpu, "jaccard_rows"), (rank_place_cpu, "place_rows")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    a = evaluate(qf=q, gf=g, rerank=True, backend="torch", return_per_query=True, **lab)
    assert calls == []
    monkeypatch.setenv("FASTCCREID_BACKEND", "torch")  # the same through the environment's choice
    evaluate(qf=q, gf=g, rerank=True, return_per_query=True, **lab)
    assert calls == []
    monkeypatch.delenv("FASTCCREID_BACKEND")
    b = evaluate(qf=q, gf=g, rerank=True, return_per_query=True, **lab)
    assert {"scan_block", "jaccard_rows", "place_rows"} <= set(calls)
    assert a.mAP == b.mAP and np.array_equal(a.all_AP, b.all_AP) and np.array_equal(a.cmc, b.cmc)
