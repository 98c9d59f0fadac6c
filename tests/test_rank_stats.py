"""rank_stats: exact first-match rank / AP / INP per query (sort only the matches), the torch path (the Triton kernels:
tests/triton/test_triton_rank_stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.eval_cases import distmat_case, exact_rows, per_query_oracle

from fastccreid.kernels import rank_stats


@pytest.mark.parametrize("junk", [None, "market", "ltcc-cc"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("lut", [False, True])
def test_matches_stable_full_sort(monkeypatch, junk, ties, lut):
    if lut:  # force the lookup-table placement, with few bins so that many elements share a match's bin
        import importlib

        rs_mod = importlib.import_module("fastccreid.kernels.rank_stats")
        monkeypatch.setattr(rs_mod, "_LUT_MIN_COLS", 1)
        monkeypatch.setattr(rs_mod, "_LUT_BINS", 3)
    for seed, (nq, ng, npid) in enumerate([(7, 33, 3), (20, 129, 9), (3, 1, 1), (5, 64, 40)]):
        dm, qp, gp, qc, gc, qcl, gcl = distmat_case(seed, nq, ng, npid, ties)
        st = rank_stats(dm, None, "precomputed", q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl,
                        g_clothes=gcl, junk=junk, chunk_size=3)
        for i, o in enumerate(per_query_oracle(dm, qp, gp, qc, gc, qcl, gcl, junk)):
            if o is None:
                assert not st.valid[i] and st.first_rank[i] == 0
                continue
            assert st.valid[i]
            assert st.first_rank[i].item() == o[0]
            assert st.ap[i].item() == pytest.approx(o[1], abs=1e-12)
            assert st.inp[i].item() == pytest.approx(o[2], abs=1e-12)


def test_features_path_and_float64_distmat():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((9, 16)), rng.standard_normal((50, 16))
    qp, gp = rng.integers(0, 5, 9), rng.integers(0, 5, 50)
    dm64 = ((q[:, None] - g[None]) ** 2).sum(-1)
    a = rank_stats(dm64, None, "precomputed", q_pids=qp, g_pids=gp, junk=None)
    b = rank_stats(torch.tensor(q), torch.tensor(g), q_pids=qp, g_pids=gp, junk=None)  # float64 features
    assert torch.equal(a.first_rank, b.first_rank)
    torch.testing.assert_close(a.ap, b.ap, atol=1e-12, rtol=0)


def test_bad_inputs():
    dm = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="g_pids"):
        rank_stats(dm, None, "precomputed", q_pids=[0, 1], g_pids=[0, 1], junk=None)
    with pytest.raises(TypeError, match="q_pids"):
        rank_stats(dm, None, "precomputed", q_pids=np.array([0.0, 1.0]), g_pids=[0, 1, 2], junk=None)
    with pytest.raises(ValueError, match="NaN"):
        rank_stats(np.full((2, 3), np.nan), None, "precomputed", q_pids=[0, 1], g_pids=[0, 1, 2], junk=None)
    with pytest.raises(ValueError, match="at least one"):
        rank_stats(np.zeros((0, 3)), None, "precomputed", q_pids=[], g_pids=[0, 1, 2], junk=None)
    with pytest.raises(ValueError, match="dims differ"):
        rank_stats(torch.randn(2, 3), torch.randn(3, 4), q_pids=[0, 1], g_pids=[0, 1, 2], junk=None)
    with pytest.raises(ValueError, match="junk"):
        rank_stats(dm, None, "precomputed", q_pids=[0, 1], g_pids=[0, 1, 2], junk="cuhk")


@pytest.mark.parametrize("lut", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gallery_tiles_and_on_the_fly_normalisation_agree(monkeypatch, dtype, lut):
    """Past ``tile`` gallery items the gallery is streamed in tiles (match distances from gathered rows); a gallery
    too big for a normalised copy is normalised tile by tile. Same results as the one-tile path."""
    import importlib

    rs_mod = importlib.import_module("fastccreid.kernels.rank_stats")
    gallery_mod = importlib.import_module("fastccreid.evaluation.gallery")
    gen = torch.Generator().manual_seed(3)
    nq, ng = 40, 300
    # exact distances (see exact_rows): the paths tile their products differently, so only exact sums guarantee bits
    q, g = exact_rows(gen, nq, 32).to(dtype), exact_rows(gen, ng, 32).to(dtype)
    kw = dict(q_pids=torch.randint(0, 6, (nq,), generator=gen), g_pids=torch.randint(0, 6, (ng,), generator=gen),
              q_camids=torch.randint(0, 2, (nq,), generator=gen), g_camids=torch.randint(0, 2, (ng,), generator=gen),
              q_clothes=torch.randint(0, 2, (nq,), generator=gen),
              g_clothes=torch.randint(0, 2, (ng,), generator=gen), junk="ltcc-cc", normalize=True)
    g[9] = g[4]  # an exact tie between gallery items
    a = rank_stats(q, g, **kw)
    if lut:  # the lookup-table placement (normally only for wide tiles) on every tile
        monkeypatch.setattr(rs_mod, "_LUT_MIN_COLS", 1)
    b = rank_stats(q, g, tile=37, chunk_size=7, **kw)
    monkeypatch.setattr(gallery_mod, "NORM_COPY_BYTES", 0)
    c = rank_stats(q, g, tile=64, **kw)
    for other in (b, c):
        assert torch.equal(a.first_rank, other.first_rank)
        torch.testing.assert_close(a.ap, other.ap, atol=1e-12, rtol=0)
        torch.testing.assert_close(a.inp, other.inp, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gallery_tiled_distance_is_bit_identical_to_the_seeds(dtype):
    """The gallery-tiled distance (each tile normalised into one reused buffer) equals the seed's one-shot
    ``|q|^2 + |g|^2 - 2 q.g`` on normalised rows, for tiles that do not divide the gallery. Bit for bit on
    ``exact_rows`` features (every sum exact, so the tiling alone is tested); on general features BLAS may round a
    product of another width differently (it picks kernels by shape and CPU), so there to a few fp32 ulps."""
    import importlib

    rs_mod = importlib.import_module("fastccreid.kernels.seed_distance")
    gen = torch.Generator().manual_seed(11)
    for exact in (True, False):
        if exact:
            q, g = exact_rows(gen, 19, 96).to(dtype), exact_rows(gen, 250, 96).to(dtype)
        else:
            q, g = torch.rand(19, 96, generator=gen).to(dtype), torch.rand(250, 96, generator=gen).to(dtype)
        check = torch.equal if exact else lambda a, b: torch.allclose(a, b, rtol=0, atol=4e-7)
        qn = rs_mod.seed_normalize(q)
        want = rs_mod.seed_sqeuclidean(qn, rs_mod.seed_normalize(g))
        for tile in (64, 100, 250, 1024):
            got = rs_mod.seed_sqeuclidean_tiled(qn, g, normalize=True, tile=tile)
            assert check(got, want), (exact, tile)
        gn, gg = rs_mod.seed_normalize(g, with_sq_norms=True)
        assert check(rs_mod.seed_sqeuclidean_tiled(qn, gn, normalize=False, gg=gg, tile=33), want), exact


def test_one_pass_streamed_and_copied_gallery_paths_agree(monkeypatch):
    """One query chunk (gallery normalised tile by tile, no copy), several chunks (a normalised copy), a gallery too
    big for a copy, and the seed's distance matrix given as precomputed: identical statistics."""
    import importlib

    rs_mod = importlib.import_module("fastccreid.kernels.seed_distance")
    gallery_mod = importlib.import_module("fastccreid.evaluation.gallery")
    gen = torch.Generator().manual_seed(5)
    nq, ng = 30, 2100
    # exact_rows: every distance exact (and many exact ties), so paths that tile the products differently must give
    # the same statistics whatever the BLAS does
    q, g = exact_rows(gen, nq, 40), exact_rows(gen, ng, 40)
    g[17] = g[3]
    kw = dict(q_pids=torch.randint(0, 9, (nq,), generator=gen), g_pids=torch.randint(0, 9, (ng,), generator=gen),
              q_camids=torch.randint(0, 3, (nq,), generator=gen), g_camids=torch.randint(0, 3, (ng,), generator=gen),
              junk="market")
    dm = rs_mod.seed_sqeuclidean(rs_mod.seed_normalize(q), rs_mod.seed_normalize(g))
    ref = rank_stats(dm, None, "precomputed", **kw)
    runs = [rank_stats(q, g, normalize=True, **kw), rank_stats(q, g, normalize=True, chunk_size=4, **kw)]
    monkeypatch.setattr(gallery_mod, "NORM_COPY_BYTES", 0)
    runs.append(rank_stats(q, g, normalize=True, chunk_size=4, **kw))
    for st in runs:
        assert torch.equal(st.first_rank, ref.first_rank)
        assert torch.equal(st.ap, ref.ap) and torch.equal(st.inp, ref.inp)
    euc = rank_stats(q, g, metric="euclidean", normalize=True, **kw)
    ref_e = rank_stats(dm.clamp(min=1e-12).sqrt(), None, "precomputed", **kw)
    assert torch.equal(euc.ap, ref_e.ap) and torch.equal(euc.first_rank, ref_e.first_rank)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_gallery_is_an_error_on_every_path(bad):
    """NaN / Inf in the gallery is found by the single streamed pass, by the up-front check of the chunked and
    raw-feature paths, and when no query has a candidate match (nothing streamed); a finite row whose norm
    overflows is not an error (it normalises to 0, as the seed's)."""
    gen = torch.Generator().manual_seed(2)
    q, g = torch.rand(6, 8, generator=gen), torch.rand(50, 8, generator=gen)
    g[37, 3] = bad
    kw = dict(q_pids=torch.arange(6) % 3, g_pids=torch.arange(50) % 3, junk=None)
    for extra in (dict(normalize=True), dict(normalize=True, chunk_size=2), dict(normalize=False),
                  dict(normalize=True, metric="euclidean")):
        with pytest.raises(ValueError, match="NaN or Inf"):
            rank_stats(q, g, **kw, **extra)
    with pytest.raises(ValueError, match="NaN or Inf"):
        rank_stats(q, g, q_pids=torch.full((6,), 7), g_pids=torch.arange(50) % 3, junk=None, normalize=True)
    huge = torch.rand(50, 8, generator=gen)
    huge[5] = 3e38
    assert rank_stats(q, huge, **kw, normalize=True).valid.all()


def test_compiled_lookup_pass_matches_eager(monkeypatch):
    """FASTCCREID_COMPILE=1 (the default past 2e9 pairs on a CPU): the fused compiled lookup gives the eager
    passes' statistics exactly."""
    gen = torch.Generator().manual_seed(8)
    q, g = torch.rand(40, 16, generator=gen), torch.rand(3000, 16, generator=gen)
    kw = dict(q_pids=torch.arange(40) % 7, g_pids=torch.arange(3000) % 7, q_camids=torch.zeros(40, dtype=torch.long),
              g_camids=torch.arange(3000) % 2, junk="market", normalize=True)
    monkeypatch.setenv("FASTCCREID_COMPILE", "0")
    eager = rank_stats(q, g, **kw)
    monkeypatch.setenv("FASTCCREID_COMPILE", "1")
    fused = rank_stats(q, g, **kw)
    assert torch.equal(eager.first_rank, fused.first_rank)
    assert torch.equal(eager.ap, fused.ap) and torch.equal(eager.inp, fused.inp)
