"""Drop-in ReID evaluator: exact CMC / mAP / mINP for every protocol, from a distance matrix or from features.

The numbers are those of the seed's numpy-argsort-and-loop evaluation (README, Evaluator) with ties broken by
gallery index (a stable sort), computed by ``fastccreid.evaluation`` with the rank ops of
``fastccreid.kernels.rank_stats``: per query only the true matches are sorted, so memory stays O(chunk·G + Q·R) and
nothing Q×G is ever held. Differences from the seed and peers (README, Differences from the official code): a query
whose valid gallery is shorter than ``max_rank`` gets CMC 1 from its first match onwards (no ragged-array crash, no
stale values), PRCC skips queries without a match instead of producing NaN.

Imports only numpy and torch: no torchvision, no DALI, and Triton only when a CUDA tensor takes the Triton path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fastccreid.protocols import PRECISIONS, PROTOCOLS  # defined without torch; still public here

_JUNK = {"market": "market", "ltcc-general": "market", "celeb": "market", "cuhk03": "market",
         "ltcc-cc": "ltcc-cc", "prcc": None}
CUHK03_REPEATS = 10


@dataclass
class EvalResult:
    """CMC [max_rank] (float64; length min(max_rank, G)), mAP and mINP in [0, 1], the count of queries that had a
    true match (the others are skipped, as in the seed), and per-query AP / INP of those queries when asked."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int
    protocol: str
    all_AP: np.ndarray | None = None
    all_INP: np.ndarray | None = None
    valid_query_index: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rank(self, k: int) -> float:
        """CMC at rank k (1-based); ranks past the curve's end repeat its last value."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        return float(self.cmc[min(k, len(self.cmc)) - 1])

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "mAP": float(self.mAP),
            "mINP": float(self.mINP),
            "num_valid_queries": int(self.num_valid_queries),
            "num_queries": int(self.num_queries),
            "cmc": [float(v) for v in self.cmc],
        }
        for k in (1, 5, 10, 20):
            out[f"rank-{k}"] = self.rank(k)
        return out

    def table(self) -> str:
        """The standard one-line table: mAP, mINP, R-1/5/10/20 in percent."""
        head = f"{'protocol':<14}{'mAP':>8}{'mINP':>8}{'R-1':>8}{'R-5':>8}{'R-10':>8}{'R-20':>8}{'valid q':>9}"
        vals = [self.mAP, self.mINP] + [self.rank(k) for k in (1, 5, 10, 20)]
        row = f"{self.protocol:<14}" + "".join(f"{100 * v:>8.2f}" for v in vals) + f"{self.num_valid_queries:>9}"
        return head + "\n" + row


def normalize_features(f: torch.Tensor) -> torch.Tensor:
    """The seed's ``f / (||f||_2 + 1e-12)`` per row, in fp32: [N, D]."""
    from fastccreid.kernels.seed_distance import seed_normalize

    return seed_normalize(f)


