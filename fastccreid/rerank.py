"""k-reciprocal re-ranking (Zhong et al., CVPR 2017; k1=20, k2=6, lambda=0.3) built on top-k neighbours, streamed.

Same algorithm as the seed's ``re_ranking(probFea, galFea, k1, k2, lambda)`` (evaluate/re_ranking.py; numbers: below),
which builds the dense (Q+G)^2 distance and rank matrices. Here each item only needs its k1+1 nearest neighbours
and the largest distance of its row (streamed over row blocks of the N x N distance; from features each pair is
computed once, half the N x N Gram, its block giving candidates to both of its rows), the k-reciprocal sets, their
expansion and the encodings V are built with array operations over all N items at once (sorted pair keys
``i * N + j`` and binary search instead of per-item set operations), V is sparse (a few dozen entries per row), and
the Jaccard term of a query chunk is summed over the pairs that share an encoded neighbour, restricted to the chunk.
On CPU tensors the per-block passes of the neighbour search and the chunks' Jaccard sums run in compiled C
(``fastccreid.kernels.rerank_cpu``, the same bits; ``backend=`` of ``build_reranker``).
``Reranker.chunks()`` yields the re-ranked distances [C, G] query chunk by query chunk: memory O(N·k1 + C·N), never
Q×G (``fastccreid.metrics.evaluate(rerank=True)`` passes each chunk straight to the rank statistics);
``re_ranking`` concatenates the chunks into the dense [Q, G] for callers who want the matrix.

Input: features (``probFea`` [Q, D], ``galFea`` [G, D], numpy or torch, any device: the neighbour search, V and the
chunks are computed on the features' device), as the seed's: the distance is the squared euclidean of the given
features (the seed's callers pass L2-normalised ones). Or distances: pass ``q_g_dist`` [Q, G], ``q_q_dist`` [Q, Q],
``g_g_dist`` [G, G] (already *squared* if you want the seed's numbers: unlike torchreid's ``re_ranking`` we never
square what we are given). Like the seed, V is stored in float16.

One difference: the seed accumulates the Jaccard sums (and the Jaccard distance) in float16, we in float32, so
re-ranked distances differ from the seed's by up to a few 1e-3 (the float16 rounding of sums near 1); with that
term in float32 the seed's algorithm gives our numbers to 1e-6 (tests/test_rerank.py). On the CPU the weights
exp(-d) / sum are computed by numpy (its exp and its row sums: the seed's bits, so V is the seed's V); on CUDA by
torch (the same up to float ulps, which can move a float16 entry of V by one ulp).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fastccreid.kernels import rerank_cpu

NEIGHBOUR_CHUNK_BYTES = 256 << 20  # one [rows, N] fp32 block of the neighbour search (wide blocks: BLAS speed)
QUERY_CHUNK_BYTES = 32 << 20  # one [rows, N] fp32 block of a re-ranked query chunk
PAIR_BUDGET = 1 << 21  # (query entry, gallery entry) pairs of V summed at once (~40 bytes each)
EXPANSION_BLOCK = 1 << 18  # (item, candidate) pairs tested at once in the expansion rule

HELD_MIN_ELEMENTS = 8 << 20  # 32 MiB of fp32: glibc's largest dynamic mmap threshold; larger blocks are held
TRANSPOSE_TILE = 1024  # columns of the first block transposed at once ([1024, 2048] fp32: 8 MiB, heap-reused)

RowsFn = Callable[[int, int], torch.Tensor]
PairsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _tensor2d(x, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")
    return t


def _feature_pair(probFea, galFea) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
    """The query and gallery features as 2-D tensors (their own dtype) of one width on one device."""
    q, g = _tensor2d(probFea, "probFea"), _tensor2d(galFea, "galFea")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"probFea and galFea dims differ: {q.shape[1]} vs {g.shape[1]}")
    if q.device != g.device:
        raise ValueError(f"probFea and galFea are on different devices: {q.device} vs {g.device}")
    return q, g


def stack_features(probFea, galFea, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
    """probFea [Q, D] and galFea [G, D] written into one fp32 buffer [Q + G, D] (each row divided by its
    ``||x|| + 1e-12`` first when ``normalize``, the seed's ``fastccreid.metrics.normalize_features``, the same bits),
    returned as its two row views. Re-ranking works on the stacked set: given these views it uses the buffer as it is
    (no second N x D copy: 0.77 GB at MSMT17 size)."""
    from fastccreid.kernels.seed_distance import seed_normalize

    q, g = _feature_pair(probFea, galFea)
    buf = torch.empty(q.shape[0] + g.shape[0], q.shape[1], dtype=torch.float32, device=q.device)
    for part, x in ((buf[: q.shape[0]], q), (buf[q.shape[0] :], g)):
        if normalize:
            seed_normalize(x, out=part)  # (fp64 rows: divided in fp64, rounded once into the buffer)
        else:
            part.copy_(x)
    return buf[: q.shape[0]], buf[q.shape[0] :]


def _stacked(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """[Q + G, D]: a view when g's rows directly follow q's in one contiguous buffer (``stack_features``), else a
    concatenated copy."""
    if (q.is_contiguous() and g.is_contiguous() and q.dtype == g.dtype and q.device == g.device and q.numel()
            and g.numel() and q.untyped_storage().data_ptr() == g.untyped_storage().data_ptr()
            and g.storage_offset() == q.storage_offset() + q.numel()):
        return q.as_strided((q.shape[0] + g.shape[0], q.shape[1]), (q.shape[1], 1))
    return torch.cat([q, g])


class _Workspace:
    """One reusable buffer (fp32 unless told) for the large per-block temporaries: a fresh [2048, N] tensor per
    block costs its page faults every time (the allocator returns big blocks to the OS on free: ~0.4 s per
    2048 x 34,000 block on a 2-core EPYC against 0.013 s to refill a held one). Views of it are only valid until
    the next ``take``."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32):
        self.buf = torch.empty(0, dtype=dtype, device=device)

    def take(self, rows: int, cols: int) -> torch.Tensor:
        if rows * cols * self.buf.element_size() < 4 * HELD_MIN_ELEMENTS:  # small: the heap reuses them, fault-free
            return torch.empty(rows, cols, dtype=self.buf.dtype, device=self.buf.device)
        if self.buf.numel() < rows * cols:
            self.buf = torch.empty(rows * cols, dtype=self.buf.dtype, device=self.buf.device)
        return self.buf[: rows * cols].view(rows, cols)


def split_range(count: int, rank: int, world: int) -> tuple[int, int]:
    """Items [lo, hi) of ``count`` that rank ``rank`` of ``world`` takes: contiguous, in rank order."""
    return count * rank // world, count * (rank + 1) // world


def _neighbours(rows_fn: RowsFn, n: int, kq: int, device: torch.device, comm=None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of the N x N distance: the kq nearest [N, kq] (ties by index), their distances [N, kq], and the
    row's largest distance [N]; streamed over row blocks of NEIGHBOUR_CHUNK_BYTES. With ``comm`` each rank computes
    a contiguous run of the one-process row blocks (the same shapes, so the same bits) and the runs are gathered."""
    chunk = max(16, min(512, NEIGHBOUR_CHUNK_BYTES // (16 * n)))
    kk = min(n, kq + 1)
    starts = list(range(0, n, chunk)) + [n]
    if comm is None:
        r0, r1, sizes = 0, n, None
    else:
        runs = [split_range(len(starts) - 1, r, comm.world) for r in range(comm.world)]
        sizes = [starts[b] - starts[a] for a, b in runs]
        r0, r1 = starts[runs[comm.rank][0]], starts[runs[comm.rank][1]]
    idx = torch.empty(r1 - r0, kq, dtype=torch.int64, device=device)
    val = torch.empty(r1 - r0, kq, dtype=torch.float32, device=device)
    mx = torch.empty(r1 - r0, dtype=torch.float32, device=device)
    for s0 in range(r0, r1, chunk):
        d = rows_fn(s0, min(n, s0 + chunk))
        s, e = s0 - r0, s0 - r0 + d.shape[0]
        mx[s:e] = torch.amax(d, 1)
        tv, ti = torch.topk(d, kk, dim=1, largest=False, sorted=True)
        # rows whose kq-th and (kq+1)-th distances differ: their kq nearest are an unambiguous set, ordered by
        # distance with ties by index (sort the set by index, then stably by distance); other rows: a stable sort
        ok = tv[:, kq] > tv[:, kq - 1] if kk > kq else torch.zeros(d.shape[0], dtype=torch.bool, device=device)
        ii = torch.sort(ti[:, :kq], dim=1).values
        vv = d.gather(1, ii)
        o = torch.sort(vv, dim=1, stable=True).indices
        ii, vv = ii.gather(1, o), vv.gather(1, o)
        bad = torch.nonzero(~ok).squeeze(1)
        if bad.numel():
            o = torch.sort(d[bad], dim=1, stable=True)
            ii[bad], vv[bad] = o.indices[:, :kq], o.values[:, :kq]
        idx[s:e] = ii
        val[s:e] = vv
        del d, tv, ti
    if comm is not None:
        idx, val, mx = (comm.gather_rows(t, sizes) for t in (idx, val, mx))
    return idx, val, mx


def _block_candidates(d: torch.Tensor, kq: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of the block d [R, W] (columns offset..offset+W-1): its min(kq, W) smallest by (distance, column),
    as (distances [R, k], global columns [R, k]) in that order."""
    r, w = d.shape
    if w <= kq:
        o = torch.sort(d, dim=1, stable=True)
        return o.values, o.indices + offset
    tv, ti = torch.topk(d, kq + 1, dim=1, largest=False, sorted=True)
    # where the kq-th and (kq+1)-th distances differ the kq found are the set; sorted by column, then stably by
    # distance: (distance, column) order. Other rows (a tie at the cut): a stable sort of the row
    ok = tv[:, kq] > tv[:, kq - 1]
    ii = torch.sort(ti[:, :kq], dim=1).values
    vv = d.gather(1, ii)
    o = torch.sort(vv, dim=1, stable=True).indices
    ii, vv = ii.gather(1, o), vv.gather(1, o)
    bad = torch.nonzero(~ok).squeeze(1)
    if bad.numel():
        o = torch.sort(d[bad], dim=1, stable=True)
        ii[bad], vv[bad] = o.indices[:, :kq], o.values[:, :kq]
    return vv, ii + offset


def _merge(v: torch.Tensor, i: torch.Tensor, cv: torch.Tensor, ci: torch.Tensor, kq: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The kq smallest by (distance, index) of two candidate lists per row ([R, a] and [R, b], indices distinct):
    the same whatever the order of the merges (what lets blocks and processes be combined in any order)."""
    av, ai = torch.cat([v, cv], 1), torch.cat([i, ci], 1)
    o = torch.sort(ai, dim=1).indices
    av, ai = av.gather(1, o), ai.gather(1, o)
    o = torch.sort(av, dim=1, stable=True).indices[:, :kq]
    return av.gather(1, o), ai.gather(1, o)


def _neighbours_symmetric(upper: RowsFn, n: int, kq: int, device: torch.device, comm=None, native: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_neighbours`` for a symmetric distance, computing each pair once (half the N x N Gram): row block
    [s, e) against columns s.. gives rows s..e-1 their candidates there and, transposed, columns e.. theirs among
    rows s..e-1; running (distance, index) top-kq lists and row maxima are merged per block. The block at s is
    [chunk, N-s] whichever process computes it (the same bits); with ``comm`` the row blocks are split by work and
    the per-process lists merged (exact in any order). ``native``: each block by the CPU kernel (finite distances
    only: it does not order NaN as torch's top-k does)."""
    chunk = max(16, min(2048, NEIGHBOUR_CHUNK_BYTES // (4 * n)))  # 2048 x 512 products: ~25% faster than 512
    starts = list(range(0, n, chunk))
    mine = starts
    if comm is not None:
        # contiguous runs of blocks with about equal work (block at s: chunk x (N - s))
        work = torch.tensor([n - s for s in starts], dtype=torch.float64).cumsum(0)
        cut = [int(torch.searchsorted(work, work[-1] * r / comm.world)) for r in range(comm.world + 1)]
        cut[0], cut[-1] = 0, len(starts)
        mine = starts[cut[comm.rank] : cut[comm.rank + 1]]
    inf = float("inf")
    # per row: its kq best (distance, index) so far (inf / -1 until seen) and its largest distance so far
    val = torch.full((n, kq), inf, dtype=torch.float32, device=device)
    idx = torch.full((n, kq), -1, dtype=torch.int64, device=device)
    mx = torch.full((n,), -inf, dtype=torch.float32, device=device)
    if native:
        # one C pass per block (kernels/csrc/rerank_cpu.c: row and column candidates and maxima at once) instead
        # of torch's five; the same lists and maxima, bit for bit. thr: the columns' last list values, contiguous
        thr = torch.full((n,), inf, dtype=torch.float32, device=device)
        threads = torch.get_num_threads()
        for s in mine:
            e = min(n, s + chunk)
            d = upper(s, e)  # [e-s, N-s]
            rv, ri, rm = rerank_cpu.scan_block(d, s, kq, val, idx, thr, mx, threads)  # rows: one list per thread
            mx[s:e] = torch.maximum(mx[s:e], rm)
            val[s:e], idx[s:e] = _merge(val[s:e], idx[s:e], rv, ri, kq)
            del d
        return _gathered(idx, val, mx, kq, comm)
    ws_mask = _Workspace(device, torch.bool)
    seen = 0  # rows of this process's blocks so far: every later row's list holds that many pairs (full at kq)
    for s in mine:
        e = min(n, s + chunk)
        d = upper(s, e)  # [e-s, N-s]
        mx[s:e] = torch.maximum(mx[s:e], torch.amax(d, 1))
        cv, ci = _block_candidates(d, kq, s)
        val[s:e], idx[s:e] = _merge(val[s:e], idx[s:e], cv, ci, kq)
        if e < n:
            tail = d[:, e - s :]  # [e-s, N-e]: rows s..e-1 against columns e.., i.e. transposed, rows e.. candidates
            mx[e:] = torch.maximum(mx[e:], torch.amax(tail, 0))
            # a pair can only enter row c's final list if it is <= c's current worst (which only decreases): a
            # threshold pass instead of a top-k over every transposed row. Exact (tests: a full sort)
            if seen < kq:  # the first blocks (lists not yet full, every pair passes the threshold): a top-k per row
                for c0 in range(0, n - e, TRANSPOSE_TILE):  # [TILE, e-s] transposed tiles: no fresh [N-e, e-s] copy
                    c1 = min(n - e, c0 + TRANSPOSE_TILE)
                    cv, ci = _block_candidates(tail[:, c0:c1].t().contiguous(), kq, s)  # [c1-c0, <=kq]
                    val[e + c0 : e + c1], idx[e + c0 : e + c1] = _merge(val[e + c0 : e + c1], idx[e + c0 : e + c1],
                                                                        cv, ci, kq)
                seen += e - s
                continue
            seen += e - s
            # (the [e-s, N-e] mask in a held buffer: a fresh one per block is page faults again)
            hit = torch.le(tail, val[e:, kq - 1][None, :], out=ws_mask.take(e - s, n - e))
            hr, hc = torch.nonzero(hit, as_tuple=True)
            if hr.numel():
                o = torch.sort(hc, stable=True).indices  # grouped by column, rows ascending within
                hr, hc = hr[o], hc[o]
                cols, counts = torch.unique_consecutive(hc, return_counts=True)
                grp = torch.repeat_interleave(torch.arange(cols.numel(), device=device), counts)
                pos = torch.arange(hr.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[grp]
                width = int(counts.max())
                cv = torch.full((cols.numel(), width), inf, dtype=torch.float32, device=device)
                ci = torch.full((cols.numel(), width), -1, dtype=torch.int64, device=device)
                cv[grp, pos] = tail[hr, hc]
                ci[grp, pos] = hr + s
                r = cols + e
                val[r], idx[r] = _merge(val[r], idx[r], cv, ci, kq)
        del d
    return _gathered(idx, val, mx, kq, comm)


def _gathered(idx: torch.Tensor, val: torch.Tensor, mx: torch.Tensor, kq: int, comm
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-process lists [N, kq] and maxima [N] merged over the processes (exact in any order); as is without
    ``comm``."""
    if comm is not None:
        vs, is_, ms = comm.all_gather(val), comm.all_gather(idx), comm.all_gather(mx)
        val, idx = torch.cat(vs, 1), torch.cat(is_, 1)
        val, idx = _merge(val[:, :0], idx[:, :0], val, idx, kq)
        mx = torch.stack(ms).amax(0)
    return idx, val, mx


def _member(sorted_keys: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For every key: whether it is in ``sorted_keys`` (1-D, ascending) and its position there (clamped)."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys, dtype=torch.bool), torch.zeros_like(keys)
    pos = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == keys, pos


def _reciprocal(knn: torch.Tensor, width: int) -> torch.Tensor:
    """mask [N, width]: knn[i, a] is a k-reciprocal neighbour of i (i is among the first ``width`` of its row)."""
    n = knn.shape[0]
    fwd = knn[:, :width]
    own = torch.arange(n, device=knn.device)[:, None]
    keys = torch.sort((own * n + fwd).reshape(-1)).values
    return _member(keys, (fwd * n + own).reshape(-1))[0].view(n, width)


def _expansion(knn: torch.Tensor, kq: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's k-reciprocal expansion sets as sorted unique pairs (rows [M], cols [M], by row then column):
    R(i) = k-reciprocal neighbours of i within k1+1, plus R_half(c) of every c in R(i) for which
    |R_half(c) ∩ R(i)| > 2/3 |R_half(c)|, where R_half are the k-reciprocal sets within round(k1/2)+1."""
    n = knn.shape[0]
    dev = knn.device
    rec = _reciprocal(knn, kq)
    rec_half = _reciprocal(knn, half)
    pi, pa = torch.nonzero(rec, as_tuple=True)  # (item, position) of every k-reciprocal pair
    pc = knn[pi, pa]
    rec_keys = pi * n + pc  # ascending in item; within an item in rank order
    rec_sorted = torch.sort(rec_keys).values
    extra = []
    for s in range(0, pi.numel(), EXPANSION_BLOCK):
        i, c = pi[s : s + EXPANSION_BLOCK], pc[s : s + EXPANSION_BLOCK]
        cand = knn[c, :half]  # [P, half]: c's candidates, masked by c's half k-reciprocal set
        hm = rec_half[c]
        inter = hm & _member(rec_sorted, i[:, None] * n + cand)[0]
        ln = hm.sum(1)
        # np.intersect1d counts distinct values: both sets are distinct indices, so this is the count
        accept = inter.sum(1).double() > (2 / 3) * ln.double()
        take = hm & accept[:, None]
        extra.append((i[:, None] * n + cand)[take])
    keys = torch.unique(torch.cat([rec_keys] + extra)) if extra else rec_keys.new_empty(0)
    del dev
    return keys // n, keys % n


def _row_sums_like_numpy(w: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Per entry, the sum of its row's entries ([M]; entries sorted by row). On the CPU as numpy's ``w[row].sum()``
    (pairwise summation: the seed's bits), grouping rows by length so each group is one [R, L] axis-1 sum."""
    counts = torch.bincount(rows, minlength=n)
    start = torch.cumsum(counts, 0) - counts
    if w.device.type != "cpu":
        return torch.zeros(n, dtype=w.dtype, device=w.device).index_add_(0, rows, w)[rows]
    wn, cn, sn = w.numpy(), counts.numpy(), start.numpy()
    sums = np.zeros(n, dtype=np.float32)
    for length in np.unique(cn[cn > 0]):  # a loop over distinct row lengths (a few dozen), not over N
        r = np.nonzero(cn == length)[0]
        sums[r] = wn[sn[r][:, None] + np.arange(length)].sum(axis=1)
    return torch.from_numpy(sums)[rows]


def _exp_neg(d: torch.Tensor) -> torch.Tensor:
    """exp(-d): numpy's float32 exp on the CPU (the seed's), torch's elsewhere."""
    if d.device.type == "cpu":
        return torch.from_numpy(np.exp(-d.numpy()))
    return torch.exp(-d)


@dataclass
class Reranker:
    """The state re-ranked distances are computed from, O(N·k1): the encodings V (float16 values held in float32)
    as CSR rows (``v_ptr`` [N+1], ``v_col`` [M], ``v_val`` [M]), the gallery part of V by column as padded tables
    by length bucket (``bucket_tables``; ``g_ptr`` [N+1] its column pointers, which size the query chunks), the
    per-row scale [N] of the original distance, and ``gallery_rows``, the original distances [e-s, G] of queries
    s..e-1 to the gallery. Build with ``build_reranker``."""

    nq: int
    n: int
    lam: float
    v_ptr: torch.Tensor
    v_col: torch.Tensor
    v_val: torch.Tensor
    g_ptr: torch.Tensor
    scale: torch.Tensor
    gallery_rows: RowsFn
    col_bucket: torch.Tensor  # [N] int64: the bucket of each column's gallery list (-1: none)
    col_local: torch.Tensor  # [N] int64: the column's row in its bucket's table
    tab_row: list[torch.Tensor]  # per bucket [n_b, L_b] int32: gallery rows of a column, padded with 0
    tab_val: list[torch.Tensor]  # per bucket [n_b, L_b] float32: their V values, padded with 0.0
    g_row: torch.Tensor | None = None  # [M_g] int32: the gallery lists by column unpadded (CSC by g_ptr; native)
    g_val: torch.Tensor | None = None  # [M_g] float32: their V values
    native: bool = False  # chunks by the CPU kernel (kernels/csrc/rerank_cpu.c): the same bits as the torch path

    @property
    def ng(self) -> int:
        return self.n - self.nq

    def boundaries(self) -> list[int]:
        """Query chunk edges: each chunk within QUERY_CHUNK_BYTES of [C, N] fp32 and PAIR_BUDGET pairs (a query
        with more pairs than the budget gets a chunk of its own). A function of V only, so the dense and the
        streamed results are computed by the same chunks (the same bits)."""
        qcol = self.v_col[: int(self.v_ptr[self.nq])]
        colcount = (self.g_ptr[1:] - self.g_ptr[:-1])[qcol]
        qrow = torch.repeat_interleave(torch.arange(self.nq, device=qcol.device),
                                       self.v_ptr[1 : self.nq + 1] - self.v_ptr[: self.nq])
        per_q = torch.zeros(self.nq, dtype=torch.int64, device=qcol.device).index_add_(0, qrow, colcount)
        cum = torch.cumsum(per_q, 0).cpu()
        max_rows = max(1, QUERY_CHUNK_BYTES // (4 * self.n))
        edges, s = [0], 0
        while s < self.nq:
            base = int(cum[s - 1]) if s > 0 else 0
            e = int(torch.searchsorted(cum, torch.tensor(base + PAIR_BUDGET), right=True))
            e = min(self.nq, max(e, s + 1), s + max_rows)
            edges.append(e)
            s = e
        return edges

    def chunk(self, s: int, e: int) -> torch.Tensor:
        """Re-ranked distances [e-s, G] float32 of queries s..e-1: (1 - lam) * jaccard + lam * d / scale, with
        jaccard = 1 - m / (2 - m), m_ij = sum_k min(V_ik, V_jk) over the k both rows encode.

        m is summed per column bucket: each query entry (i, k) of a bucket takes column k's padded gallery list
        (one contiguous row of that bucket's table, [L]) and adds min(V_ik, V_jk) at (i, j) for all its j at once:
        [P, L] broadcast ops instead of per-pair index arithmetic (padding adds +0.0 to cell (i, 0): no change)."""
        ng, dev = self.ng, self.v_val.device
        a, b = int(self.v_ptr[s]), int(self.v_ptr[e])
        qc, qv = self.v_col[a:b], self.v_val[a:b]
        itype = torch.int32 if (e - s) * ng < 2**31 else torch.int64  # half the index traffic where it fits
        qr = torch.repeat_interleave(torch.arange(e - s, device=dev, dtype=itype),
                                     self.v_ptr[s + 1 : e + 1] - self.v_ptr[s:e])
        bk = self.col_bucket[qc]
        if self.native:
            # per row its entries by (bucket, column): the order in which the torch path below adds into each cell
            # (i, j), so the same sums; summed row by row in C (a [G] row stays in cache, no [P, L] temporaries)
            keep = torch.nonzero(bk >= 0).squeeze(1)
            qrk = qr[keep].long()
            order = keep[torch.argsort(qrk * len(self.tab_row) + bk[keep], stable=True)]
            ptr = torch.zeros(e - s + 1, dtype=torch.int64)
            ptr[1:] = torch.cumsum(torch.bincount(qrk, minlength=e - s), 0)
            out = self.gallery_rows(s, e)
            return rerank_cpu.jaccard_rows(out, ptr, qc[order].contiguous(), qv[order].contiguous(), self.g_ptr,
                                           self.g_row, self.g_val, self.scale[s:e], self.lam,
                                           torch.get_num_threads())
        order = torch.argsort(bk, stable=True)  # by bucket; within a bucket in entry order (rows, then columns)
        counts = torch.bincount(bk + 1, minlength=len(self.tab_row) + 1).tolist()
        m = torch.zeros((e - s) * ng, dtype=torch.float32, device=dev)
        at = counts[0]  # (entries whose column has no gallery entry: bucket -1, first in the order)
        for t, c in enumerate(counts[1:]):
            if c == 0:
                continue
            sel = order[at : at + c]
            at += c
            loc = self.col_local[qc[sel]]
            key = self.tab_row[t][loc].to(itype).add_((qr[sel] * ng)[:, None])  # [P, L] cells i * G + j
            val = torch.minimum(self.tab_val[t][loc], qv[sel][:, None])  # [P, L]
            m.index_add_(0, key.view(-1), val.view(-1))
            del key, val
        m = m.view(e - s, ng)
        # in place, the same operations (and bits) as (1 - m / (2 - m)) * (1 - lam) + (d / scale) * lam
        jac = m.div_(2 - m).neg_().add_(1).mul_(1 - self.lam)
        orig = self.gallery_rows(s, e).div_(self.scale[s:e, None]).mul_(self.lam)
        return jac.add_(orig)

    def chunks(self) -> Iterator[tuple[int, int, torch.Tensor]]:
        """(s, e, re-ranked distances [e-s, G]) for every query chunk, in order."""
        edges = self.boundaries()
        for s, e in zip(edges[:-1], edges[1:], strict=True):
            yield s, e, self.chunk(s, e)


def bucket_lengths(longest: int) -> list[int]:
    """Padded list lengths 1, 2, 3, 4, 6, 8, 12, 16, 24, ... up to >= ``longest``: a list of length c is padded to
    the first that holds it (at most 1.5x its length; ~1.2x over the heavy-tailed column counts of V)."""
    out = [1, 2, 3]
    while out[-1] < longest:
        out.append(out[-2] * 2)
    return out


def bucket_tables(ptr: torch.Tensor, row: torch.Tensor, val: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """CSC lists (``ptr`` [N+1], ``row`` [M], ``val`` [M]) as padded tables by length bucket: per column its
    bucket [N] (-1 when empty) and row in that bucket's table [N]; per bucket rows [n_b, L_b] (padding 0) and
    values [n_b, L_b] (padding 0.0), entries in list order."""
    n, dev = ptr.numel() - 1, ptr.device
    cnt = ptr[1:] - ptr[:-1]
    lengths = bucket_lengths(int(cnt.max()) if n else 1)
    lens_t = torch.tensor(lengths, dtype=torch.int64, device=dev)
    bucket = torch.searchsorted(lens_t, cnt)  # first length >= the column's count
    bucket = torch.where(cnt > 0, bucket, torch.full_like(bucket, -1))
    local = torch.zeros(n, dtype=torch.int64, device=dev)
    tab_row, tab_val = [], []
    for t, length in enumerate(lengths):
        cols = torch.nonzero(bucket == t).squeeze(1)
        local[cols] = torch.arange(cols.numel(), device=dev)
        pos = ptr[cols][:, None] + torch.arange(length, device=dev)  # [n_b, L]
        ok = pos < ptr[cols + 1][:, None]
        pos = torch.where(ok, pos, torch.zeros_like(pos))  # (a bucket has columns only where M > 0: 0 is valid)
        # (int32: gallery indices; the cell keys i * G + j are formed in the chunk's index type)
        tab_row.append(torch.where(ok, row[pos], torch.zeros_like(pos)).int())
        tab_val.append(torch.where(ok, val[pos], torch.zeros((), device=dev)))
    return bucket, local, tab_row, tab_val


def _inputs(probFea, galFea, q_g_dist, q_q_dist, g_g_dist  # noqa: N803
            ) -> tuple[RowsFn, RowsFn | None, RowsFn, PairsFn, int, int, torch.device, bool]:
    """(rows(s, e) -> [e-s, N] original distances of stacked rows, upper(s, e) -> [e-s, N-s] those to columns
    s.. (features only, else None), gallery_rows(s, e) -> [e-s, G] those of queries to the gallery (a tensor the
    caller may overwrite, valid until the next call),
    pairs(i [P], j [P]) -> [P], nq, n, device, whether every upper() distance is finite)."""
    if probFea is not None and galFea is not None:
        q, g = (t.to(torch.float32) for t in _feature_pair(probFea, galFea))
        feat = _stacked(q, g)  # (read only: a view of the caller's buffer where that is one)
        sq = feat.pow(2).sum(1, keepdim=True)
        nq = q.shape[0]

        def rows(s: int, e: int) -> torch.Tensor:
            # the seed's addmm form over the stacked features: |a|^2 + |b|^2 - 2 a.b
            return (sq[s:e].expand(e - s, feat.shape[0]) + sq.t()).addmm_(feat[s:e], feat.t(), beta=1, alpha=-2)

        ws_upper = _Workspace(feat.device)
        # every distance upper() returns is finite where the squared norms are finite and below 2^120:
        # |a|^2 + |b|^2 + 2|a||b| < 2^122 (the CPU kernel's scan needs that; torch's top-k orders NaN / inf)
        finite = bool(torch.isfinite(sq).all()) and (sq.numel() == 0 or float(sq.max()) < 2.0**120)

        def upper(s: int, e: int) -> torch.Tensor:
            # rows s..e-1 against columns s..N-1 only: the distance is symmetric, the rest came from earlier rows.
            # The same operations (and bits) as rows(), written into a held buffer (valid until the next call)
            out = torch.add(sq[s:e], sq[s:].t(), out=ws_upper.take(e - s, feat.shape[0] - s))
            return out.addmm_(feat[s:e], feat[s:].t(), beta=1, alpha=-2)

        def gallery_rows(s: int, e: int) -> torch.Tensor:
            gal, gsq = feat[nq:], sq[nq:]
            return torch.add(sq[s:e], gsq.t()).addmm_(feat[s:e], gal.t(), beta=1, alpha=-2)

        def pairs(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            out = torch.empty(i.numel(), dtype=torch.float32, device=feat.device)
            for s in range(0, i.numel(), 4096):
                a, b = feat[i[s : s + 4096]], feat[j[s : s + 4096]]
                dot = torch.bmm(b.unsqueeze(1), a.unsqueeze(2)).view(-1)
                out[s : s + 4096] = (sq[i[s : s + 4096], 0] + sq[j[s : s + 4096], 0]) - 2 * dot
            return out

        return rows, upper, gallery_rows, pairs, nq, feat.shape[0], feat.device, finite
    if q_g_dist is not None and q_q_dist is not None and g_g_dist is not None:
        def dist(x, name):
            t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
            if t.dim() != 2:
                raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
            return t.to(torch.float32)

        qg, qq, gg = dist(q_g_dist, "q_g_dist"), dist(q_q_dist, "q_q_dist"), dist(g_g_dist, "g_g_dist")
        nq = qg.shape[0]
        if qq.shape != (nq, nq) or gg.shape != (qg.shape[1], qg.shape[1]):
            raise ValueError(f"distance shapes disagree: q_g {tuple(qg.shape)}, q_q {tuple(qq.shape)}, "
                             f"g_g {tuple(gg.shape)}")
        gg, qq = gg.to(qg.device), qq.to(qg.device)
        n = nq + qg.shape[1]

        def rows(s: int, e: int) -> torch.Tensor:
            parts = []
            if s < nq:
                parts.append(torch.cat([qq[s : min(e, nq)], qg[s : min(e, nq)]], 1))
            if e > nq:
                lo = max(s, nq) - nq
                parts.append(torch.cat([qg[:, lo : e - nq].t(), gg[lo : e - nq]], 1))
            return torch.cat(parts)

        def pairs(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
            out = torch.empty(i.numel(), dtype=torch.float32, device=qg.device)
            iq, jq = i < nq, j < nq
            for mi, mj, blk, oi, oj in ((iq, jq, qq, 0, 0), (iq, ~jq, qg, 0, nq), (~iq, jq, qg.t(), nq, 0),
                                        (~iq, ~jq, gg, nq, nq)):
                sel = mi & mj
                out[sel] = blk[i[sel] - oi, j[sel] - oj]
            return out

        def gallery_rows(s: int, e: int) -> torch.Tensor:
            return qg[s:e].clone()  # a copy: Reranker.chunk scales it in place (never the caller's matrix)

        return rows, None, gallery_rows, pairs, nq, n, qg.device, False
    raise ValueError("give probFea and galFea (features), or q_g_dist, q_q_dist and g_g_dist (distances)")


RERANK_BACKENDS = ("auto", "native", "torch")


def _native(backend: str, device: torch.device) -> bool:
    """Whether to use the CPU kernels: "auto" where they are built and the data is on the CPU, "native" requires
    both, "torch" never."""
    if backend not in RERANK_BACKENDS:
        raise ValueError(f"backend must be one of {RERANK_BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    ok = device.type == "cpu" and rerank_cpu.available()
    if backend == "native" and not ok:
        raise ValueError("backend='native' needs CPU tensors and the built CPU kernels (pip install -e . builds them; "
                         "FASTCCREID_NO_NATIVE unset); use backend='torch' or 'auto'")
    return ok


def build_reranker(probFea=None, galFea=None, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,  # noqa: N803
                   q_g_dist=None, q_q_dist=None, g_g_dist=None, comm=None, backend: str = "auto") -> Reranker:
    """The k-reciprocal encodings of the stacked query + gallery set, in O(N·k1) memory (arguments: ``re_ranking``).
    Iterate ``.chunks()`` for the re-ranked distances query chunk by query chunk.

    ``comm`` (``fastccreid.evaluation.sharded.Comm``: ``rank``, ``world``, ``gather_rows``): every process of the
    group passes the same whole inputs; the N x N neighbour search is split over the processes by row blocks and
    gathered, the rest (O(N·k1)) is computed on each, so every process holds the one-process Reranker, bit for bit.

    ``backend``: one of ``RERANK_BACKENDS``; "native" runs the neighbour search's blocks and the chunks' Jaccard sums
    by the CPU kernels (``fastccreid.kernels.rerank_cpu``, the torch path's numbers bit for bit), "torch" by torch
    ops, "auto" (default) the kernels where they are built and the data is on the CPU.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    rows, upper, gallery_rows, pairs, nq, n, dev, finite = _inputs(probFea, galFea, q_g_dist, q_q_dist, g_g_dist)
    if nq == 0 or n == nq:
        raise ValueError("re-ranking needs a non-empty query set and gallery")
    native = _native(backend, dev)
    kq = min(n, k1 + 1)
    if upper is not None:  # features: a symmetric distance, each pair computed once
        knn, knn_d, rowmax = _neighbours_symmetric(upper, n, kq, dev, comm, native and finite)
    else:  # given distance matrices (which need not be symmetric): whole rows
        knn, knn_d, rowmax = _neighbours(rows, n, kq, dev, comm)
    # the seed divides row i by the largest distance in column i of a symmetric matrix: the row's own maximum
    scale = torch.where(rowmax > 0, rowmax, torch.ones_like(rowmax))
    knn_nd = knn_d / scale[:, None]
    half = min(int(np.around(k1 / 2)) + 1, kq)
    vr, vc = _expansion(knn, kq, half)
    # weights use the normalised distances of i's row: from its k-NN list, else computed (the expansion can leave it)
    own = torch.arange(n, device=dev)[:, None]
    kkeys, korder = torch.sort((own * n + knn).reshape(-1))
    found, pos = _member(kkeys, vr * n + vc)
    d = torch.empty(vr.numel(), dtype=torch.float32, device=dev)
    d[found] = knn_nd.reshape(-1)[korder[pos[found]]]
    if not bool(found.all()):
        miss = ~found
        d[miss] = pairs(vr[miss], vc[miss]) / scale[vr[miss]]
    w = _exp_neg(d)
    vals = (w / _row_sums_like_numpy(w, vr, n)).half().float()
    if k2 != 1:
        # query expansion: V_i <- mean of V over i's k2 nearest, kept in float16 as the seed. As numpy's float16
        # mean: the fp32 sum, divided by k2 in fp32, rounded to float16 (the sparse sum adds the neighbours in index
        # order, numpy in rank order: the same bits unless a sum of float16 addends needs more than fp32's 24 bits)
        k2e = min(k2, kq)
        V = torch.sparse_coo_tensor(torch.stack([vr, vc]), vals, (n, n), check_invariants=False)  # noqa: N806
        sel = torch.sparse_coo_tensor(
            torch.stack([torch.arange(n, device=dev).repeat_interleave(k2e), knn[:, :k2e].reshape(-1)]),
            torch.ones(n * k2e, device=dev), (n, n), check_invariants=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "sparse support is in beta" notice
            V = torch.sparse.mm(sel, V.coalesce()).coalesce()  # noqa: N806
        vr, vc = V.indices()[0], V.indices()[1]
        vals = (V.values() / k2e).half().float()
        nz = vals != 0  # (an exact float16 zero carries no weight)
        vr, vc, vals = vr[nz], vc[nz], vals[nz]
        del V, sel
    v_ptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    v_ptr[1:] = torch.cumsum(torch.bincount(vr, minlength=n), 0)
    gm = vr >= nq
    gr, gcol, gval = vr[gm] - nq, vc[gm], vals[gm]
    go = torch.argsort(gcol, stable=True)  # by column, gallery rows ascending within a column
    g_ptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    g_ptr[1:] = torch.cumsum(torch.bincount(gcol, minlength=n), 0)
    g_row, g_val = gr[go], gval[go]  # the gallery part of V by column (CSC by g_ptr)
    col_bucket, col_local, tab_row, tab_val = bucket_tables(g_ptr, g_row, g_val)
    return Reranker(nq=nq, n=n, lam=float(lambda_value), v_ptr=v_ptr, v_col=vc, v_val=vals, g_ptr=g_ptr,
                    scale=scale, gallery_rows=gallery_rows, col_bucket=col_bucket,
                    col_local=col_local, tab_row=tab_row, tab_val=tab_val, g_row=g_row.int(), g_val=g_val,
                    native=native and bool(torch.isfinite(vals).all()))  # (NaN: torch.minimum's propagation)


def re_ranking(probFea=None, galFea=None, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,  # noqa: N803
               q_g_dist=None, q_q_dist=None, g_g_dist=None) -> np.ndarray:
    """Re-ranked query-gallery distance [Q, G] float32 (numpy), as the seed's ``re_ranking``: the chunks of
    ``build_reranker(...).chunks()`` put together (use those to stay out of Q×G memory)."""
    rr = build_reranker(probFea, galFea, k1, k2, lambda_value, q_g_dist=q_g_dist, q_q_dist=q_q_dist,
                        g_g_dist=g_g_dist)
    out = np.empty((rr.nq, rr.ng), dtype=np.float32)
    for s, e, d in rr.chunks():
        out[s:e] = d.cpu().numpy()
    return out
