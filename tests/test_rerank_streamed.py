"""Streamed, vectorised k-reciprocal re-ranking (issue 27): ``evaluate(rerank=True)`` goes query chunk by query
chunk and never holds a Q×G array; it equals the dense oracle (the seed's algorithm with fp32 Jaccard sums,
tests/helpers/rerank_cases.py) to 1e-6 in distance and exactly in CMC / mAP on ties, k1 larger than the gallery,
duplicate features and a single query; the streamed evaluation equals evaluating the dense re-ranked matrix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from helpers.eval_cases import exact_rows
from helpers.rerank_cases import dense_rerank_fp32_jaccard

import fastccreid.rerank as rerank_mod
from fastccreid.metrics import evaluate
from fastccreid.rerank import build_reranker, re_ranking


def _case(kind: str, seed: int = 0):
    """(q [Q, D], g [G, D], labels) for one edge case; features already as evaluate(normalize=False) uses them."""
    gen = torch.Generator().manual_seed(seed)
    nq, ng, d, nid = {"random": (20, 70, 16, 10), "ties": (18, 60, 12, 8), "tiny": (3, 9, 6, 3),
                      "duplicates": (16, 60, 16, 8), "single": (1, 40, 16, 6)}[kind]
    if kind == "ties":  # every distance exact in fp32: many exact ties, broken by index everywhere
        q, g = exact_rows(gen, nq, d, nnz=2), exact_rows(gen, ng, d, nnz=2)
    else:
        cent = torch.randn(nid, d, generator=gen)
        q = cent[torch.randint(0, nid, (nq,), generator=gen)] + 0.6 * torch.randn(nq, d, generator=gen)
        g = cent[torch.randint(0, nid, (ng,), generator=gen)] + 0.6 * torch.randn(ng, d, generator=gen)
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    if kind == "duplicates":  # exact copies inside the gallery and between query and gallery
        g[1::4] = g[0::4][: g[1::4].shape[0]]
        q[:4] = g[8:12]
    # labels from the features' nearest gallery item so that most queries have matches
    qp = torch.randint(0, nid, (nq,), generator=gen)
    gp = torch.randint(0, nid, (ng,), generator=gen)
    gp[: min(nq, ng)] = qp[: min(nq, ng)]
    lab = dict(q_pids=qp, g_pids=gp, q_camids=torch.zeros(nq, dtype=torch.int64),
               g_camids=torch.randint(0, 3, (ng,), generator=gen) + 1,
               q_clothes=torch.randint(0, 2, (nq,), generator=gen), g_clothes=torch.randint(0, 2, (ng,), generator=gen))
    return q, g, lab


CASES = [("random", 20, 6, 0.3), ("random", 8, 3, 0.5), ("ties", 20, 6, 0.3), ("ties", 6, 1, 0.3),
         ("tiny", 20, 6, 0.3), ("duplicates", 20, 6, 0.3), ("duplicates", 5, 2, 0.7), ("single", 20, 6, 0.3)]


@pytest.mark.parametrize("kind,k1,k2,lam", CASES)
def test_equals_dense_oracle(kind, k1, k2, lam):
    """re_ranking to 1e-6 of the oracle; evaluate(rerank=True) (streamed) exactly the oracle matrix's CMC / mAP."""
    q, g, lab = _case(kind)
    want = dense_rerank_fp32_jaccard(q, g, k1, k2, lam)
    got = re_ranking(q, g, k1=k1, k2=k2, lambda_value=lam)
    assert got.shape == want.shape == (q.shape[0], g.shape[0])
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    for protocol in ("market", "ltcc-cc"):
        a = evaluate(torch.from_numpy(want), protocol=protocol, **lab)
        b = evaluate(qf=q, gf=g, protocol=protocol, normalize=False, rerank=True, rerank_k1=k1, rerank_k2=k2,
                     rerank_lambda=lam, return_per_query=True, **lab)
        c = evaluate(torch.from_numpy(got), protocol=protocol, return_per_query=True, **lab)
        assert a.mAP == b.mAP and a.mINP == b.mINP and np.array_equal(a.cmc, b.cmc)
        assert np.array_equal(b.all_AP, c.all_AP) and np.array_equal(b.valid_query_index, c.valid_query_index)


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_many_chunks_and_blocks(monkeypatch, kind):
    """Tiny budgets (one query per chunk, 16-row neighbour blocks, expansion blocks of 7 pairs): within fp32 ulps
    of one chunk (BLAS products of other shapes round differently), the same bits where every distance is exact,
    and the streamed evaluation equals evaluating the dense matrix made of the same chunks: the same CMC, and the
    same mAP to 1e-12 (``rank_stats`` itself sums a query's precisions in an order that depends on its chunk's
    padded match width: the last bit of an AP can move with the query chunking, on any input)."""
    q, g, lab = _case(kind, seed=3)
    one = re_ranking(q, g)
    monkeypatch.setattr(rerank_mod, "QUERY_CHUNK_BYTES", 1)
    monkeypatch.setattr(rerank_mod, "NEIGHBOUR_CHUNK_BYTES", 1)
    monkeypatch.setattr(rerank_mod, "PAIR_BUDGET", 64)
    monkeypatch.setattr(rerank_mod, "EXPANSION_BLOCK", 7)
    rr = build_reranker(q, g)
    assert len(rr.boundaries()) - 1 == q.shape[0]  # one query per chunk
    many = np.concatenate([d.numpy() for _, _, d in rr.chunks()])
    if kind == "ties":
        np.testing.assert_array_equal(many, one)
    else:
        np.testing.assert_allclose(many, one, atol=1e-6, rtol=0)
    a = evaluate(torch.from_numpy(re_ranking(q, g)), **lab)
    b = evaluate(qf=q, gf=g, normalize=False, rerank=True, **lab)
    assert abs(a.mAP - b.mAP) <= 1e-12 and np.array_equal(a.cmc, b.cmc)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_queries_without_gallery_identity(monkeypatch, chunk_size):
    """Queries whose identity has no gallery item among others in the same chunk (their rows are left out of the
    chunk's rank statistics), with and without row slices of each chunk: per query as evaluating the dense matrix."""
    q, g, lab = _case("random", seed=5)
    lab["q_pids"] = lab["q_pids"].clone()
    lab["q_pids"][1::3] = 1000 + torch.arange(lab["q_pids"][1::3].numel())  # no gallery item has these pids
    monkeypatch.setattr(rerank_mod, "QUERY_CHUNK_BYTES", 4 * 8 * (q.shape[0] + g.shape[0]))  # 8-query chunks
    a = evaluate(torch.from_numpy(re_ranking(q, g)), return_per_query=True, **lab)
    b = evaluate(qf=q, gf=g, normalize=False, rerank=True, chunk_size=chunk_size, return_per_query=True, **lab)
    assert np.array_equal(a.valid_query_index, b.valid_query_index) and np.array_equal(a.cmc, b.cmc)
    np.testing.assert_allclose(b.all_AP, a.all_AP, atol=1e-12, rtol=0)
    np.testing.assert_allclose(b.all_INP, a.all_INP, atol=1e-12, rtol=0)