def evaluate(
    distmat=None,
    *,
    qf=None,
    gf=None,
    q_pids,
    g_pids,
    q_camids=None,
    g_camids=None,
    q_clothes=None,
    g_clothes=None,
    protocol: str = "market",
    max_rank: int = 50,
    normalize: bool = True,
    precision: str = "fp32",
    rerank: bool = False,
    rerank_k1: int = 20,
    rerank_k2: int = 6,
    rerank_lambda: float = 0.3,
    return_per_query: bool = False,
    cuhk03_seed: int | None = 0,
    chunk_size: int | None = None,
    backend: str = "auto",
    process_group=None,
) -> EvalResult:
    """CMC / mAP / mINP of a query set against a gallery under ``protocol`` (README, Evaluator).

    Give either ``distmat`` [Q, G] (smaller is closer) or features ``qf`` [Q, D] and ``gf`` [G, D]; with features the
    distance is the seed's squared euclidean of L2-normalised features (``normalize=False`` keeps them raw).
    ``precision`` "bf16"/"fp16" computes feature distances in that precision (faster, approximate); "fp32" is exact.
    ``rerank`` applies k-reciprocal re-ranking (``fastccreid.rerank``) first. protocol "cuhk03" is torchreid's
    single-gallery-shot CMC (10 draws of one gallery image per identity; ``cuhk03_seed`` None draws from numpy's
    global RNG exactly as torchreid does, an int seeds a private RandomState). Inputs: numpy or torch, any device.

    ``process_group``: None evaluates in this process. True (the default ``torch.distributed`` group) or a
    ProcessGroup evaluates with the gallery sharded over its processes (README, Evaluator over N processes): every
    process passes the same queries (``qf`` / ``q_*``) and its own contiguous shard of the gallery (``gf`` rows, or
    ``distmat``'s columns, and ``g_*``), shards in rank order; every process returns the result one process gives
    for the whole gallery, exactly. Not with ``rerank``, protocol "cuhk03", precision other than "fp32" or float64
    features (ValueError on every process).
    """
    if process_group is not None:
        from fastccreid.evaluation.sharded import sharded_stats

        st, nq, ng = sharded_stats(distmat, qf, gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                                   g_camids=g_camids, q_clothes=q_clothes, g_clothes=g_clothes, protocol=protocol,
                                   protocols=PROTOCOLS, junk_of=_JUNK, precision=precision, precisions=PRECISIONS,
                                   max_rank=max_rank, normalize=normalize, rerank=rerank, chunk_size=chunk_size,
                                   backend=backend, process_group=process_group)
        return _result(st, protocol, max_rank, nq, ng, return_per_query)
    from fastccreid.evaluation import rank_stats
    from fastccreid.kernels.checks import as_tensor, check_eval_inputs, require_finite

    inp = check_eval_inputs(distmat, qf, gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids,
                            q_clothes=q_clothes, g_clothes=g_clothes, protocol=protocol, protocols=PROTOCOLS,
                            junk_of=_JUNK, precision=precision, precisions=PRECISIONS, max_rank=max_rank)
    junk = _JUNK[protocol]
    dm, q, g, nq, ng = inp.dm, inp.q, inp.g, inp.nq, inp.ng
    qp, gp, qc, gc, qcl, gcl = inp.qp, inp.gp, inp.qc, inp.gc, inp.qcl, inp.gcl

    if distmat is None:
        if rerank or protocol == "cuhk03":
            require_finite(q)  # (rank_stats checks the features it is given itself)
            require_finite(g)
            q = normalize_features(q) if normalize else q.to(torch.float32)
            g = normalize_features(g) if normalize else g.to(torch.float32)
    kwargs = dict(q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl, junk=junk,
                  chunk_size=chunk_size, backend=backend)
    streamed = False
    if rerank:
        if distmat is not None:
            raise ValueError("rerank=True needs features (qf, gf): k-reciprocal re-ranking also uses the "
                             "query-query and gallery-gallery distances; call fastccreid.rerank.re_ranking "
                             "with q_g, q_q and g_g distance matrices instead")
        # streamed by query chunks (never Q×G) unless a later step needs the dense re-ranked matrix
        streamed = protocol != "cuhk03"
        if streamed:
            from fastccreid.evaluation.reranked import reranked_rank_stats

            st = reranked_rank_stats(q, g, k1=rerank_k1, k2=rerank_k2, lambda_value=rerank_lambda, **kwargs)
        else:
            from fastccreid.rerank import re_ranking

            dm = as_tensor(re_ranking(q, g, k1=rerank_k1, k2=rerank_k2, lambda_value=rerank_lambda),
                           "reranked distmat")

    if streamed:
        pass
    elif distmat is not None or rerank:
        st = rank_stats(dm, None, "precomputed", **kwargs)
    elif protocol == "cuhk03":
        st = rank_stats(q, g, "sqeuclidean", **kwargs)
    else:
        # raw features: rank_stats normalises as the seed, tile by tile when a normalised copy would not fit
        st = rank_stats(q, g, "sqeuclidean", normalize=normalize, precision=precision, **kwargs)
    cmc = None
    if protocol == "cuhk03":
        if distmat is None and not rerank:
            dm = None
        cmc = _cuhk03_cmc(dm, q if dm is None else None, g if dm is None else None, qp, gp, qc, gc,
                          st.valid, min(int(max_rank), ng), cuhk03_seed)
    return _result(st, protocol, max_rank, nq, ng, return_per_query, cmc)


