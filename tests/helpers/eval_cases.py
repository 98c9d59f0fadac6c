"""Evaluation oracles and case builders shared by the evaluator, rank-statistics, top-k, compat and Triton tests.

Every oracle here is written from the protocol's definition (a stable full sort of each row, Python loops), never
from the code it checks: a numpy argsort per query, the seed's AP / INP formulas, torchreid's single-gallery-shot
CUHK03 draws. Case builders take explicit integer seeds (never ``hash()``), so a failure reproduces.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

JUNK_RULES = (None, "market", "ltcc-cc")


def junk_mask(qp, gp, qc, gc, qcl, gcl, junk) -> np.ndarray:
    """[Q, G] bool: gallery items the junk rule removes for each query (same pid and same camera, or for
    "ltcc-cc" same pid and same camera or same clothes)."""
    same = qp[:, None] == gp[None, :]
    if junk == "market":
        return same & (qc[:, None] == gc[None, :])
    if junk == "ltcc-cc":
        return same & ((qc[:, None] == gc[None, :]) | (qcl[:, None] == gcl[None, :]))
    return np.zeros_like(same)


def per_query_oracle(dm, qp, gp, qc, gc, qcl, gcl, junk):
    """Stable full sort per row, then the seed's per-query formulas -> list of (first_rank, AP, INP) per query, or
    None for a query without a true match in its valid gallery."""
    dm = np.asarray(dm)
    bad = junk_mask(np.asarray(qp), np.asarray(gp), qc if qc is None else np.asarray(qc),
                    gc if gc is None else np.asarray(gc), qcl if qcl is None else np.asarray(qcl),
                    gcl if gcl is None else np.asarray(gcl), junk)
    out = []
    for i in range(dm.shape[0]):
        order = np.argsort(dm[i], kind="stable")
        same = gp[order] == qp[i]
        raw = same[~bad[i][order]]
        if not raw.any():
            out.append(None)
            continue
        pos = np.nonzero(raw)[0]
        ap = np.mean((np.arange(len(pos)) + 1) / (pos + 1))
        out.append((pos[0] + 1, ap, len(pos) / (pos[-1] + 1)))
    return out


def distmat_case(seed: int, nq: int, ng: int, npid: int, ties: bool, ncam: int = 2, ncl: int = 2):
    """(dm [Q, G] float32, qp, gp, qc, gc, qcl, gcl): uniform distances, or integers 0..2 (many ties)."""
    rng = np.random.default_rng(seed)
    dm = rng.integers(0, 3, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng)).astype(np.float32)
    return (dm, rng.integers(0, npid, nq), rng.integers(0, npid, ng), rng.integers(0, ncam, nq),
            rng.integers(0, ncam, ng), rng.integers(0, ncl, nq), rng.integers(0, ncl, ng))


def random_case(rng: np.random.Generator, nq: int, ng: int, npid: int, ncam: int = 3, ncl: int = 3,
                ties: bool = False):
    """(dm, qp, gp, qc, gc, qcl, gcl) from ``rng``: uniform distances, or integers 0..4 when ``ties``."""
    qp = rng.integers(0, npid, nq)
    gp = rng.integers(0, npid, ng)
    qc, gc = rng.integers(0, ncam, nq), rng.integers(0, ncam, ng)
    qcl, gcl = rng.integers(0, ncl, nq), rng.integers(0, ncl, ng)
    dm = rng.integers(0, 5, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng)).astype(np.float32)
    return dm, qp, gp, qc, gc, qcl, gcl


def torch_labels(gen: torch.Generator, nq: int, ng: int, npid: int = 4) -> dict:
    """q/g pids (0..npid-1), camids and clothes (0..1) as int64 tensors, keyed as the rank ops take them."""
    return dict(q_pids=torch.randint(0, npid, (nq,), generator=gen),
                g_pids=torch.randint(0, npid, (ng,), generator=gen),
                q_camids=torch.randint(0, 2, (nq,), generator=gen), g_camids=torch.randint(0, 2, (ng,), generator=gen),
                q_clothes=torch.randint(0, 2, (nq,), generator=gen),
                g_clothes=torch.randint(0, 2, (ng,), generator=gen))


def exact_rows(gen: torch.Generator, n: int, d: int, nnz: int = 4) -> torch.Tensor:
    """[n, d] fp32 features whose every distance is exact in fp32 whatever the summation order: each row has ``nnz``
    (4) entries +-s/2 (s a power of two from 1/4 to 8, per row), the rest 0, so its norm is s and the seed's
    normalisation x / (||x|| + 1e-12) is exact (1e-12 vanishes next to s in fp32), products are multiples of 2^-8 and
    all sums are exact. BLAS kernels of any shape, blocking or thread count then give the same bits, so two paths
    that tile a product differently must agree bit for bit; the few distinct values give many exact ties."""
    x = torch.zeros(n, d)
    pos = torch.rand(n, d, generator=gen).argsort(dim=1)[:, :nnz]
    sign = torch.randint(0, 2, (n, nnz), generator=gen).float() * 2 - 1
    scale = 2.0 ** torch.randint(-2, 4, (n, 1), generator=gen).float()
    return x.scatter_(1, pos, sign * scale / 2)


def labels_numpy(lab: dict):
    """(qp, gp, qc, gc, qcl, gcl) numpy arrays from ``torch_labels``' dict."""
    return tuple(lab[k].numpy() for k in ("q_pids", "g_pids", "q_camids", "g_camids", "q_clothes", "g_clothes"))