def test_distance_input_with_exact_ties():
    q, g, _ = _case("ties", seed=1)

    def sq(a, b):
        return ((a[:, None, :] - b[None]) ** 2).sum(-1)

    a = re_ranking(q, g, k1=8, k2=3)
    b = re_ranking(q_g_dist=sq(q, g), q_q_dist=sq(q, q), g_g_dist=sq(g, g), k1=8, k2=3)
    np.testing.assert_array_equal(a, b)  # every distance exact: the two inputs give the same bits


@pytest.mark.parametrize("kind", ["random", "duplicates"])
def test_held_block_buffer_gives_the_same_bits(monkeypatch, kind):
    """The neighbour search's blocks written into one held buffer (what blocks of >= 32 MiB get) give the bits of
    fresh blocks: a stale or overlapping view of the buffer would change the neighbours or the row maxima."""
    q, g, _ = _case(kind, seed=4)
    monkeypatch.setattr(rerank_mod, "NEIGHBOUR_CHUNK_BYTES", 1)  # 16-row blocks: many reuses of the buffer
    fresh = re_ranking(q, g)
    monkeypatch.setattr(rerank_mod, "HELD_MIN_ELEMENTS", 0)
    held = re_ranking(q, g)
    np.testing.assert_array_equal(held, fresh)
    np.testing.assert_allclose(held, dense_rerank_fp32_jaccard(q, g, 20, 6, 0.3), atol=1e-6, rtol=0)


