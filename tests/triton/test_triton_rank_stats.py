"""rank_stats' Triton kernels (fused distance tile, placement among sorted matches, histogram) against the
stable-full-sort oracle on float64 distances, and the registered op ``fastccreid::rank_stats_sqeuclid``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.eval_cases import labels_numpy, per_query_oracle, seed_sqeuclidean_f64, torch_labels

from fastccreid.kernels import rank_stats

pytestmark = pytest.mark.triton
triton = pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(13, 45, 24), (1, 7, 16), (40, 129, 33)]  # (Q, G, D): one tile, a single query, several tiles
# (dtype, atol, rtol) on AP / INP [0, 1]: both paths rank the same distances, so only fp64 rounding of the sums
DTYPES = [(torch.float32, 1e-12, 0.0), (torch.bfloat16, 1e-12, 0.0)]
JUNKS = [None, "market", "ltcc-cc"]


def _case(shape, dtype, seed):
    nq, ng, d = shape
    gen = torch.Generator().manual_seed(seed)
    q, g = torch.randn(nq, d, generator=gen).to(dtype), torch.randn(ng, d, generator=gen).to(dtype)
    if ng > 5:
        g[5] = g[3]  # an exact distance tie for every query (same bits in fp32 and in the fp64 oracle)
    lab = torch_labels(gen, nq, ng, npid=4)
    return q, g, lab


def _check_against_oracle(first, ap, inp, nmatch, dm, lab, junk, atol, rtol):
    qp, gp, qc, gc, qcl, gcl = labels_numpy(lab)
    for i, o in enumerate(per_query_oracle(dm, qp, gp, qc, gc, qcl, gcl, junk)):
        if o is None:
            assert int(nmatch[i]) == 0 and int(first[i]) == 0, i
            continue
        assert int(first[i]) == o[0], (i, int(first[i]), o[0])
        np.testing.assert_allclose(float(ap[i]), o[1], atol=atol, rtol=rtol, err_msg=f"AP of query {i}")
        np.testing.assert_allclose(float(inp[i]), o[2], atol=atol, rtol=rtol, err_msg=f"INP of query {i}")


@pytest.mark.parametrize("junk", JUNKS)
@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_matches_stable_sort_oracle(shape, dtype, atol, rtol, junk):
    q, g, lab = _case(shape, dtype, seed=sum(shape))
    lab_dev = {k: v.to(DEVICE) for k, v in lab.items()}
    st = rank_stats(q.to(DEVICE), g.to(DEVICE), junk=junk, backend="triton", **lab_dev)
    dm = seed_sqeuclidean_f64(q.float(), g.float())
    _check_against_oracle(st.first_rank.cpu(), st.ap.cpu(), st.inp.cpu(), st.num_matches.cpu(), dm, lab, junk,
                          atol, rtol)
    assert torch.equal(st.valid.cpu(), st.num_matches.cpu() > 0)


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_triton_normalised_features(shape):
    """normalize=True: the seed's x / (||x|| + 1e-12) rows, then the same kernels."""
    q, g, lab = _case(shape, torch.float32, seed=7)
    st = rank_stats(q.to(DEVICE), g.to(DEVICE), junk="market", normalize=True, backend="triton",
                    **{k: v.to(DEVICE) for k, v in lab.items()})
    qn = q.double() / (q.double().norm(dim=1, keepdim=True) + 1e-12)
    gn = g.double() / (g.double().norm(dim=1, keepdim=True) + 1e-12)
    dm = seed_sqeuclidean_f64(qn, gn)
    _check_against_oracle(st.first_rank.cpu(), st.ap.cpu(), st.inp.cpu(), st.num_matches.cpu(), dm, lab, "market",
                          1e-12, 0.0)