def seed_sqeuclidean_f64(q: torch.Tensor, g: torch.Tensor) -> np.ndarray:
    """Squared euclidean distances [Q, G] in float64 by explicit differences (no matmul identity)."""
    q64, g64 = q.double(), g.double()
    return ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1).numpy()


def topk_oracle(dm: np.ndarray, k: int, bad: np.ndarray | None):
    """k smallest per row by a stable argsort, junk (``bad``) excluded: (values float64 [Q, k'], indices [Q, k'])
    with -1 for slots past the valid gallery."""
    d = dm.astype(np.float64).copy()
    if bad is not None:
        d[bad] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(d, order, 1)
    order = np.where(np.isinf(vals), -1, order)
    return vals, order


def market_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's / fast-reid's eval_market1501 Python loop (stable argsort) -> cmc, all_AP, all_INP."""
    max_rank = min(max_rank, distmat.shape[1])
    indices = np.argsort(distmat, axis=1, kind="stable")
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = (g_pids[order] == q_pids[i]).astype(np.int32)[keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        last = np.where(raw == 1)[0].max()
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0) * raw
        all_ap.append(tmp.sum() / raw.sum())
    return np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_ap), all_ap, all_inp


def torchreid_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's eval_cuhk03 loop (``np.random.choice`` per identity from numpy's global RNG, 10 repeats),
    with the CMC of a short row padded by ones after the first match (our fix of its ragged array)."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc = []
    for q_idx in range(num_q):
        order = indices[q_idx]
        keep = ~((g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx]))
        raw = matches[q_idx][keep]
        if not np.any(raw):
            continue
        groups = defaultdict(list)
        for idx, pid in enumerate(g_pids[order][keep]):
            groups[pid].append(idx)
        cmc = np.zeros(max_rank)
        for _ in range(10):
            mask = np.zeros(len(raw), dtype=bool)
            for _, idxs in groups.items():
                mask[np.random.choice(idxs)] = True
            c = raw[mask].cumsum()
            c[c > 1] = 1
            full = np.ones(max_rank)
            full[: min(max_rank, len(c))] = c[:max_rank]
            cmc += full
        all_cmc.append(cmc / 10)
    return np.mean(all_cmc, 0)


def mean_ap_oracle(dm, qp, gp, qc, gc, qcl=None, gcl=None, junk="market") -> float:
    """mAP over the queries that have a true match, from ``per_query_oracle``."""
    per = [o for o in per_query_oracle(dm, qp, gp, qc, gc, qcl, gcl, junk) if o is not None]
    return float(np.mean([o[1] for o in per]))
