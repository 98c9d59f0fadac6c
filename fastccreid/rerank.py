"""k-reciprocal re-ranking (Zhong et al., CVPR 2017; k1=20, k2=6, lambda=0.3) built on top-k neighbours.

Same algorithm as the seed's ``re_ranking(probFea, galFea, k1, k2, lambda)`` (evaluate/re_ranking.py; numbers: below),
which builds the dense (Q+G)^2 distance and rank matrices. Here each item only needs its k1+1 nearest neighbours
and the largest distance of its row (streamed over row chunks), the encodings V are sparse (a few dozen entries per
row), and the Jaccard term is non-trivial only for pairs that share an encoded neighbour. Memory: O(N·k1) plus the
Q×G result, instead of several (Q+G)^2 arrays.

Input: features (``probFea`` [Q, D], ``galFea`` [G, D], numpy or torch), as the seed's: the distance is the
squared euclidean of the given features (the seed's callers pass L2-normalised ones). Or distances: pass
``q_g_dist`` [Q, G], ``q_q_dist`` [Q, Q], ``g_g_dist`` [G, G] (already *squared* if you want the seed's numbers:
unlike torchreid's ``re_ranking`` we never square what we are given). Like the seed, V is stored in float16.

One difference: the seed accumulates the Jaccard sums (and the Jaccard distance) in float16, we in float32, so
re-ranked distances differ from the seed's by up to a few 1e-3 (the float16 rounding of sums near 1); with that
term in float32 the seed's algorithm gives our numbers exactly (tests/test_rerank.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _feats(x, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float32)


def _neighbours(rows_fn, n: int, kq: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the kq nearest (stable by index), their distances, and the row's largest distance."""
    idx = torch.empty(n, kq, dtype=torch.int64)
    val = torch.empty(n, kq, dtype=torch.float32)
    mx = torch.empty(n, dtype=torch.float32)
    for s in range(0, n, chunk):
        d = rows_fn(s, min(n, s + chunk))
        mx[s : s + d.shape[0]] = d.max(1).values
        v = torch.topk(d, kq, dim=1, largest=False, sorted=True).values
        kth = v[:, -1:]
        cand = d <= kth
        if int(cand.sum(1).max()) == kq:
            ii = torch.nonzero(cand)[:, 1].view(d.shape[0], kq)
            vv = d.gather(1, ii)
            o = torch.sort(vv, dim=1, stable=True).indices
            ii, vv = ii.gather(1, o), vv.gather(1, o)
        else:
            o = torch.sort(d, dim=1, stable=True)
            ii, vv = o.indices[:, :kq], o.values[:, :kq]
        idx[s : s + d.shape[0]] = ii
        val[s : s + d.shape[0]] = vv
    return idx, val, mx


