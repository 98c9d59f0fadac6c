"""The seed's (CSSC-CCReID's) and FIRe-CCReID's evaluation call forms (``evaluate/metrics.py::evaluate``,
``evaluate/metrics_for_cc.py::evaluate_ltcc`` / ``evaluate_prcc_all_gallery``), computed by ``fastccreid.metrics``.

Swap ``from evaluate.metrics import evaluate`` / ``from evaluate.metrics_for_cc import evaluate_ltcc,
evaluate_prcc_all_gallery`` for ``from fastccreid.compat.fire import ...``: same arguments, same returns ``(cmc
float32 [min(max_rank, G)], mAP float64)`` over the queries with a true match. Differences (README, Differences
from the official code): ties broken by gallery index (their unstable ``np.argsort``), a query whose valid gallery
is shorter than max_rank gets CMC 1 from its first match onwards (theirs builds a ragged array), PRCC skips a query
without any true match (theirs counts it with AP 0/0, so mAP is NaN), ValueError instead of ``assert`` when no
query has a true match, and no tqdm bar or "gallery is quite small" print.
"""

from __future__ import annotations

import numpy as np

from fastccreid.metrics import evaluate as _evaluate


def _returns(res):
    """(cmc, mAP) as theirs: CMC counts summed in float32 and divided by the valid-query count (float32)."""
    counts = np.rint(res.cmc * res.num_valid_queries).astype(np.float32)
    return counts / float(res.num_valid_queries), np.float64(res.mAP)


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Market-1501 protocol: same pid and same camera is junk."""
    return _returns(_evaluate(np.asarray(distmat), q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids),
                              q_camids=np.asarray(q_camids), g_camids=np.asarray(g_camids), protocol="market",
                              max_rank=max_rank))


def evaluate_ltcc(distmat, q_pids, g_pids, q_camids, g_camids, q_clothids, g_clothids, ltcc_cc_setting=False,
                  max_rank=50):
    """LTCC: general (same pid and same camera is junk) or, with ``ltcc_cc_setting``, clothes-changing (same pid
    and the same camera or the same clothes is junk)."""
    return _returns(_evaluate(np.asarray(distmat), q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids),
                              q_camids=np.asarray(q_camids), g_camids=np.asarray(g_camids),
                              q_clothes=np.asarray(q_clothids), g_clothes=np.asarray(g_clothids),
                              protocol="ltcc-cc" if ltcc_cc_setting else "ltcc-general", max_rank=max_rank))


def evaluate_prcc_all_gallery(distmat, q_pids, g_pids, max_rank=50):
    """PRCC: no junk, the whole gallery counts."""
    return _returns(_evaluate(np.asarray(distmat), q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids),
                              protocol="prcc", max_rank=max_rank))
