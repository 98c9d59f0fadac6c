"""The rank statistics' placement kernel (kernels/csrc/rank_place_cpu.c via ``fastccreid.kernels.rank_place_cpu``):
the histogram of "matches ranked before each non-match" against a brute-force stable sort of every row and against
torch's ``place``, on ties between matches and non-matches (broken by gallery index), equal match distances (a zero
width range), rows without matches, +inf / -inf distances, wide and narrow rows, 1-3 threads; NaN is refused.
And ``chunk_stats(native=True)`` gives the torch path's stats bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastccreid.kernels import rank_place_cpu
from fastccreid.kernels.rank_stats import Matches, chunk_stats, place, sorted_matches


def _case(seed: int, c: int, g: int, rmax: int, kind: str):
    """(dist [C, G] with matches and junk at +inf, ms, msidx, nmatch, ms_pad, the original distances, match idx)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":  # few distinct values: ties everywhere
        d = torch.randint(0, 6, (c, g), generator=gen).float()
    else:
        d = torch.rand(c, g, generator=gen) * 4 - 1
    if kind == "inf":
        d[0, ::5] = math.inf
        d[1, ::7] = -math.inf
    idx = torch.stack([torch.randperm(g, generator=gen)[:rmax] for _ in range(c)])
    is_match = torch.rand(c, rmax, generator=gen) < 0.7
    is_match[0] = False  # a row without matches
    if kind == "same":
        d.scatter_(1, idx, torch.full((c, rmax), 0.5))  # every match at one distance: a zero-width range
        d[:, ::3] = 0.5  # and non-matches tied with them
    if kind == "inf":
        d[2].scatter_(0, idx[2], torch.full((rmax,), math.inf))  # matches at +inf
        d[3].scatter_(0, idx[3, :1], torch.full((1,), -math.inf))  # one at -inf
        is_match[2:4] = True
    idx, _ = idx.sort(1)  # gallery-index order within a row (PidIndex's)
    m = Matches(idx=idx, is_match=is_match)
    orig = d.clone()
    ms_pad, ms, msidx, nmatch = sorted_matches(d.gather(1, idx), m)
    d.scatter_(1, idx, torch.full((), math.inf).expand(idx.shape))
    return d, ms, msidx, nmatch, ms_pad, orig, m


def _brute(orig: torch.Tensor, m: Matches, rmax: int) -> np.ndarray:
    """Per row: sort (distance, gallery index) stably, count for each non-match the matches before it."""
    c, g = orig.shape
    hist = np.zeros((c, rmax + 2), dtype=np.int64)
    for i in range(c):
        match = set(m.idx[i][m.is_match[i]].tolist())
        same = set(m.idx[i].tolist())
        order = np.argsort(orig[i].numpy(), kind="stable")  # (ties by index; -inf first, +inf last)
        before = 0
        for j in order.tolist():
            if j in match:
                before += 1
            elif j not in same:
                hist[i, before] += 1
        hist[i, len(match)] += len(same)  # the same-pid columns (matches and junk) are +inf in dist: after all
    return hist


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("kind,c,g,rmax", [("random", 9, 3000, 12), ("ties", 8, 500, 9), ("same", 6, 2500, 5),
                                           ("inf", 7, 800, 6), ("random", 5, 40, 3)])
def test_place_rows_equals_a_stable_sort_and_torch(threads, kind, c, g, rmax):
    d, ms, msidx, nmatch, ms_pad, orig, m = _case(c + g, c, g, rmax, kind)
    got = torch.zeros(c, rmax + 2, dtype=torch.int64)
    rank_place_cpu.place_rows(d, ms.contiguous(), msidx.contiguous(), nmatch, got, threads)
    want = torch.zeros_like(got)
    place(d.clone(), 0, ms_pad, ms, msidx, want, nmatch)
    live = np.arange(rmax + 2)[None, :] <= nmatch.numpy()[:, None]  # bins past a row's match count: unused
    np.testing.assert_array_equal(np.where(live, got.numpy(), 0), np.where(live, want.numpy(), 0))
    brute = _brute(orig, m, rmax)
    if kind == "inf":
        # row 2's matches are all +inf: torch's place (and the kernel, which equals it) counts the +inf same-pid
        # columns before them, where a stable sort of the row would not (a known limit of the +inf convention)
        live[2] = False
    np.testing.assert_array_equal(np.where(live, got.numpy(), 0), np.where(live, brute, 0))


def test_nan_is_refused():
    d, ms, msidx, nmatch, *_ = _case(1, 4, 300, 5, "random")
    d[2, 17] = math.nan
    hist = torch.zeros(4, 7, dtype=torch.int64)
    with pytest.raises(ValueError, match="1 NaN value"):
        rank_place_cpu.place_rows(d, ms.contiguous(), msidx.contiguous(), nmatch, hist, 2)