def re_ranking(probFea=None, galFea=None, k1: int = 20, k2: int = 6, lambda_value: float = 0.3, *,  # noqa: N803
               q_g_dist=None, q_q_dist=None, g_g_dist=None) -> np.ndarray:
    """Re-ranked query-gallery distance [Q, G] float32 (numpy), as the seed's ``re_ranking``."""
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if probFea is not None and galFea is not None:
        q, g = _feats(probFea, "probFea"), _feats(galFea, "galFea")
        if q.shape[1] != g.shape[1]:
            raise ValueError(f"probFea and galFea dims differ: {q.shape[1]} vs {g.shape[1]}")
        feat = torch.cat([q, g])
        nq = q.shape[0]
        sq = feat.pow(2).sum(1, keepdim=True)

        def rows(s: int, e: int) -> torch.Tensor:
            # the seed's addmm form over the stacked features: |a|^2 + |b|^2 - 2 a.b
            return (sq[s:e].expand(e - s, feat.shape[0]) + sq.t()).addmm_(feat[s:e], feat.t(), beta=1, alpha=-2)

        def pairs(i: int, cols: torch.Tensor) -> torch.Tensor:
            return (sq[i] + sq[cols, 0]) - 2 * (feat[cols] @ feat[i])
    elif q_g_dist is not None and q_q_dist is not None and g_g_dist is not None:
        qg = torch.as_tensor(np.asarray(q_g_dist), dtype=torch.float32)
        qq = torch.as_tensor(np.asarray(q_q_dist), dtype=torch.float32)
        gg = torch.as_tensor(np.asarray(g_g_dist), dtype=torch.float32)
        nq = qg.shape[0]
        if qq.shape != (nq, nq) or gg.shape != (qg.shape[1], qg.shape[1]):
            raise ValueError(f"distance shapes disagree: q_g {tuple(qg.shape)}, q_q {tuple(qq.shape)}, "
                             f"g_g {tuple(gg.shape)}")
        full_top = torch.cat([qq, qg], 1)
        full_bot = torch.cat([qg.t(), gg], 1)

        def pairs(i: int, cols: torch.Tensor) -> torch.Tensor:
            return rows(i, i + 1)[0, cols]

        def rows(s: int, e: int) -> torch.Tensor:
            parts = []
            if s < nq:
                parts.append(full_top[s : min(e, nq)])
            if e > nq:
                parts.append(full_bot[max(s, nq) - nq : e - nq])
            return torch.cat(parts)
    else:
        raise ValueError("give probFea and galFea (features), or q_g_dist, q_q_dist and g_g_dist (distances)")
    n = nq + (rows(0, 1).shape[1] - nq)
    if nq == 0 or n == nq:
        raise ValueError("re-ranking needs a non-empty query set and gallery")
    kq = min(n, k1 + 1)
    knn, knn_d, rowmax = _neighbours(rows, n, kq)
    # the seed divides row i by the largest distance in column i of a symmetric matrix: the row's own maximum
    scale = torch.where(rowmax > 0, rowmax, torch.ones_like(rowmax))
    knn_nd = knn_d / scale[:, None]
    half = int(np.around(k1 / 2)) + 1
    half = min(half, kq)
    knn_l = knn.numpy()
    # k-reciprocal sets: j in R(i) iff j is in i's k1+1 and i is in j's k1+1
    rec = []
    for i in range(n):
        fwd = knn_l[i, :kq]
        rec.append(fwd[(knn_l[fwd, :kq] == i).any(1)])
    rec_half = []
    for i in range(n):
        fwd = knn_l[i, :half]
        rec_half.append(fwd[(knn_l[fwd, :half] == i).any(1)])
    rows_v, cols_v, vals_v = [], [], []
    for i in range(n):
        r = rec[i]
        exp = [r]
        for cnd in r:
            cr = rec_half[cnd]
            if len(np.intersect1d(cr, r)) > 2 / 3 * len(cr):
                exp.append(cr)
        e = np.unique(np.concatenate(exp))
        # weights use the normalised distances of i's row: gather them (the expansion can leave i's k1+1)
        d = _row_dists(pairs, i, e, knn_l[i], knn_nd[i].numpy(), float(scale[i]))
        w = np.exp(-d)
        rows_v.append(np.full(len(e), i))
        cols_v.append(e)
        vals_v.append((w / w.sum()).astype(np.float16))
    ri = np.concatenate(rows_v)
    ci = np.concatenate(cols_v)
    vv = np.concatenate(vals_v).astype(np.float32)
    V = torch.sparse_coo_tensor(torch.from_numpy(np.stack([ri, ci])), torch.from_numpy(vv), (n, n),
                                check_invariants=False).coalesce()
    if k2 != 1:
        # query expansion: V_i <- mean of V over i's k2 nearest, kept in float16 as the seed. As numpy's float16
        # mean: the fp32 sum, divided by k2 in fp32, rounded to float16 (the sparse sum adds the neighbours in index
        # order, numpy in rank order: the same bits unless a sum of float16 addends needs more than fp32's 24 bits)
        k2e = min(k2, kq)
        sel = torch.sparse_coo_tensor(
            torch.stack([torch.arange(n).repeat_interleave(k2e), knn[:, :k2e].reshape(-1)]),
            torch.ones(n * k2e), (n, n), check_invariants=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's "sparse support is in beta" notice
            V = torch.sparse.mm(sel, V).coalesce()
        V = torch.sparse_coo_tensor(V.indices(), (V.values() / k2e).half().float(), (n, n),
                                    check_invariants=False).coalesce()
    return _jaccard_final(V, rows, nq, n, lambda_value, scale)


def _row_dists(pairs, i: int, cols: np.ndarray, knn_i: np.ndarray, knn_nd_i: np.ndarray, scale: float) -> np.ndarray:
    """Normalised distances from item i to ``cols``: from its k-NN list where possible, else computed."""
    out = np.empty(len(cols), dtype=np.float32)
    where = np.searchsorted(np.sort(knn_i), cols)
    srt = np.argsort(knn_i, kind="stable")
    found = (where < len(knn_i)) & (np.sort(knn_i)[np.minimum(where, len(knn_i) - 1)] == cols)
    out[found] = knn_nd_i[srt[where[found]]]
    if not found.all():
        out[~found] = (pairs(i, torch.from_numpy(cols[~found])) / scale).numpy()
    return out


def _jaccard_final(V: torch.Tensor, rows, nq: int, n: int, lam: float, scale: torch.Tensor) -> np.ndarray:
    """final = (1 - lam) * jaccard + lam * normalised original, over query x gallery; jaccard = 1 - m / (2 - m)
    with m_ij = sum_k min(V_ik, V_jk), non-zero only where rows i and j share an encoded neighbour."""
    ng = n - nq
    idx, val = V.indices(), V.values()
    r, c = idx[0], idx[1]
    qmask = r < nq
    # group by column k: for every k, pair each query entry with each gallery entry
    qr, qc, qv = r[qmask], c[qmask], val[qmask]
    gr, gc, gv = r[~qmask] - nq, c[~qmask], val[~qmask]
    go = torch.argsort(gc, stable=True)
    gr, gc, gv = gr[go], gc[go], gv[go]
    starts = torch.searchsorted(gc, qc, side="left")
    ends = torch.searchsorted(gc, qc, side="right")
    cnt = ends - starts
    rep_q = torch.repeat_interleave(torch.arange(qc.numel()), cnt)
    offs = torch.arange(int(cnt.sum())) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
    gpos = starts[rep_q] + offs
    m = torch.zeros(nq * ng, dtype=torch.float32)
    m.index_add_(0, qr[rep_q] * ng + gr[gpos], torch.minimum(qv[rep_q], gv[gpos]))
    m = m.view(nq, ng)
    jac = 1 - m / (2 - m)
    out = torch.empty(nq, ng, dtype=torch.float32)
    for s in range(0, nq, 1024):
        e = min(nq, s + 1024)
        orig = rows(s, e)[:, nq:] / scale[s:e, None]
        out[s:e] = jac[s:e] * (1 - lam) + orig * lam
    return out.numpy()
