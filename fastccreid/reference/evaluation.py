"""The seed's evaluation, as it is: a dense numpy argsort of the whole [Q, G] distance matrix, then a Python
loop over queries (FIRe-CCReID ``test.py::get_distmat``, ``evaluate/metrics.py::evaluate``,
``evaluate/metrics_for_cc.py::evaluate_ltcc`` / ``evaluate_prcc_all_gallery``, used unchanged by CSSC-CCReID).

The oracle for parity tests and the baseline for benchmarks: do not optimise. Deliberate departures from the
seed, each so that the oracle is well defined and usable (documented in the functions below):

- Sorting: the seed calls ``np.argsort(distmat, axis=1)`` with numpy's default ``kind="quicksort"`` (an
  introsort; on AVX-512 CPUs numpy >= 1.25 dispatches it to x86-simd-sort), which is NOT stable, so tied
  distances come out in an order that depends on the numpy build and CPU (checked with numpy 2.4 on this
  AVX-512 CPU: a float32 row of 7,050 with ties does not come out in index order). Here ``kind="stable"``: ties break
  by gallery index (README: "Differences from the official code"). Results differ from the seed only on exactly
  tied distances.
- Return values: the seed's functions return ``(cmc, mAP)``; ``evaluate`` computes mINP but drops it. Here all
  three return ``(cmc, mAP, mINP)`` with mINP as torchreid defines it (mean over valid queries of
  ``#matches / rank of the last match``), computed the way the seed's ``evaluate`` does.
- Short galleries: when fewer than ``max_rank`` gallery items survive a query's junk filter the seed's
  ``np.asarray(all_cmc)`` is ragged (an error in current numpy). Here such a CMC row is padded with its last
  value, which is 1 for every counted query (it has a match): "CMC is 1 from the first match onwards".
- No tqdm progress bar and no "gallery is quite small" print (pure output noise for a library).
- PRCC: the seed counts every query, also one without any true match in the gallery, whose AP is then 0/0 =
  NaN (so mAP is NaN). Kept by default (``skip_no_match=False``); ``skip_no_match=True`` skips such queries as
  the other protocols do (what ``fastccreid.metrics`` does).
- An empty set of valid queries: the seed ``assert``s; here a ValueError (asserts vanish under ``python -O``).
"""

from __future__ import annotations

import numpy as np
import torch


def get_distmat(qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
    """Squared euclidean distance [Q, G] (numpy float32) of the L2-normalised features qf [Q, D], gf [G, D].

    As the seed's ``test.py::get_distmat``: normalise by ``norm + 1e-12`` (again: its callers already
    normalised), then ``|q|^2 + |g|^2 - 2 q·g`` with ``addmm``; no clamp, so values can be slightly negative."""
    qf = torch.as_tensor(qf).float()
    gf = torch.as_tensor(gf).float()
    qf = 1.0 * qf / (torch.norm(qf, 2, dim=-1, keepdim=True).expand_as(qf) + 1e-12)
    gf = 1.0 * gf / (torch.norm(gf, 2, dim=-1, keepdim=True).expand_as(gf) + 1e-12)
    m, n = qf.size(0), gf.size(0)
    distmat = torch.pow(qf, 2).sum(dim=1, keepdim=True).expand(m, n) + \
        torch.pow(gf, 2).sum(dim=1, keepdim=True).expand(n, m).t()
    distmat = distmat.addmm(qf, gf.t(), beta=1, alpha=-2)
    return distmat.cpu().numpy()


def _per_query(raw_cmc: np.ndarray, max_rank: int) -> tuple[np.ndarray, float, float]:
    """CMC row (cut at max_rank), AP and INP of one query's 0/1 match vector over its kept gallery, as the seed."""
    cmc = raw_cmc.cumsum()
    pos_idx = np.where(raw_cmc == 1)
    if len(pos_idx[0]):
        max_pos_idx = np.max(pos_idx)
        inp = cmc[max_pos_idx] / (max_pos_idx + 1.0)
    else:  # only reachable for PRCC without skip_no_match (the seed's unguarded case)
        inp = float("nan")
    cmc[cmc > 1] = 1
    cmc = cmc[:max_rank]
    if len(cmc) < max_rank:  # the seed would build a ragged array here; pad with the last value (see module doc)
        cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1] if len(cmc) else 0, dtype=cmc.dtype)])
    num_rel = raw_cmc.sum()
    tmp_cmc = raw_cmc.cumsum()
    tmp_cmc = [x / (i + 1.0) for i, x in enumerate(tmp_cmc)]
    tmp_cmc = np.asarray(tmp_cmc) * raw_cmc
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = tmp_cmc.sum() / num_rel
    return cmc, ap, inp