@pytest.mark.parametrize("mapped", [False, True])
def test_tiles_with_an_offset_or_an_index_map(mapped):
    """A row placed tile by tile (column j of a tile is gallery item col0 + j, or col0[j] for a permuted gallery)
    gives the whole row's histogram: the tie rule reads the mapped gallery index."""
    d, ms, msidx, nmatch, *_ = _case(3, 6, 3000, 7, "ties")
    want = torch.zeros(6, 9, dtype=torch.int64)
    rank_place_cpu.place_rows(d, ms.contiguous(), msidx.contiguous(), nmatch, want, 1)
    perm = torch.randperm(3000, generator=torch.Generator().manual_seed(0)) if mapped else torch.arange(3000)
    dp = d[:, perm]  # the gallery in perm's order: column j is item perm[j]
    got = torch.zeros_like(want)
    for t0 in range(0, 3000, 700):
        t1 = min(3000, t0 + 700)
        col0 = perm[t0:t1] if mapped else t0
        rank_place_cpu.place_rows(dp[:, t0:t1].contiguous(), ms.contiguous(), msidx.contiguous(), nmatch, got, 2,
                                  col0)
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["random", "ties", "same", "inf"])
def test_chunk_stats_native_equals_torch(kind):
    """first rank, AP, INP and match counts of chunk_stats(native=True): the torch path's bits (NaN AP where a
    row has no match, on both), also with +-inf match distances in wide rows (torch's lookup-table placement
    failed there with an index error before it placed such rows exactly)."""
    *_, orig, m = _case(5, 10, 2600, 8, kind)
    a = chunk_stats(orig.clone(), m)
    b = chunk_stats(orig.clone(), m, native=True)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)


def test_bad_arguments():
    d, ms, msidx, nmatch, *_ = _case(1, 4, 300, 5, "random")
    with pytest.raises(ValueError, match="dist: expected a contiguous CPU torch.float32"):
        rank_place_cpu.place_rows(d.double(), ms, msidx, nmatch, torch.zeros(4, 7, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="shapes disagree"):
        rank_place_cpu.place_rows(d, ms, msidx, nmatch, torch.zeros(4, 6, dtype=torch.int64), 1)


@pytest.mark.parametrize("protocol", ["market", "ltcc-cc", "celeb"])
@pytest.mark.parametrize("feature_input", [True, False])
def test_evaluate_auto_equals_torch(monkeypatch, protocol, feature_input):
    """``evaluate`` with backend "auto" on CPU (the placement kernel) and "torch" (the torch ops): the same per-query
    AP / INP bits and CMC, from features and from a float32 distance matrix, on ties (small-integer features)."""
    from fastccreid.metrics import evaluate

    gen = torch.Generator().manual_seed(len(protocol))
    q, g = torch.randint(-2, 3, (25, 8), generator=gen).float(), torch.randint(-2, 3, (3000, 8), generator=gen).float()
    lab = dict(q_pids=torch.randint(0, 30, (25,), generator=gen), g_pids=torch.randint(0, 30, (3000,), generator=gen),
               q_camids=torch.randint(0, 3, (25,), generator=gen), g_camids=torch.randint(0, 3, (3000,), generator=gen),
               q_clothes=torch.randint(0, 2, (25,), generator=gen),
               g_clothes=torch.randint(0, 2, (3000,), generator=gen))
    calls = []
    real = rank_place_cpu.place_rows
    monkeypatch.setattr(rank_place_cpu, "place_rows", lambda *a: calls.append(1) or real(*a))
    inp = dict(qf=q, gf=g) if feature_input else dict(distmat=torch.cdist(q, g).pow(2))
    a = evaluate(**inp, protocol=protocol, backend="torch", return_per_query=True, **lab)
    assert not calls
    b = evaluate(**inp, protocol=protocol, return_per_query=True, **lab)
    assert calls
    assert a.mAP == b.mAP and a.mINP == b.mINP and np.array_equal(a.cmc, b.cmc)
    assert np.array_equal(a.all_AP, b.all_AP) and np.array_equal(a.all_INP, b.all_INP)


@pytest.mark.parametrize("tile", [None, 500])
def test_rank_stats_tiled_gallery_auto_equals_torch(monkeypatch, tile):
    """The gallery streamed in pid-ordered tiles (each tile placed with its index map): "auto" and "torch" give the
    same per-query stats bits."""
    from fastccreid.kernels import rank_stats

    gen = torch.Generator().manual_seed(9)
    q, g = torch.randint(-2, 3, (40, 8), generator=gen).float(), torch.randint(-2, 3, (2600, 8), generator=gen).float()
    lab = dict(q_pids=torch.randint(0, 20, (40,), generator=gen), g_pids=torch.randint(0, 20, (2600,), generator=gen),
               q_camids=torch.zeros(40, dtype=torch.int64), g_camids=torch.randint(0, 3, (2600,), generator=gen))
    calls = []
    real = rank_place_cpu.place_rows
    monkeypatch.setattr(rank_place_cpu, "place_rows", lambda *a: calls.append(1) or real(*a))
    a = rank_stats(q, g, tile=tile, backend="torch", **lab)
    assert not calls
    b = rank_stats(q, g, tile=tile, **lab)
    assert len(calls) >= (6 if tile else 1)
    for f in ("first_rank", "ap", "inp", "num_matches", "valid"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f


def test_bench_placement_rows(monkeypatch):
    """``fastccreid bench eval``'s placement rows: the kernel ("fast") and the torch placement, the same APs."""
    from fastccreid.bench import eval as bench_eval

    monkeypatch.setitem(bench_eval.CASES, "tiny", (30, 2500, 10))
    rows = bench_eval.placement_case("tiny", repeats=1)
    assert [r.path for r in rows] == ["fast", "torch-placement"]
    assert rows[0].extra["same_ap"] and rows[0].extra["torch_over_kernel"] > 0