def test_distance_input_is_not_modified():
    """The caller's distance matrices (numpy, sharing memory with the tensors we read) come back unchanged."""
    q, g, _ = _case("random", seed=2)

    def sq(a, b):
        return ((a[:, None, :] - b[None]) ** 2).sum(-1).numpy()

    mats = dict(q_g_dist=sq(q, g), q_q_dist=sq(q, q), g_g_dist=sq(g, g))
    keep = {k: v.copy() for k, v in mats.items()}
    re_ranking(k1=8, k2=3, **mats)
    for k, v in mats.items():
        np.testing.assert_array_equal(v, keep[k], err_msg=k)


def test_bad_distance_input():
    with pytest.raises(ValueError, match="q_g_dist"):
        re_ranking(q_g_dist=np.zeros(3), q_q_dist=np.zeros((3, 3)), g_g_dist=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shapes disagree"):
        re_ranking(q_g_dist=np.zeros((3, 4)), q_q_dist=np.zeros((3, 3)), g_g_dist=np.zeros((5, 5)))


PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    import fastccreid.rerank as R
    from fastccreid.metrics import evaluate
    R.NEIGHBOUR_CHUNK_BYTES = R.QUERY_CHUNK_BYTES = 8 << 20
    nq, ng, d, nid = int(sys.argv[1]), 8000, 16, 400
    gen = torch.Generator().manual_seed(0)
    cent = torch.randn(nid, d, generator=gen)
    qp, gp = torch.randint(0, nid, (nq,), generator=gen), torch.randint(0, nid, (ng,), generator=gen)
    q = cent[qp] + 0.5 * torch.randn(nq, d, generator=gen)
    g = cent[gp] + 0.5 * torch.randn(ng, d, generator=gen)
    qc, gc = torch.zeros(nq, dtype=torch.int64), torch.ones(ng, dtype=torch.int64)
    # warm-up on a smaller problem (libraries, allocator pools), then the peak RSS growth of the real one
    evaluate(qf=q[:300], gf=g[:600], q_pids=qp[:300], g_pids=gp[:600], q_camids=qc[:300], g_camids=gc[:600],
             rerank=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    r = evaluate(qf=q, gf=g, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, rerank=True)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base, nq * ng * 4, r.mAP)
""")


def test_streamed_evaluation_never_holds_q_by_g():
    """G 8,000 with 8 MiB chunk budgets, Q 1,500 and Q 6,000 (each in a fresh process, after a warm-up): a dense
    Q×G float32 grows by 144 MB between the two; the evaluation's peak RSS growth may grow by under 3/4 of that, so
    allocating one (the old dense path held three) fails the test. Measured: +25 MB (84 -> 109 MB). The difference
    cancels what a single size's growth also holds (library pages first touched after the warm-up, the allocator's
    pools, the O(N·k1·k2) query-expansion product, whose peak moves with what the warm-up left)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    grew, dense = {}, {}
    for nq in (1500, 6000):
        out = subprocess.run([sys.executable, "-c", PROBE, str(nq)], capture_output=True, text=True, env=env,
                             check=True)
        g, dm, m_ap = out.stdout.split()
        assert 0 < float(m_ap) <= 1
        grew[nq], dense[nq] = int(g), int(dm)
    assert grew[6000] - grew[1500] < 0.75 * (dense[6000] - dense[1500]), \
        f"peak RSS growth {grew[1500] / 2**20:.0f} -> {grew[6000] / 2**20:.0f} MiB; dense Q×G " \
        f"{dense[1500] / 2**20:.0f} -> {dense[6000] / 2**20:.0f} MiB"