@pytest.mark.parametrize("junk", JUNKS)
def test_registered_op_matches_oracle_and_compiles_fullgraph(junk):
    """torch.ops.fastccreid.rank_stats_sqeuclid (its CPU kernel or CUDA kernel, and the Triton launcher its body
    runs) on a ``match_layout`` against the oracle; torch.compile(fullgraph=True) traces a function calling it
    without a graph break."""
    import fastccreid.kernels._rank_stats_triton as R  # registers fastccreid::rank_stats_sqeuclid
    from fastccreid.kernels.rank_stats import match_layout

    op = torch.ops.fastccreid.rank_stats_sqeuclid
    q, g, lab = _case((11, 40, 16), torch.float32, seed=4)
    lab_dev = [v.to(DEVICE) for v in lab.values()]
    qp, gp, qc, gc, qcl, gcl = lab_dev
    lay = match_layout(qp, gp, qc, gc, qcl, gcl, junk)
    args = (q.to(DEVICE), g.to(DEVICE), qp, gp, lay.slot, lay.idx, lay.is_match)
    dm = seed_sqeuclidean_f64(q, g)
    for out in (op(*args), R.finish_stats(*R.rank_stats_launch(*args)).__dict__.values()):
        first, ap, inp, nmatch = (t.cpu() for t in list(out)[:4])
        assert first.dtype == torch.int64 and ap.dtype == torch.float64 and nmatch.dtype == torch.int64
        _check_against_oracle(first, ap, inp, nmatch, dm, lab, junk, 1e-12, 0.0)
    comp = torch.compile(lambda *a: op(*a)[1].sum(), fullgraph=True, backend="eager")
    torch.testing.assert_close(comp(*args), op(*args)[1].sum(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("nq,ng,npid", [(40, 300, 3), (37, 200, 40)])
def test_placement_with_wide_and_mixed_match_counts(nq, ng, npid):
    """Query blocks whose rows have very different match counts (a few pids with ~100 gallery items each, or
    many pids with a handful): the placement loops to each block's own widest row and adds one count per
    (row, rank); every row's histogram must still give the oracle's ranks."""
    gen = torch.Generator().manual_seed(nq + ng)
    q, g = torch.randn(nq, 16, generator=gen), torch.randn(ng, 16, generator=gen)
    g[7] = g[2]  # exact ties
    lab = torch_labels(gen, nq, ng, npid=npid)
    lab["g_pids"][: ng // 2] = 0  # one pid holds half the gallery, next to rows with a handful of matches
    st = rank_stats(q.to(DEVICE), g.to(DEVICE), junk="market", backend="triton",
                    **{k: v.to(DEVICE) for k, v in lab.items()})
    _check_against_oracle(st.first_rank.cpu(), st.ap.cpu(), st.inp.cpu(), st.num_matches.cpu(),
                          seed_sqeuclidean_f64(q, g), lab, "market", 1e-12, 0.0)


@pytest.mark.parametrize("place_rows", [1, 5, 16, 17])
def test_placement_in_several_query_launches(place_rows):
    """Placement split into launches of ``place_rows`` queries (on a GPU: PLACE_ROWS, so that no launch has more
    than 65,535 query blocks): each launch gets its own rows of the queries and of every per-query array, and the
    result equals the oracle for every row, including the last, shorter launch."""
    import fastccreid.kernels._rank_stats_triton as R

    q, g, lab = _case((37, 90, 16), torch.float32, seed=11)
    lab_dev = {k: v.to(DEVICE) for k, v in lab.items()}
    st = R.finish_stats(*R.rank_stats_triton(q.to(DEVICE), g.to(DEVICE), *lab_dev.values(), "market",
                                             place_rows=place_rows))
    _check_against_oracle(st.first_rank.cpu(), st.ap.cpu(), st.inp.cpu(), st.num_matches.cpu(),
                          seed_sqeuclidean_f64(q, g), lab, "market", 1e-12, 0.0)
    with pytest.raises(ValueError, match="rows per placement launch"):
        R.place_chunks(37, 0)


def test_bench_rows_of_both_rank_stats_backends():
    """``bench eval``'s rank_stats rows (run on CUDA by benchmarks/gpu_check.sh to decide the ``auto`` rule): both
    backends timed on the same features, equal results, each time related to the Gram matmul's."""
    from fastccreid.bench.eval import rank_stats_backends_case

    rows = rank_stats_backends_case("tiny", torch.device(DEVICE), repeats=1, size=(12, 70, 5))
    assert [r.path for r in rows] == ["torch", "triton"]
    assert rows[0].extra["mAP"] == rows[1].extra["mAP"] and 0.0 < rows[0].extra["mAP"] <= 1.0
    for r in rows:
        assert r.median_s > 0 and r.extra["gram_matmul_s"] > 0
        assert r.extra["multiple_of_gram_matmul"] == pytest.approx(r.median_s / r.extra["gram_matmul_s"])
