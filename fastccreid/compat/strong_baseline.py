"""reid-strong-baseline / TransReID / CLIP-ReID evaluation call forms (``utils/metrics.py`` / ``utils/reid_metric.py``:
``eval_func``, ``R1_mAP_eval``, and the ignite-era ``R1_mAP`` / ``R1_mAP_reranking``), computed by
``fastccreid.metrics``.

Swap ``from utils.metrics import R1_mAP_eval, eval_func`` for ``from fastccreid.compat.strong_baseline import
R1_mAP_eval, eval_func``: same arguments, same returns. ``eval_func`` -> ``(cmc float32 [min(max_rank, G)], mAP
float64)`` over the queries with a true match (Market rule: same pid and same camera is junk).
``R1_mAP_eval.compute()`` -> ``(cmc, mAP, distmat, pids, camids, qf, gf)`` with features L2-normalised when
``feat_norm`` (``F.normalize``), ``distmat`` their squared-euclidean ``addmm`` form as float32 numpy [Q, G], and with
``reranking`` the k-reciprocal distances (k1=50, k2=15, lambda=0.3) instead. ``return_distmat=False`` (ours) keeps no
[Q, G] matrix: the metrics come from the features (``fastccreid.metrics.ReIDEvaluator``) and ``distmat`` is None,
so MSMT17-size evaluation stays within the evaluator's memory bound (the ranking then comes from our distance
kernel, equal to theirs up to float32 rounding). Differences (README, Differences from the official code): ties
broken by gallery index (their unstable ``np.argsort``), CMC 1 from the first match onwards for a query whose valid
gallery is shorter than max_rank (theirs builds a ragged array), ValueError instead of ``assert`` when no query
has a true match, and no prints.
"""

from __future__ import annotations

import numpy as np
import torch

from fastccreid.metrics import ReIDEvaluator
from fastccreid.metrics import evaluate as _evaluate


def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """(cmc float32 [min(max_rank, G)], mAP np.float64): their Market-1501 evaluation of a distance matrix."""
    res = _evaluate(np.asarray(distmat), q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids),
                    q_camids=np.asarray(q_camids), g_camids=np.asarray(g_camids), protocol="market",
                    max_rank=max_rank)
    counts = np.rint(res.cmc * res.num_valid_queries).astype(np.float32)  # their float32 sum over queries
    return counts / np.float32(res.num_valid_queries), np.float64(res.mAP)


