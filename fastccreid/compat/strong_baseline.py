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
kernel, equal to theirs up to float32 rounding).

Checked against the upstream code (michuanhaohao/reid-strong-baseline ``data/datasets/eval_reid.py``,
``utils/reid_metric.py``; damo-cv/TransReID and Syliz517/CLIP-ReID ``utils/metrics.py``, identical there): their
``compute()`` calls ``eval_func`` without ``max_rank``, so the CMC has eval_func's default length 50 (or G when the
gallery is smaller) whatever ``max_rank`` the metric was built with; ours does the same (``max_rank`` is stored, as
theirs). TransReID's ``update`` moves each batch to the CPU, so ``qf`` / ``gf`` come back as CPU tensors
(the ignite ``R1_mAP`` returns only ``(cmc, mAP)``). ``R1_mAP_reranking`` re-ranks with k1=20, k2=6, lambda=0.3,
``R1_mAP_eval(reranking=True)`` with k1=50, k2=15; both on the (normalised) features with their squared ``addmm``
distance. ``R1_mAP_eval``'s ``feat_norm`` is read by truth value, as theirs: their callers pass the config string
'yes' / 'no', and 'no' normalises too (kept, with a UserWarning).

Differences (README, Differences from the official code): ties broken by gallery index (their unstable
``np.argsort``), CMC 1 from the first match onwards for a query whose valid gallery is shorter than max_rank (theirs
builds a ragged array), ``NoValidQueryError`` (a ValueError and an AssertionError, so ``except AssertionError``
still catches it) instead of ``assert num_valid_q > 0``, ``feat_norm`` other than 'yes' / 'no' refused by the
ignite forms (theirs silently skips normalising), re-ranked distances with the Jaccard term in fp32
(``fastccreid.rerank``), and no prints.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from fastccreid.kernels.checks import check_labels
from fastccreid.metrics import NoValidQueryError as _NoValidQuery
from fastccreid.metrics import ReIDEvaluator
from fastccreid.metrics import evaluate as _evaluate

EVAL_MAX_RANK = 50  # eval_func's default: the CMC length their compute() gets, whatever the metric's max_rank


class NoValidQueryError(_NoValidQuery, AssertionError):
    """No query has a true match: theirs is ``assert num_valid_q > 0``, so this is an AssertionError as well as a
    ValueError (``fastccreid.metrics.NoValidQueryError``)."""


def _their_result(res):
    """(cmc float32, mAP np.float64) as eval_func builds them from an EvalResult."""
    counts = np.rint(res.cmc * res.num_valid_queries).astype(np.float32)  # their float32 sum over queries
    return counts / np.float32(res.num_valid_queries), np.float64(res.mAP)


def _evaluate_their_way(*args, **kwargs):
    try:
        return _their_result(_evaluate(*args, **kwargs))
    except _NoValidQuery as exc:
        raise NoValidQueryError(str(exc)) from None


def eval_func(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """(cmc float32 [min(max_rank, G)], mAP np.float64): their Market-1501 evaluation of a distance matrix."""
    return _evaluate_their_way(np.asarray(distmat), q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids),
                               q_camids=np.asarray(q_camids), g_camids=np.asarray(g_camids), protocol="market",
                               max_rank=max_rank)


