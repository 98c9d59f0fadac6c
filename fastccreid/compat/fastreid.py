"""fast-reid's ``evaluate_rank`` call form (fastreid/evaluation/rank.py), computed by ``fastccreid.metrics``.

Swap ``from fastreid.evaluation.rank import evaluate_rank`` for ``from fastccreid.compat.fastreid import
evaluate_rank``: same arguments, same return ``(cmc float32 [max_rank], all_AP, all_INP)`` over the valid queries
(float32 arrays as its Cython path returns; ``use_cython=False`` gives lists of floats as its Python path).
Differences (README, Differences from the official code): ties broken by gallery index, and CMC 1 from the first
match onwards for a query whose valid gallery is shorter than max_rank (fast-reid's Python loop crashes there, its
Cython copies stale values).
"""

from __future__ import annotations

import numpy as np

from fastccreid.metrics import evaluate


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  use_cython=True):
    """(cmc, all_AP, all_INP) as fast-reid returns; with ``use_metric_cuhk03`` (cmc, mAP) as its eval_cuhk03."""
    res = evaluate(
        distmat, q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids), q_camids=np.asarray(q_camids),
        g_camids=np.asarray(g_camids), protocol="cuhk03" if use_metric_cuhk03 else "market", max_rank=max_rank,
        return_per_query=True, cuhk03_seed=None,
    )
    cmc = res.cmc.astype(np.float32)
    if use_metric_cuhk03:
        return cmc, float(res.mAP)
    if use_cython:
        return cmc, res.all_AP.astype(np.float32), res.all_INP.astype(np.float32)
    return cmc, [float(v) for v in res.all_AP], [float(v) for v in res.all_INP]
