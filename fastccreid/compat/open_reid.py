"""open-reid's evaluation call forms (``reid/evaluation_metrics/ranking.py``: ``cmc``, ``mean_ap``), as used by the
unsupervised family built on it (SpCL, MMT, cluster-contrast, PPLR).

Swap ``from reid.evaluation_metrics import cmc, mean_ap`` for ``from fastccreid.compat.open_reid import cmc,
mean_ap``: same arguments and defaults (ids / cams None: every query its own id on camera 0, gallery on camera 1),
same returns: ``cmc`` float64 [topk] (cumulative, divided by the valid-query count), ``mean_ap`` np.float64.
Their conventions, kept: valid gallery = not (same id and same camera), ``separate_camera_set`` also drops every
same-camera item; a query without a true match is skipped; ``first_match_break=False`` spreads a query's weight over
its matches (each adds 1/#matches at rank = non-matches ranked before it); ``single_gallery_shot`` repeats 10 draws
of one valid item per identity (numpy's global RNG, in their call order, so ``np.random.seed`` reproduces them),
and with ``first_match_break`` too each draw adds 1 (their sum). AP is sklearn's ``average_precision_score`` of the
negated distances: tied distances form one threshold (precision at the end of the tie group), computed here
without sklearn. Market-style call: ``cmc(..., first_match_break=True)`` (``MARKET``), CUHK03 style
``cmc(..., separate_camera_set=True, single_gallery_shot=True)`` (``CUHK03``).

The Market-style CMC is ``fastccreid.metrics.evaluate``'s (protocol "market"). Checked against the upstream code
(Cysu/open-reid ``reid/evaluation_metrics/ranking.py`` and ``reid/evaluators.py``'s ``cmc_configs``; yxgeee/SpCL's
``spcl/evaluation_metrics/ranking.py`` is the same file, its ``evaluate_all`` keeps only the Market call). The AP is
that of scikit-learn >= 0.19 (step-wise: sum of recall steps times precision at each distinct score); scikit-learn
0.18 and older interpolated the PR curve (trapezoids), so numbers printed with those versions differ slightly.
Differences (README, Differences from the official code): ranks tied distances by gallery index (their unstable
``np.argsort``), ``NoValidQueryError`` (a ValueError and a RuntimeError, so ``except RuntimeError`` still catches
it) for their ``RuntimeError("No valid query")``, and NaN distances rejected.
"""

from __future__ import annotations

import numpy as np

from fastccreid.metrics import NoValidQueryError as _NoValidQuery
from fastccreid.metrics import evaluate as _evaluate

MARKET = dict(separate_camera_set=False, single_gallery_shot=False, first_match_break=True)
CUHK03 = dict(separate_camera_set=True, single_gallery_shot=True, first_match_break=False)
ALLSHOTS = dict(separate_camera_set=False, single_gallery_shot=False, first_match_break=False)
REPEATS = 10
ROWS = 256


class NoValidQueryError(_NoValidQuery, RuntimeError):
    """No query has a true match in its valid gallery: theirs raises ``RuntimeError("No valid query")``, so this is a
    RuntimeError as well as a ValueError (``fastccreid.metrics.NoValidQueryError``)."""


NO_VALID = "no valid query: no query has a true match in its valid gallery"


def _inputs(distmat, query_ids, gallery_ids, query_cams, gallery_cams):
    dm = distmat.detach().cpu().numpy() if hasattr(distmat, "detach") else np.asarray(distmat)
    if dm.ndim != 2:
        raise ValueError(f"distmat must be 2-D [Q, G], got shape {dm.shape}")
    if dm.dtype.kind not in "fiu":
        raise TypeError(f"distmat must be numeric, got {dm.dtype}")
    if np.isnan(dm).any():
        raise ValueError("distmat contains NaN")
    m, n = dm.shape
    if m == 0 or n == 0:
        raise ValueError(f"distmat must have at least one query and one gallery item, got shape {dm.shape}")
    vals = []
    for name, v, size, default in (("query_ids", query_ids, m, np.arange(m)), ("gallery_ids", gallery_ids, n,
                                   np.arange(n)), ("query_cams", query_cams, m, np.zeros(m, dtype=np.int64)),
                                   ("gallery_cams", gallery_cams, n, np.ones(n, dtype=np.int64))):
        a = default if v is None else np.asarray(v.cpu() if hasattr(v, "cpu") else v)
        if a.shape != (size,):
            raise ValueError(f"{name} must be 1-D with one entry per {'query' if name[0] == 'q' else 'gallery item'}"
                             f" ({size}), got shape {a.shape}")
        vals.append(a)
    return (dm, *vals)