def _addmm_sqeuclidean(qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """Their ``euclidean_distance``: ||q||^2 + ||g||^2 - 2 q g^T by ``addmm`` (float32 numpy [Q, G])."""
    m, n = qf.shape[0], gf.shape[0]
    dist = qf.pow(2).sum(dim=1, keepdim=True).expand(m, n) + gf.pow(2).sum(dim=1, keepdim=True).expand(n, m).t()
    dist.addmm_(qf, gf.t(), beta=1, alpha=-2)  # in place, as theirs: one [Q, G] buffer
    return dist.cpu().numpy()


class R1_mAP_eval:  # noqa: N801 - their class name is the contract
    """TransReID's / CLIP-ReID's accumulating metric: ``reset()``, ``update((feat, pid, camid))`` per batch (the
    first ``num_query`` items are the queries, the rest the gallery), ``compute()``.

    ``process_group`` (ours): under ``torch.distributed`` every process updates with its own batches and
    ``compute`` gathers them in rank order (``ReIDEvaluator``); ``num_query`` then counts the queries of all
    processes together and each process's items are split into query / gallery by their global position.
    ``max_rank`` is kept but, as in theirs, ``compute`` evaluates with eval_func's default (CMC length 50)."""

    rerank_k1, rerank_k2, rerank_lambda = 50, 15, 0.3
    their_cpu = True  # TransReID's update() stores feat.cpu(); the ignite R1_mAP keeps the batches' device

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
        # theirs tests ``if self.feat_norm:`` and TransReID / CLIP-ReID pass cfg.TEST.FEAT_NORM, the string 'yes' or
        # 'no': both are truthy, so 'no' normalises too. Kept for the same numbers, with a warning.
        if isinstance(feat_norm, str) and feat_norm.strip().lower() in ("no", "false", "0", "off"):
            warnings.warn(f"R1_mAP_eval(feat_norm={feat_norm!r}) normalises the features, as TransReID's does (a "
                          "non-empty string is true); pass feat_norm=False to skip it", UserWarning, stacklevel=3)
        return bool(feat_norm)

    def reset(self):
        """Forget every batch."""
        self._ev = ReIDEvaluator(max_rank=self.max_rank, normalize=False, process_group=self.process_group)

    def update(self, output):
        """One batch ``(feat [B, D], pid [B], camid [B])`` (tensors, arrays or lists)."""
        if not isinstance(output, tuple | list) or len(output) != 3:
            raise TypeError("update() takes one tuple (feat, pid, camid)")
        feat, pid, camid = output
        shape = tuple(getattr(feat, "shape", np.shape(feat)))
        if len(shape) != 2:
            raise ValueError(f"feat must be 2-D [B, D], got shape {shape}")
        pid = check_labels(pid, "pid", shape[0], per="row of feat")
        camid = check_labels(camid, "camid", shape[0], per="row of feat")
        # stored in update order; compute() splits query / gallery by the (gathered) position
        self._ev.update(feat, pid, camid, is_query=False)

    def _items(self):
        if self.process_group is None and len(self._ev) == 0:
            raise ValueError(f"{type(self).__name__}.compute() before any update(): no features to evaluate")
        items = self._ev.gathered()
        n = int(items["features"].shape[0])
        if self.num_query > n:
            raise ValueError(f"num_query ({self.num_query}) is larger than the number of features updated ({n})")
        if self.num_query == n:
            raise ValueError(f"num_query ({self.num_query}) leaves no gallery: {n} features were updated")
        feats = items["features"]
        if not bool(torch.isfinite(feats).all()):
            raise ValueError("feat (the first item of update's output) contains NaN or Inf")
        if self.their_cpu and (self.reranking or self.return_distmat):
            feats = feats.cpu()  # their update() keeps feat.cpu(): their distance on the CPU, in the same bits
        if self.feat_norm:
            feats = torch.nn.functional.normalize(feats, dim=1, p=2)
        return items, feats

    def compute(self):
        """(cmc float32 [min(50, G)], mAP np.float64, distmat float32 numpy [Q, G], pids, camids, qf, gf) as theirs:
        pids / camids lists in update order, qf / gf the (normalised) CPU features; distmat None with
        ``return_distmat=False``."""
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
        # their compute() calls eval_func(distmat, q_pids, g_pids, q_camids, g_camids): its default max_rank
        if distmat is not None:
            cmc, mAP = eval_func(distmat, pids[:nq], pids[nq:], camids[:nq], camids[nq:], max_rank=EVAL_MAX_RANK)
            if not self.return_distmat:
                distmat = None
        else:
            cmc, mAP = _evaluate_their_way(qf=qf, gf=gf, q_pids=pids[:nq], g_pids=pids[nq:], q_camids=camids[:nq],
                                           g_camids=camids[nq:], protocol="market", max_rank=EVAL_MAX_RANK,
                                           normalize=False)
        return cmc, mAP, distmat, list(pids), list(camids), qf.cpu(), gf.cpu()


class R1_mAP(R1_mAP_eval):  # noqa: N801
    """reid-strong-baseline's ignite metric: ``feat_norm`` 'yes' / 'no'; ``compute()`` -> (cmc, mAP)."""

    their_cpu = False

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