@pytest.mark.parametrize("kq", [2, 4, 7, 21])
def test_symmetric_neighbour_search_equals_a_full_sort(monkeypatch, kq):
    """The neighbour search from features (each pair once, 16-row blocks, running top-kq lists filtered by their
    current worst; transposed tiles, held buffers) against numpy's stable argsort of the exact distances: the same
    kq nearest (ties by index), distances and row maxima, with lists that the later blocks must displace (kq << N)."""
    gen = torch.Generator().manual_seed(kq)
    # small integers: every distance exact in fp32 and in fp64, many distinct values and some ties
    q, g = (torch.randint(-3, 4, (m, 10), generator=gen).float() for m in (30, 131))
    g[40:45] = g[3]  # exact duplicates: ties at every cut
    monkeypatch.setattr(rerank_mod, "NEIGHBOUR_CHUNK_BYTES", 1)
    monkeypatch.setattr(rerank_mod, "TRANSPOSE_TILE", 7)  # the first blocks' columns in several odd-sized tiles
    monkeypatch.setattr(rerank_mod, "HELD_MIN_ELEMENTS", 0)  # and every block and mask in the held buffers
    rows, upper, *_ = rerank_mod._inputs(q, g, None, None, None)
    assert upper is not None
    n = q.shape[0] + g.shape[0]
    idx, val, mx = rerank_mod._neighbours_symmetric(upper, n, kq, torch.device("cpu"))
    f = torch.cat([q, g]).numpy().astype(np.float64)
    d = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    want = np.argsort(d, axis=1, kind="stable")[:, :kq]
    np.testing.assert_array_equal(idx.numpy(), want)
    np.testing.assert_array_equal(val.numpy(), np.take_along_axis(d, want, 1).astype(np.float32))
    np.testing.assert_array_equal(mx.numpy(), d.max(1).astype(np.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stacked_features_are_one_buffer_with_the_same_bits(dtype):
    """``stack_features`` writes the normalised (or converted) rows into one [Q + G, D] fp32 buffer: the bits of
    ``normalize_features`` / ``.float()``; re-ranking then reads that buffer in place (no concatenated copy) and gets
    the bits of separate tensors; rows that do not directly follow each other are concatenated, never aliased."""
    from fastccreid.metrics import normalize_features

    q, g, _ = _case("random", seed=6)
    q, g = (3 * q).to(dtype), (3 * g).to(dtype)
    qs, gs = rerank_mod.stack_features(q, g, normalize=True)
    assert qs.dtype == gs.dtype == torch.float32
    assert torch.equal(qs, normalize_features(q).float()) and torch.equal(gs, normalize_features(g).float())
    raw_q, raw_g = rerank_mod.stack_features(q, g, normalize=False)
    assert torch.equal(raw_q, q.float()) and torch.equal(raw_g, g.float())
    both = rerank_mod._stacked(qs, gs)
    assert both.data_ptr() == qs.data_ptr() and torch.equal(both, torch.cat([qs, gs]))
    buf = torch.cat([qs, qs[:1], gs])  # a row between the two: not adjacent
    for a, b in ((buf[: len(qs)], buf[len(qs) + 1 :]), (gs, qs), (qs[:, :8], gs[:, :8])):
        got = rerank_mod._stacked(a, b)
        assert got.data_ptr() != a.data_ptr() and torch.equal(got, torch.cat([a, b]))
    one = np.concatenate([d.numpy() for _, _, d in build_reranker(qs, gs).chunks()])
    sep = np.concatenate([d.numpy() for _, _, d in build_reranker(qs.clone(), gs.clone()).chunks()])
    np.testing.assert_array_equal(one, sep)