def _result(st, protocol: str, max_rank: int, nq: int, ng: int, return_per_query: bool,
            cmc: np.ndarray | None = None) -> EvalResult:
    """``EvalResult`` from per-query stats (the CMC from the first-match ranks unless ``cmc`` is given)."""
    valid = st.valid.cpu().numpy()
    nvalid = int(valid.sum())
    if nvalid == 0:
        raise ValueError("no query has a true match in the gallery (after removing junk): all query identities "
                         "are missing from the gallery")
    cut = min(int(max_rank), ng)
    ap = st.ap.cpu().numpy()[valid]
    inp = st.inp.cpu().numpy()[valid]
    if cmc is None:
        first = st.first_rank.cpu().numpy()[valid]
        counts = np.bincount(np.minimum(first, cut + 1) - 1, minlength=cut + 1)[:cut]
        cmc = np.cumsum(counts) / nvalid
    return EvalResult(
        cmc=np.asarray(cmc, dtype=np.float64),
        mAP=float(np.mean(ap)),
        mINP=float(np.mean(inp)),
        num_valid_queries=nvalid,
        num_queries=nq,
        protocol=protocol,
        all_AP=ap if return_per_query else None,
        all_INP=inp if return_per_query else None,
        valid_query_index=np.nonzero(valid)[0] if return_per_query else None,
    )


def _cuhk03_cmc(dm, q, g, qp, gp, qc, gc, valid, cut: int, seed) -> np.ndarray:
    """torchreid's single-gallery-shot CMC: per valid query, 10 draws of one kept gallery image per identity
    (identities in order of first appearance in the ranking, as its dict), CMC of the drawn list, averaged.
    Draws consume numpy's RNG exactly as torchreid's ``np.random.choice`` loop does."""
    rs = np.random.mtrand._rand if seed is None else np.random.RandomState(seed)
    qp_n, gp_n, qc_n, gc_n = (t.cpu().numpy() for t in (qp, gp, qc, gc))
    vq = np.nonzero(valid.cpu().numpy())[0]
    total = np.zeros(cut, dtype=np.float64)
    rows = 256
    for s in range(0, len(vq), rows):
        qi = vq[s : s + rows]
        if dm is not None:
            d = dm[torch.as_tensor(qi, device=dm.device)]
        else:
            from fastccreid.kernels.seed_distance import chunk_distance

            d = chunk_distance(q[torch.as_tensor(qi, device=q.device)], g, "sqeuclidean")
        order = torch.sort(d, dim=1, stable=True).indices.cpu().numpy()
        for row, i in zip(order, qi, strict=True):
            pids = gp_n[row]
            keep = ~((pids == qp_n[i]) & (gc_n[row] == qc_n[i]))
            pids = pids[keep]
            uniq, first_pos, inverse, counts = np.unique(pids, return_index=True, return_inverse=True,
                                                         return_counts=True)
            appear = np.argsort(first_pos, kind="stable")  # dict insertion order: first appearance
            cnt = counts[appear]
            draws = rs.randint(0, np.tile(cnt, CUHK03_REPEATS)).reshape(CUHK03_REPEATS, -1)
            # rank position (in the kept list) of the j-th occurrence of each identity
            occ_sorted = np.argsort(inverse, kind="stable")
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            rank_of_group = np.empty(len(uniq), dtype=np.int64)
            rank_of_group[appear] = np.arange(len(uniq))
            chosen = occ_sorted[starts[appear][None, :] + draws]  # [repeats, n_ids] positions in kept list
            own = int(rank_of_group[np.searchsorted(uniq, qp_n[i])])
            pos = (chosen < chosen[:, own : own + 1]).sum(1)  # identities drawn ahead of the true match
            hit = np.arange(cut)[None, :] >= pos[:, None]
            total += hit.mean(0)
    return total / len(vq)