def _addmm_sqeuclidean(qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """Their ``euclidean_distance``: ||q||^2 + ||g||^2 - 2 q g^T by ``addmm`` (float32 numpy [Q, G])."""
    m, n = qf.shape[0], gf.shape[0]
    dist = qf.pow(2).sum(dim=1, keepdim=True).expand(m, n) + gf.pow(2).sum(dim=1, keepdim=True).expand(n, m).t()
    dist = torch.addmm(dist, qf, gf.t(), beta=1, alpha=-2)
    return dist.cpu().numpy()


class R1_mAP_eval:  # noqa: N801 - their class name is the contract
    """TransReID's / CLIP-ReID's accumulating metric: ``reset()``, ``update((feat, pid, camid))`` per batch (the
    first ``num_query`` items are the queries, the rest the gallery), ``compute()``.

    ``process_group`` (ours): under ``torch.distributed`` every process updates with its own batches and
    ``compute`` gathers them in rank order (``ReIDEvaluator``); ``num_query`` then counts the queries of all
    processes together and each process's items are split into query / gallery by their global position."""

    rerank_k1, rerank_k2, rerank_lambda = 50, 15, 0.3

    def __init__(self, num_query, max_rank=50, feat_norm=True, reranking=False, *, return_distmat=True,
                 process_group=None):
        if isinstance(num_query, bool) or not isinstance(num_query, int | np.integer) or num_query < 1:
            raise ValueError(f"num_query must be a positive int, got {num_query!r}")
        self.num_query = int(num_query)
        self.max_rank = max_rank
        self.feat_norm = self._norm_flag(feat_norm)
        self.reranking = bool(reranking)
        self.return_distmat = bool(return_distmat)
        self.process_group = process_group
        self.reset()

    @staticmethod
    def _norm_flag(feat_norm) -> bool:
        return bool(feat_norm)

    def reset(self):
        """Forget every batch."""
        self._ev = ReIDEvaluator(max_rank=self.max_rank, normalize=False, process_group=self.process_group)

    def update(self, output):
        """One batch ``(feat [B, D], pid [B], camid [B])`` (tensors, arrays or lists)."""
        if not isinstance(output, tuple | list) or len(output) != 3:
            raise TypeError("update() takes one tuple (feat, pid, camid)")
        feat, pid, camid = output
        # stored in update order; compute() splits query / gallery by the (gathered) position
        self._ev.update(feat, pid, camid, is_query=False)

    def _items(self):
        items = self._ev.gathered()
        n = int(items["features"].shape[0])
        if self.num_query > n:
            raise ValueError(f"num_query ({self.num_query}) is larger than the number of features updated ({n})")
        if self.num_query == n:
            raise ValueError(f"num_query ({self.num_query}) leaves no gallery: {n} features were updated")
        feats = items["features"]
        if not bool(torch.isfinite(feats).all()):
            raise ValueError("the features contain NaN or Inf")
        if self.feat_norm:
            feats = torch.nn.functional.normalize(feats, dim=1, p=2)
        return items, feats

    def compute(self):
        """(cmc, mAP, distmat, pids, camids, qf, gf) as theirs (distmat None with ``return_distmat=False``)."""
        items, feats = self._items()
        nq = self.num_query
        pids, camids = items["pids"].numpy(), items["camids"].numpy()
        qf, gf = feats[:nq], feats[nq:]
        if self.reranking:
            from fastccreid.rerank import re_ranking

            distmat = np.asarray(re_ranking(qf, gf, k1=self.rerank_k1, k2=self.rerank_k2,
                                            lambda_value=self.rerank_lambda))
        elif self.return_distmat:
            distmat = _addmm_sqeuclidean(qf, gf)
        else:
            distmat = None
        if distmat is not None:
            cmc, mAP = eval_func(distmat, pids[:nq], pids[nq:], camids[:nq], camids[nq:], max_rank=self.max_rank)
            if not self.return_distmat:
                distmat = None
        else:
            res = _evaluate(qf=qf, gf=gf, q_pids=pids[:nq], g_pids=pids[nq:], q_camids=camids[:nq],
                            g_camids=camids[nq:], protocol="market", max_rank=self.max_rank, normalize=False)
            counts = np.rint(res.cmc * res.num_valid_queries).astype(np.float32)
            cmc, mAP = counts / np.float32(res.num_valid_queries), np.float64(res.mAP)
        return cmc, mAP, distmat, list(pids), list(camids), qf, gf


class R1_mAP(R1_mAP_eval):  # noqa: N801
    """reid-strong-baseline's ignite metric: ``feat_norm`` 'yes' / 'no'; ``compute()`` -> (cmc, mAP)."""

    def __init__(self, num_query, max_rank=50, feat_norm="yes", *, process_group=None):
        super().__init__(num_query, max_rank=max_rank, feat_norm=feat_norm, reranking=False, return_distmat=False,
                         process_group=process_group)
        self.return_distmat = True  # their distance (the addmm form), then dropped

    @staticmethod
    def _norm_flag(feat_norm) -> bool:
        if feat_norm not in ("yes", "no"):
            raise ValueError(f"feat_norm must be 'yes' or 'no', got {feat_norm!r}")
        return feat_norm == "yes"

    def compute(self):
        cmc, mAP, *_ = super().compute()
        return cmc, mAP


class R1_mAP_reranking(R1_mAP):  # noqa: N801
    """reid-strong-baseline's re-ranked ignite metric (k1=20, k2=6, lambda=0.3); ``compute()`` -> (cmc, mAP)."""

    rerank_k1, rerank_k2, rerank_lambda = 20, 6, 0.3

    def __init__(self, num_query, max_rank=50, feat_norm="yes", *, process_group=None):
        super().__init__(num_query, max_rank=max_rank, feat_norm=feat_norm, process_group=process_group)
        self.reranking = True