def _finish(all_cmc: list, all_ap: list, all_inp: list, num_valid_q: float) -> tuple[np.ndarray, float, float]:
    if num_valid_q <= 0:
        raise ValueError("Error: all query identities do not appear in gallery")
    cmc = np.asarray(all_cmc).astype(np.float32)
    cmc = cmc.sum(0) / num_valid_q
    return cmc, np.mean(all_ap), np.mean(all_inp)


def _check(distmat, q_pids, g_pids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if distmat.ndim != 2 or distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat must be [num_query, num_gallery] = [{len(q_pids)}, {len(g_pids)}], "
                         f"got shape {distmat.shape}")
    return distmat, q_pids, g_pids


def evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50):
    """Market-1501 protocol (also the seed's Celeb-reID / LTCC-general junk): junk = same pid and same camera.

    distmat [Q, G]; ids [Q] / [G] (numpy). Returns (cmc [min(max_rank, G)] float32, mAP, mINP); queries with
    no true match left are skipped. Stable sort (see module doc)."""
    distmat, q_pids, g_pids = _check(distmat, q_pids, g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]
        order = indices[q_idx]
        remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue
        cmc, ap, inp = _per_query(raw_cmc, max_rank)
        all_cmc.append(cmc)
        all_ap.append(ap)
        all_inp.append(inp)
        num_valid_q += 1.0
    return _finish(all_cmc, all_ap, all_inp, num_valid_q)


def evaluate_ltcc(distmat, q_pids, g_pids, q_camids, g_camids, q_clothids, g_clothids,
                  ltcc_cc_setting: bool = False, max_rank: int = 50):
    """LTCC protocols. General (``ltcc_cc_setting=False``): junk = same pid and same camera.
    Clothes-changing (True): junk = same pid and (same camera or same clothes).

    Returns (cmc, mAP, mINP) over the queries with a true match left. Stable sort (see module doc)."""
    distmat, q_pids, g_pids = _check(distmat, q_pids, g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    q_clothids, g_clothids = np.asarray(q_clothids), np.asarray(g_clothids)
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        q_pid = q_pids[q_idx]
        q_camid = q_camids[q_idx]
        q_clothid = q_clothids[q_idx]
        order = indices[q_idx]
        if ltcc_cc_setting:
            remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid) | \
                     (g_pids[order] == q_pid) & (g_clothids[order] == q_clothid)
        else:
            remove = (g_pids[order] == q_pid) & (g_camids[order] == q_camid)
        keep = np.invert(remove)
        raw_cmc = matches[q_idx][keep]
        if not np.any(raw_cmc):
            continue
        cmc, ap, inp = _per_query(raw_cmc, max_rank)
        all_cmc.append(cmc)
        all_ap.append(ap)
        all_inp.append(inp)
        num_valid_q += 1.0
    return _finish(all_cmc, all_ap, all_inp, num_valid_q)


def evaluate_prcc_all_gallery(distmat, q_pids, g_pids, max_rank: int = 50, skip_no_match: bool = False):
    """PRCC protocol: no junk, the whole gallery counts (used for both the same-clothes and the clothes-changing
    query set against gallery A).

    As the seed, ``skip_no_match=False`` counts a query without any true match (CMC 0, AP and INP NaN, so mAP
    and mINP become NaN); ``skip_no_match=True`` skips such queries. Returns (cmc, mAP, mINP)."""
    distmat, q_pids, g_pids = _check(distmat, q_pids, g_pids)
    num_q, num_g = distmat.shape
    if num_g < max_rank:
        max_rank = num_g
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    num_valid_q = 0.0
    for q_idx in range(num_q):
        raw_cmc = matches[q_idx]
        if skip_no_match and not np.any(raw_cmc):
            continue
        cmc, ap, inp = _per_query(raw_cmc, max_rank)
        all_cmc.append(cmc)
        all_ap.append(ap)
        all_inp.append(inp)
        num_valid_q += 1.0
    return _finish(all_cmc, all_ap, all_inp, num_valid_q)
