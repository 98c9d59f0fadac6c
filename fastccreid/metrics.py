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
         "ltcc-cc": "ltcc-cc", "ltcc-sc": "ltcc-sc", "prcc": None}
CUHK03_REPEATS = 10


class NoValidQueryError(ValueError):
    """No query has a true match in its valid gallery (every query identity is missing after junk removal). A
    ValueError; the compat forms raise subclasses that are also the error type of the codebase they replace
    (reid-strong-baseline's AssertionError, open-reid's RuntimeError, Simple-CCReID's ZeroDivisionError)."""


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
    roc: dict[float, float] | None = None  # TPR at FPR 1e-4 / 1e-3 / 1e-2 when evaluated with roc=True

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
        if self.roc is not None:
            out["roc"] = {roc_key(f): float(t) for f, t in self.roc.items()}
        return out

    def table(self) -> str:
        """The standard one-line table: mAP, mINP, R-1/5/10/20 in percent."""
        head = f"{'protocol':<14}{'mAP':>8}{'mINP':>8}{'R-1':>8}{'R-5':>8}{'R-10':>8}{'R-20':>8}{'valid q':>9}"
        vals = [self.mAP, self.mINP] + [self.rank(k) for k in (1, 5, 10, 20)]
        row = f"{self.protocol:<14}" + "".join(f"{100 * v:>8.2f}" for v in vals) + f"{self.num_valid_queries:>9}"
        if self.roc is not None:  # TPR (percent) at each FPR
            head += "".join(f"{roc_key(f):>18}" for f in self.roc)
            row += "".join(f"{100 * t:>18.2f}" for t in self.roc.values())
        return head + "\n" + row


