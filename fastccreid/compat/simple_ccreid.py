"""Simple-CCReID's / CAL's evaluation call forms (``tools/eval_metrics.py``), computed by ``fastccreid.metrics``.

Swap ``from tools.eval_metrics import evaluate, evaluate_with_clothes`` for ``from fastccreid.compat.simple_ccreid
import evaluate, evaluate_with_clothes``: same arguments, same returns ``(CMC float64 [G], mAP)`` with the CMC over
every gallery rank (1 from a query's first true match onwards), averaged over the queries that have a true match.
Checked against the upstream code (guxinqian/Simple-CCReID ``tools/eval_metrics.py``; ``test.py`` calls them on
``-(qf @ gf.T)`` of L2-normalised features, and ``evaluate`` for PRCC's two query sets). Differences (README,
Differences from the official code): tied distances rank by gallery index (their ``np.argsort`` is numpy's unstable
default), AP is the mean of the precisions at the matches rather than their running sum of ``precision / n`` (the
same value up to float rounding, below 1e-12), ``evaluate`` raises ``NoValidQueryError`` (a ValueError and a
ZeroDivisionError: theirs divides by zero) when no query has a true match, and ``mode`` other than "CC" / "SC" is
a ValueError (theirs an ``assert``).
"""

from __future__ import annotations

import numpy as np

from fastccreid.kernels.checks import check_choice
from fastccreid.metrics import NoValidQueryError as _NoValidQuery
from fastccreid.metrics import evaluate as _evaluate

MODES = ("CC", "SC")


class NoValidQueryError(_NoValidQuery, ZeroDivisionError):
    """No query has a true match: their ``evaluate`` divides by zero queries (ZeroDivisionError), so this is one as
    well as a ValueError (``fastccreid.metrics.NoValidQueryError``)."""


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids):
    """CMC [G] and mAP under their standard protocol: true matches share the query's pid from another camera;
    same pid and same camera is junk. Queries without a true match are skipped (ValueError when none has one)."""
    distmat = np.asarray(distmat)
    try:
        res = _evaluate(distmat, q_pids=np.asarray(q_pids), g_pids=np.asarray(g_pids),
                        q_camids=np.asarray(q_camids), g_camids=np.asarray(g_camids), protocol="market",
                        max_rank=max(1, distmat.shape[-1]))
    except _NoValidQuery as exc:
        raise NoValidQueryError(str(exc)) from None
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
    try:  # the inputs are checked (one-line errors naming the argument) before the valid queries are counted
        res = _evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                        protocol="ltcc-cc" if mode == "CC" else "ltcc-sc", max_rank=max(1, ng))
    except _NoValidQuery:
        return np.zeros(len(gp)), 0  # theirs when no query has a true match
    return res.cmc, np.float64(res.mAP)
