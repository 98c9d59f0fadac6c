"""Simple-CCReID's / CAL's evaluation call forms (``tools/eval_metrics.py``), computed by ``fastccreid.metrics``.

Swap ``from tools.eval_metrics import evaluate, evaluate_with_clothes`` for ``from fastccreid.compat.simple_ccreid
import evaluate, evaluate_with_clothes``: same arguments, same returns ``(CMC float64 [G], mAP)`` with the CMC over
every gallery rank (1 from a query's first true match onwards), averaged over the queries that have a true match.
Differences (README, Differences from the official code): tied distances rank by gallery index (their
``np.argsort`` is numpy's unstable default), and AP is the mean of the precisions at the matches rather than their
running sum of ``precision / n`` (the same value up to float rounding, below 1e-12).
"""

from __future__ import annotations

import numpy as np

from fastccreid.kernels.checks import check_choice
from fastccreid.metrics import evaluate as _evaluate

MODES = ("CC", "SC")


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids):
    """CMC [G] and mAP under their standard protocol: true matches share the query's pid from another camera;
    same pid and same camera is junk. Queries without a true match are skipped (ValueError when none has one)."""
    distmat = np.asarray(distmat)
    res = _evaluate(distmat, q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids), q_camids=np.asarray(q_camids),
                    g_camids=np.asarray(g_camids), protocol="market", max_rank=max(1, distmat.shape[-1]))
    return res.cmc, np.float64(res.mAP)


def evaluate_with_clothes(distmat, q_pids, g_pids, q_camids, g_camids, q_clothids, g_clothids, mode="CC"):
    """CMC [G] and mAP with clothes. ``mode`` "CC" (clothes-changing): true matches have the query's pid, another
    camera and other clothes; same pid with the same camera or the same clothes is junk. "SC" (same clothes): true
    matches have the query's pid, another camera and the same clothes; same pid with the same camera or other
    clothes is junk. With no query having a true match: (zeros [G], 0), as theirs."""
    check_choice(mode, "mode", MODES)
    dm = np.asarray(distmat)
    qp, gp = np.asarray(q_pids), np.asarray(g_pids)
    qc, gc = np.asarray(q_camids), np.asarray(g_camids)
    qcl, gcl = np.asarray(q_clothids), np.asarray(g_clothids)
    ng = dm.shape[-1] if dm.ndim == 2 else len(gp)
    same = qp[:, None] == gp[None, :]
    good = same & (qc[:, None] != gc[None, :])
    good &= (qcl[:, None] != gcl[None, :]) if mode == "CC" else (qcl[:, None] == gcl[None, :])
    if not good.any():
        return np.zeros(len(gp)), 0
    res = _evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                    protocol="ltcc-cc" if mode == "CC" else "ltcc-sc", max_rank=max(1, ng))
    return res.cmc, np.float64(res.mAP)
