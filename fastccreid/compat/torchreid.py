"""torchreid's ``evaluate_rank`` call form (torchreid/metrics/rank.py), computed by ``fastccreid.metrics``.

Swap ``from torchreid.metrics import evaluate_rank`` for ``from fastccreid.compat.torchreid import evaluate_rank``:
same arguments, same return ``(all_cmc float32 [max_rank], mAP)``. Differences (README, Differences from the
official code): ties are broken by gallery index; a query whose valid gallery (or, for CUHK03, its set of
identities) is shorter than max_rank gets CMC 1 from its first match onwards, where torchreid's Python loop crashes
on a ragged array and its Cython copies stale values.
"""

from __future__ import annotations

import numpy as np

from fastccreid.metrics import evaluate


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, use_metric_cuhk03=False,
                  use_cython=True):
    """(all_cmc, mAP) as torchreid returns: cmc float32 of length min(max_rank, num_gallery), mAP a float.

    ``use_cython`` is accepted for call compatibility and changes nothing. With ``use_metric_cuhk03`` the identity
    draws come from numpy's global RNG in torchreid's order, so ``np.random.seed(s)`` reproduces its numbers.
    """
    del use_cython
    res = evaluate(
        distmat, q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids), q_camids=np.asarray(q_camids),
        g_camids=np.asarray(g_camids), protocol="cuhk03" if use_metric_cuhk03 else "market", max_rank=max_rank,
        cuhk03_seed=None,
    )
    return res.cmc.astype(np.float32), float(res.mAP)