def roc_key(fpr: float) -> str:
    """The name of a ROC figure: 'TPR@FPR=1e-04'."""
    return f"TPR@FPR={fpr:.0e}"


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
    roc: bool = False,
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
    for the whole gallery, exactly. With ``rerank`` (features only) the gallery shards are gathered and the N×N
    neighbour search and the query chunks split over the processes. Not with ``roc``, protocol "cuhk03", precision
    other than "fp32" or float64 features without ``rerank`` (ValueError on every process); ``ReIDEvaluator``
    gathers instead and has them all.

    ``roc``: also TPR at FPR 1e-4, 1e-3 and 1e-2 over every non-junk query-gallery pair (true matches positive,
    other identities negative), exact, in ``EvalResult.roc`` (``fastccreid.evaluation.roc``). Protocol "ltcc-sc" is
    CAL's same-clothes setting: true matches share pid and clothes from another camera; same pid with the same
    camera or other clothes is junk.
    """
    if process_group is not None:
        if roc:
            raise ValueError("roc=True is not available with process_group (the sharded evaluator); gather the "
                             "features instead: fastccreid.metrics.ReIDEvaluator(process_group=...) computes it")
        from fastccreid.evaluation.sharded import sharded_stats

        st, nq, ng = sharded_stats(distmat, qf, gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids,
                                   g_camids=g_camids, q_clothes=q_clothes, g_clothes=g_clothes, protocol=protocol,
                                   protocols=PROTOCOLS, junk_of=_JUNK, precision=precision, precisions=PRECISIONS,
                                   max_rank=max_rank, normalize=normalize, rerank=rerank, chunk_size=chunk_size,
                                   backend=backend, process_group=process_group, rerank_k1=rerank_k1,
                                   rerank_k2=rerank_k2, rerank_lambda=rerank_lambda)
        return _result(st, protocol, max_rank, nq, ng, return_per_query)
    from fastccreid.evaluation import rank_stats
    from fastccreid.kernels.checks import as_tensor, check_eval_inputs, require_finite

    inp = check_eval_inputs(distmat, qf, gf, q_pids=q_pids, g_pids=g_pids, q_camids=q_camids, g_camids=g_camids,
                            q_clothes=q_clothes, g_clothes=g_clothes, protocol=protocol, protocols=PROTOCOLS,
                            junk_of=_JUNK, precision=precision, precisions=PRECISIONS, max_rank=max_rank)
    junk = _JUNK[protocol]
    dm, q, g, nq, ng = inp.dm, inp.q, inp.g, inp.nq, inp.ng
    qp, gp, qc, gc, qcl, gcl = inp.qp, inp.gp, inp.qc, inp.gc, inp.qcl, inp.gcl

    normalized = False
    if distmat is None:
        if rerank or protocol == "cuhk03":
            normalized = True
            require_finite(q)  # (rank_stats checks the features it is given itself)
            require_finite(g)
            if rerank:  # re-ranking works on the stacked query + gallery set: one [Q + G, D] buffer, its row views
                from fastccreid.rerank import stack_features

                q, g = stack_features(q, g, normalize)
            else:
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
        streamed = not (protocol == "cuhk03" or roc)
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
    roc_res = None
    if roc:
        from fastccreid.evaluation.roc import roc_tpr

        labels = dict(qp=qp, gp=gp, qc=qc, gc=gc, qcl=qcl, gcl=gcl, junk=junk, chunk_size=chunk_size)
        if distmat is not None or rerank:
            roc_res = roc_tpr(dm, None, None, **labels)
        elif normalized or not normalize:
            roc_res = roc_tpr(None, q.to(torch.float32) if q.dtype != torch.float64 else q,
                              g.to(torch.float32) if g.dtype != torch.float64 else g, **labels)
        else:
            roc_res = roc_tpr(None, normalize_features(q), normalize_features(g), **labels)
    return _result(st, protocol, max_rank, nq, ng, return_per_query, cmc, roc_res)


def _result(st, protocol: str, max_rank: int, nq: int, ng: int, return_per_query: bool,
            cmc: np.ndarray | None = None, roc: dict[float, float] | None = None) -> EvalResult:
    """``EvalResult`` from per-query stats (the CMC from the first-match ranks unless ``cmc`` is given)."""
    valid = st.valid.cpu().numpy()
    nvalid = int(valid.sum())
    if nvalid == 0:
        raise NoValidQueryError("no query has a true match in the gallery (after removing junk): all query "
                                "identities are missing from the gallery")
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
        roc=roc,
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


class ReIDEvaluator:
    """The accumulating evaluator (one per evaluation loop): ``update`` per batch, ``compute`` once, ``reset``.

    ``update(features [B, D], pids [B], camids [B], clothes [B], is_query=...)`` stores a private copy of the batch
    (torch or numpy, any device; the features stay on their device), so memory is the features only, (Q+G)·D,
    never Q×G. ``is_query`` is a bool for the whole batch or a bool array [B] (query vs gallery per item);
    ``index`` [B] (optional, on every update or on none): each item's place in the dataset, so that ``compute``
    orders query and gallery items by it and keeps one copy of an index seen twice (the padding of a
    ``DistributedSampler``); without it items keep their update order.

    Under ``torch.distributed`` (``process_group`` True for the default group, or a ProcessGroup) every process
    updates with its own batches and ``compute`` all-gathers them (in rank order, then update order, or by
    ``index``), so every process returns what one process returns for the whole query and gallery sets: the same
    items in the same order give the same numbers. ``compute(protocol=..., **options)`` takes the options of
    ``fastccreid.metrics.evaluate`` (``roc``, ``rerank``, ``precision``, ``return_per_query``...).
    """

    def __init__(self, *, max_rank: int = 50, normalize: bool = True, process_group=None) -> None:
        self.max_rank = max_rank
        self.normalize = normalize
        self.process_group = process_group
        self.reset()

    def reset(self) -> None:
        """Forget every batch."""
        self._batches: list[dict[str, torch.Tensor]] = []
        self._dim: int | None = None
        self._has_clothes: bool | None = None
        self._has_index: bool | None = None
        self._has_camids: bool | None = None

    def __len__(self) -> int:
        return sum(int(b["features"].shape[0]) for b in self._batches)

    def update(self, features, pids, camids=None, clothes=None, *, is_query, index=None) -> None:
        """Add one batch (see the class docstring); bad shapes or label types raise a ValueError / TypeError
        naming the argument."""
        from fastccreid.kernels.checks import as_tensor, check_labels

        f = as_tensor(features, "features")
        if f.dim() != 2:
            raise ValueError(f"features must be 2-D [B, D], got shape {tuple(f.shape)}")
        if not f.is_floating_point():
            raise TypeError(f"features must be floating point, got {f.dtype}")
        n = int(f.shape[0])
        if self._dim is not None and int(f.shape[1]) != self._dim:
            raise ValueError(f"features have {f.shape[1]} columns but earlier batches had {self._dim}")
        if pids is None:
            raise ValueError("pids are required")
        batch = {"features": f.detach().clone()}
        for name, v in (("pids", pids), ("camids", camids), ("clothes", clothes), ("index", index)):
            if v is not None:
                batch[name] = check_labels(v, name, n, torch.device("cpu"), per="item").clone()
        for name, attr in (("camids", "_has_camids"), ("clothes", "_has_clothes"), ("index", "_has_index")):
            have = name in batch
            if getattr(self, attr) is not None and getattr(self, attr) != have:
                raise ValueError(f"{name} must be given on every update or on none (this batch "
                                 f"{'has' if have else 'lacks'} them, earlier batches do not)")
            setattr(self, attr, have)
        if isinstance(is_query, bool | np.bool_):
            q = torch.full((n,), bool(is_query), dtype=torch.bool)
        else:
            q = torch.as_tensor(np.asarray(is_query.cpu() if isinstance(is_query, torch.Tensor) else is_query))
            if q.dtype != torch.bool or q.shape != (n,):
                raise TypeError(f"is_query must be a bool or a bool array [{n}] (one per item), got "
                                f"{q.dtype} of shape {tuple(q.shape)}")
            q = q.clone()
        batch["is_query"] = q
        self._dim = int(f.shape[1])
        self._batches.append(batch)

    def _local(self) -> dict[str, torch.Tensor | None]:
        if not self._batches:
            return {}
        return {k: torch.cat([b[k] for b in self._batches]) for k in self._batches[0]}

    def _gather(self, local: dict) -> dict:
        """Every process's items, concatenated in rank order (features on this process's feature device)."""
        from fastccreid.evaluation.sharded import Comm, resolve_group

        group = resolve_group(self.process_group)
        import torch.distributed as dist

        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" \
            else torch.device("cpu")
        comm = Comm(group, dev)
        # sizes, feature width and which labels exist: agreed first, so every process pads alike
        n = int(local["features"].shape[0]) if local else 0
        meta = torch.tensor([n, self._dim or -1, int(bool(self._has_camids)), int(bool(self._has_clothes)),
                             int(bool(self._has_index)), int(local["features"].dtype == torch.float64) if local
                             else -1], dtype=torch.int64, device=dev)
        metas = [m.cpu() for m in comm.all_gather(meta)]
        err = None
        have = [m for m in metas if int(m[0]) > 0]
        if not have:
            err = ValueError("no process has any item: call update() first")
        elif len({tuple(m[1:].tolist()) for m in have}) != 1:
            err = ValueError("the processes disagree on the feature width, dtype or the labels given "
                             "(camids / clothes / index): every rank must update alike")
        comm.agree(err)
        width, cam, clo, idx, f64 = (int(v) for v in have[0][1:])
        fdtype = torch.float64 if f64 else torch.float32
        sizes = [int(m[0]) for m in metas]
        top = max(sizes)
        names = ["pids", "is_query"] + (["camids"] if cam else []) + (["clothes"] if clo else []) + \
            (["index"] if idx else [])
        out = {}
        fl = local["features"].to(dev, fdtype) if n else torch.empty(0, width, dtype=fdtype, device=dev)
        pad = torch.zeros(top, width, dtype=fdtype, device=dev)
        pad[:n] = fl
        parts = comm.all_gather(pad)
        fdev = local["features"].device if n else torch.device("cpu")
        out["features"] = torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(fdev)
        for name in names:
            t = torch.zeros(top, dtype=torch.int64, device=dev)
            if n:
                t[:n] = local[name].to(dev, torch.int64)
            parts = comm.all_gather(t)
            out[name] = torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).cpu()
        out["is_query"] = out["is_query"].bool()
        return out

    def gathered(self) -> dict[str, torch.Tensor]:
        """All items (gathered over the process group when one is set), in evaluation order: features [N, D],
        pids / camids / clothes / index [N] int64 (the labels given), is_query [N] bool."""
        items = self._local() if self.process_group is None else self._gather(self._local())
        if not items:
            raise ValueError("ReIDEvaluator.compute() before any update(): no features to evaluate")
        if "index" in items:
            idx = items["index"]
            order = torch.sort(idx, stable=True).indices
            keep = torch.ones(order.numel(), dtype=torch.bool)
            keep[1:] = idx[order][1:] != idx[order][:-1]  # one copy of a repeated index (sampler padding)
            order = order[keep]
            items = {k: v[order.to(v.device)] for k, v in items.items()}
        return items

    def compute(self, protocol: str = "market", **options) -> EvalResult:
        """``EvalResult`` of the queries against the gallery under ``protocol`` (every process the same)."""
        items = self.gathered()
        isq = items["is_query"]
        if not bool(isq.any()):
            raise ValueError("no query: every update had is_query=False")
        if bool(isq.all()):
            raise ValueError("no gallery item: every update had is_query=True")
        f = items["features"]
        qi, gi = isq.to(f.device), ~isq.to(f.device)

        def lab(name, mask):
            return items[name][mask.cpu()] if name in items else None

        options.setdefault("max_rank", self.max_rank)
        options.setdefault("normalize", self.normalize)
        return evaluate(qf=f[qi], gf=f[gi], q_pids=lab("pids", isq), g_pids=lab("pids", ~isq),
                        q_camids=lab("camids", isq), g_camids=lab("camids", ~isq),
                        q_clothes=lab("clothes", isq), g_clothes=lab("clothes", ~isq), protocol=protocol,
                        **options)