def _rows(dm, qids, gids, qcams, gcams, separate_camera_set):
    """Per query chunk: (row indices, sorted distances, matches, valid) with a stable sort of each row."""
    for s in range(0, dm.shape[0], ROWS):
        e = min(dm.shape[0], s + ROWS)
        order = np.argsort(dm[s:e], axis=1, kind="stable")
        gi, gc = gids[order], gcams[order]
        matches = gi == qids[s:e, None]
        valid = (gi != qids[s:e, None]) | (gc != qcams[s:e, None])
        if separate_camera_set:
            valid &= gc != qcams[s:e, None]
        yield s, e, np.take_along_axis(dm[s:e], order, 1), matches, valid, gi


def cmc(distmat, query_ids=None, gallery_ids=None, query_cams=None, gallery_cams=None, topk=100,
        separate_camera_set=False, single_gallery_shot=False, first_match_break=False):
    """CMC [topk] float64 under open-reid's flags (module docstring)."""
    if isinstance(topk, bool) or not isinstance(topk, int | np.integer) or topk < 1:
        raise ValueError(f"topk must be a positive int, got {topk!r}")
    dm, qids, gids, qcams, gcams = _inputs(distmat, query_ids, gallery_ids, query_cams, gallery_cams)
    if first_match_break and not separate_camera_set and not single_gallery_shot:
        # the Market-style call: the first-match CMC of fastccreid.metrics (protocol "market")
        try:
            res = _evaluate(dm, q_pids=qids, g_pids=gids, q_camids=qcams, g_camids=gcams, protocol="market",
                            max_rank=int(topk))
        except _NoValidQuery:
            raise NoValidQueryError(NO_VALID) from None
        # past the gallery's end their curve stays at its last value
        return np.concatenate([res.cmc, np.full(int(topk) - len(res.cmc), res.cmc[-1])])
    ret = np.zeros(int(topk))
    nvalid = 0
    rs = np.random.mtrand._rand
    for _s, _e, _d, matches, valid, gi in _rows(dm, qids, gids, qcams, gcams, separate_camera_set):
        for mrow, vrow, grow in zip(matches, valid, gi, strict=True):
            if not (mrow & vrow).any():
                continue
            nvalid += 1
            if not single_gallery_shot:
                mv = mrow[vrow]
                k = np.nonzero(mv)[0]
                r = k - np.arange(len(k))  # non-matches ranked before each match
                if first_match_break:
                    r = r[:1]
                    w = 1.0
                else:
                    w = 1.0 / len(k)
                r = r[r < topk]
                np.add.at(ret, r, w)
                continue
            ids = grow[vrow]
            uniq, first, inverse, counts = np.unique(ids, return_index=True, return_inverse=True, return_counts=True)
            appear = np.argsort(first, kind="stable")  # their dict: identities in order of first appearance
            draws = rs.randint(0, np.tile(counts[appear], REPEATS)).reshape(REPEATS, -1)
            members = np.argsort(inverse, kind="stable")  # valid-list positions grouped by identity, in rank order
            starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
            chosen = members[starts[appear][None, :] + draws]  # [repeats, ids] sampled valid-list positions
            own = int(np.nonzero(uniq[appear] == ids[np.nonzero(mrow[vrow])[0][0]])[0][0])
            k = (chosen < chosen[:, own : own + 1]).sum(1)  # sampled items ranked before the sampled match
            k = k[k < topk]
            np.add.at(ret, k, 1.0 if first_match_break else 1.0 / REPEATS)
    if nvalid == 0:
        raise NoValidQueryError(NO_VALID)
    return ret.cumsum() / nvalid


def mean_ap(distmat, query_ids=None, gallery_ids=None, query_cams=None, gallery_cams=None):
    """mAP (np.float64): per query with a true match, sklearn's average_precision_score of (matches, -distance)
    over the valid gallery, tied distances one threshold; then the mean."""
    dm, qids, gids, qcams, gcams = _inputs(distmat, query_ids, gallery_ids, query_cams, gallery_cams)
    aps = []
    for _s, _e, d, matches, valid, _gi in _rows(dm, qids, gids, qcams, gcams, False):
        for drow, mrow, vrow in zip(d, matches, valid, strict=True):
            y = mrow[vrow]
            if not y.any():
                continue
            dv = drow[vrow]
            end = np.searchsorted(dv, dv[y], side="right")  # items up to the end of each match's tie group
            tp = np.cumsum(y)[end - 1]
            aps.append(float(np.mean(tp / end)))
    if not aps:
        raise NoValidQueryError(NO_VALID)
    return np.float64(np.mean(aps))
