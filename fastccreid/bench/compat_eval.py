"""``bench eval`` rows for the reid-strong-baseline / TransReID evaluator (issue 26): ``R1_mAP_eval.compute()``
(``fastccreid.compat.strong_baseline``, with and without the returned distmat) against a transcription of their
``compute()`` -> ``eval_func`` path (F.normalize, the ``addmm`` distance, a full ``np.argsort``, an int32 match
matrix and the per-query Python loop), time and peak memory, at Market-1501 size (3,368 x 15,913, D 2048) and at
MSMT17 size (11,659 x 82,161; theirs only where its dense arrays fit in the memory available). Quick mode: one
eighth of Market-1501 per side. Peak memory: the largest resident-set growth above the start of the call, sampled
every 2 ms by a thread (``peak_rss_bytes`` is the process's lifetime peak, useless for paths run one after another).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import torch

from fastccreid.bench.common import BenchRow

SIZES = {"market1501": (3368, 15913, 751), "msmt17": (11659, 82161, 3060)}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured(fn, *args):
    """(result, seconds, peak RSS growth in bytes) of ``fn(*args)``."""
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    finally:
        dt = time.perf_counter() - t0
        stop.set()
        t.join()
    return out, dt, max(0, max(peak[0], _rss()) - base)


def their_compute(feats: torch.Tensor, pids, camids, num_query: int, max_rank: int = 50):
    """A transcription of their ``R1_mAP_eval.compute`` + ``eval_func`` (written from its conventions)."""
    feats = torch.nn.functional.normalize(feats, dim=1, p=2)
    qf, gf = feats[:num_query], feats[num_query:]
    q_pids, g_pids = np.asarray(pids[:num_query]), np.asarray(pids[num_query:])
    q_camids, g_camids = np.asarray(camids[:num_query]), np.asarray(camids[num_query:])
    m, n = qf.shape[0], gf.shape[0]
    dist = qf.pow(2).sum(1, keepdim=True).expand(m, n) + gf.pow(2).sum(1, keepdim=True).expand(n, m).t()
    distmat = dist.addmm_(qf, gf.t(), beta=1, alpha=-2).numpy()  # their in-place addmm_: one [Q, G] buffer
    del dist
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap = [], []
    for i in range(m):
        order = indices[i]
        keep = np.invert((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        orig = matches[i][keep]
        if not np.any(orig):
            continue
        cmc = orig.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        tmp = orig.cumsum() / (np.arange(len(orig)) + 1.0) * orig
        all_ap.append(tmp.sum() / orig.sum())
    return np.asarray(all_cmc).astype(np.float32).sum(0) / len(all_cmc), float(np.mean(all_ap)), distmat


def _ours(feats, pids, camids, nq, return_distmat):
    from fastccreid.compat.strong_baseline import R1_mAP_eval

    ev = R1_mAP_eval(nq, return_distmat=return_distmat)
    for s in range(0, feats.shape[0], 256):  # batches, as a loader gives them
        ev.update((feats[s : s + 256], pids[s : s + 256], camids[s : s + 256]))
    return ev.compute()


def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_compat(quick: bool) -> list[BenchRow]:
    from fastccreid.bench.features import make_features

    sizes = {"market1501/8": (421, 1989, 94)} if quick else SIZES
    rows = []
    for name, (nq, ng, nid) in sizes.items():
        (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid)
        feats, pids, camids = torch.cat([qf, gf]), np.concatenate([qp, gp]), np.concatenate([qc, gc])
        del qf, gf
        case = f"strong-baseline R1_mAP_eval {name} {nq}x{ng}"
        need = nq * ng * (4 + 8 + 4 + 4)  # their distmat, argsort, matches, one temporary
        extra = {"Q": nq, "G": ng, "D": feats.shape[1]}
        for path, rd in (("fast (distmat returned)", True), ("fast (return_distmat=False)", False)):
            if rd and need > 0.6 * _available_bytes():
                continue
            out, dt, mem = measured(_ours, feats, pids, camids, nq, rd)
            rows.append(BenchRow("eval", case, path, dt, nq / dt, mem, 1, nq,
                                 {**extra, "mAP": float(out[1]), "rank1": float(out[0][0])}))
        if need > 0.6 * _available_bytes():
            rows.append(BenchRow("eval", case, "reference (theirs)", float("nan"), 0.0, 0, 0, nq,
                                 {**extra, "skipped": f"needs about {need / 2**30:.1f} GiB of dense arrays"}))
            continue
        (cmc, mAP, _), dt, mem = measured(their_compute, feats, pids, camids, nq)
        fast = rows[-1].extra
        rows.append(BenchRow("eval", case, "reference (theirs)", dt, nq / dt, mem, 1, nq,
                             {**extra, "mAP": mAP, "rank1": float(cmc[0]), "mAP_abs_diff": abs(mAP - fast["mAP"])}))
    return rows
