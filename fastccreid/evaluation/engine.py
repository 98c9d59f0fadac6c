"""The streaming evaluation driver behind ``fastccreid.kernels.rank_stats`` and ``fastccreid.metrics.evaluate``.

Checks the inputs, groups the gallery by pid, then goes through the queries in chunks and, for large galleries,
the gallery in tiles (normalised once or tile by tile, in low precision when asked, with scratch buffers reused
across chunks); the ops of ``fastccreid.kernels.rank_stats`` place each chunk's non-matches among its sorted
matches. Memory O(chunk·tile + Q·R + G), never Q×G. On CUDA (or under TRITON_INTERPRET=1 with backend="triton")
squared euclidean features go to the fused Triton op instead.
"""

from __future__ import annotations

import os

import torch

from fastccreid.evaluation.gallery import TILE, Gallery, tiled_chunk_stats
from fastccreid.evaluation.workspace import Workspace
from fastccreid.kernels import rank_place_cpu
from fastccreid.kernels._backend import rank_stats_backend, torch_ops_requested
from fastccreid.kernels.checks import RANK_JUNK_RULES, check_choice, check_rank_inputs, require_finite
from fastccreid.kernels.rank_stats import (
    METRICS,
    PRECISIONS,
    PidIndex,
    RankStats,
    chunk_stats,
    finish_stats,
    match_layout,
)
from fastccreid.kernels.seed_distance import (
    CHUNK_BYTES,
    chunk_distance,
    chunk_rows,
    from_sqeuclidean,
    seed_normalize,
    seed_sqeuclidean_tiled,
    work_dtype,
)

COMPILE_MIN_PAIRS = 2_000_000_000  # Q×G from which the compiled per-element lookup is used on CPU


def rank_stats(
    q,
    g=None,
    metric: str = "sqeuclidean",
    *,
    q_pids,
    g_pids,
    q_camids=None,
    g_camids=None,
    q_clothes=None,
    g_clothes=None,
    junk: str | None = "market",
    normalize: bool = False,
    precision: str = "fp32",
    chunk_size: int | None = None,
    tile: int | None = None,
    backend: str = "auto",
) -> RankStats:
    """Exact first-match rank, AP and INP per query: see ``fastccreid.kernels.rank_stats`` (same arguments)."""
    inp_ = check_rank_inputs(q, g, metric, METRICS, junk=junk, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                             g_camids=g_camids, q_clothes=q_clothes, g_clothes=g_clothes, rules=RANK_JUNK_RULES)
    if metric != "precomputed":
        check_choice(precision, "precision", PRECISIONS)
    dm, q, g, nq, ng, device = inp_.dm, inp_.q, inp_.g, inp_.nq, inp_.ng, inp_.device
    qp, gp, qc, gc, qcl, gcl = inp_.labels
    if metric == "precomputed":
        tensors = (dm,)
    else:
        require_finite(q)  # the gallery is checked below, in its own pass where it is streamed once
        tensors = (q, g)
    # backend="auto" keeps CUDA evaluation on the torch path until a GPU has measured both (kernels/_backend.py,
    # rank_stats_backend); fp64 stays on the torch path, in fp64
    use_triton = rank_stats_backend(backend, *tensors) == "triton"
    # "auto" on CPU: the placement by the compiled kernel where it is built (kernels/rank_place_cpu.py: the same
    # histogram, so the same bits, in one pass instead of five); an explicit "torch" keeps the torch ops
    native = not use_triton and device.type == "cpu" and not torch_ops_requested(backend) and rank_place_cpu.available()
    if use_triton and metric == "sqeuclidean":
        require_finite(g)
        from fastccreid.kernels._rank_stats_triton import rank_stats_launch, rank_stats_op

        qn, gn = (seed_normalize(q), seed_normalize(g)) if normalize else (q, g)
        # the host side (pid grouping, the match layout and its width: one read-back) before the op, whose body then
        # reads nothing back and traces under torch.compile
        lay = match_layout(qp, gp, qc, gc, qcl, gcl, junk)
        # CUDA: the registered op (torch.compile sees its Triton kernels); CPU (TRITON_INTERPRET=1): the launcher,
        # since the op's CPU kernel is the torch path
        run = rank_stats_op if qn.is_cuda else rank_stats_launch
        return finish_stats(*run(qn, gn, qp, gp, lay.slot, lay.idx, lay.is_match))
    # Precomputed distances and the other metrics run the vectorised torch path on the tensors' own device
    # (exact, chunked the same way) also when Triton is chosen.

    index = PidIndex(gp)
    lo, cnt = index.ranges(qp)
    first = torch.zeros(nq, dtype=torch.int64, device=device)
    ap = torch.zeros(nq, dtype=torch.float64, device=device)
    inp = torch.zeros(nq, dtype=torch.float64, device=device)
    nmatch = torch.zeros(nq, dtype=torch.int64, device=device)
    # Only queries with a same-pid gallery entry can be valid; the others never touch the gallery.
    cand = torch.nonzero(cnt > 0).squeeze(1)
    if metric == "precomputed":
        rows = chunk_size or chunk_rows(ng)
        for s in range(0, cand.numel(), rows):
            qi = cand[s : s + rows]
            m = index.gather(lo[qi], cnt[qi], qc[qi] if qc is not None else None, gc,
                             qcl[qi] if qcl is not None else None, gcl, junk)
            f, a, i, n = chunk_stats(dm[qi].clone(), m, native=native)  # our own buffer: it is overwritten
            first[qi], ap[qi], inp[qi], nmatch[qi] = f, a, i, n
        return finish_stats(first, ap, inp, nmatch)

    lowp = PRECISIONS[precision]
    if lowp is not None and metric != "sqeuclidean":
        raise ValueError(f"precision={precision!r} is for metric='sqeuclidean' only")
    tile = tile or TILE
    ntiles = -(-ng // tile)
    # tiled galleries get bigger query chunks: each chunk re-streams (and maybe re-normalises) the whole gallery
    budget = CHUNK_BYTES if ntiles == 1 else 3 * CHUNK_BYTES
    rows = chunk_size or max(1, min(4096, budget // (24 * min(ng, tile))))
    # An untiled gallery's fp32 euclidean distances go through the gallery-tiled matmul; with a single query chunk
    # its tiles are normalised on the way (no normalised gallery copy at all).
    # (fp64 keeps the one-shot product: tiled double products were seen to round differently.)
    streamed = (ntiles == 1 and lowp is None and metric in ("sqeuclidean", "euclidean")
                and work_dtype(q) == work_dtype(g) == torch.float32)
    one_pass = streamed and normalize and cand.numel() <= rows
    if not (one_pass and cand.numel() > 0):
        require_finite(g)  # (a single streamed pass finds NaN / Inf in the normalised tiles' squared norms)
    gal = None if one_pass else Gallery(g, metric, normalize, tile, lowp, perm=index.order)
    # Very large CPU problems fuse the per-element lookup with torch.compile (a one-off compile of seconds pays off
    # only there); FASTCCREID_COMPILE=0 / 1 forces it off / on.
    env = os.environ.get("FASTCCREID_COMPILE", "").strip()
    use_compile = env == "1" or (env != "0" and device.type == "cpu" and nq * ng >= COMPILE_MIN_PAIRS)
    qf = seed_normalize(q) if normalize else q.to(work_dtype(q))
    ws = Workspace(device)
    if ntiles > 1:
        # process queries in pid order: a chunk's matches then share gallery rows (cheaper match gathers)
        cand = cand[torch.sort(qp[cand], stable=True).indices]
    for s in range(0, cand.numel(), rows):
        qi = cand[s : s + rows]
        m = index.gather(lo[qi], cnt[qi], qc[qi] if qc is not None else None, gc,
                         qcl[qi] if qcl is not None else None, gcl, junk)
        contiguous = qi.numel() == 0 or int(qi[-1] - qi[0]) + 1 == qi.numel()
        qs = qf[int(qi[0]) : int(qi[-1]) + 1] if contiguous and ntiles == 1 else qf[qi]  # a view, no copy
        if ntiles == 1:
            if one_pass:
                d = seed_sqeuclidean_tiled(qs, g, normalize=True, ws=ws, check_finite=True)
            elif streamed:
                d = seed_sqeuclidean_tiled(qs, gal.g, normalize=gal.on_the_fly, gg=gal.gg, ws=ws)
            else:
                d = chunk_distance(qs, gal.rows(0, ng), metric, gal.cache(0, ng), lowp)
            if streamed:
                d = from_sqeuclidean(d, metric)
            f, a, i, n = chunk_stats(d, m, use_compile, ws, native=native)
        else:
            f, a, i, n = tiled_chunk_stats(qs, gal, metric, m, lowp, use_compile, ws, native)
        first[qi], ap[qi], inp[qi], nmatch[qi] = f, a, i, n
    return finish_stats(first, ap, inp, nmatch)
