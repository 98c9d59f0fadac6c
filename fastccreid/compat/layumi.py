"""layumi's Person_reID_baseline_pytorch evaluation call forms (``evaluate_gpu.py``: ``evaluate``,
``compute_mAP``), and the many repositories copied from it.

Swap ``from evaluate_gpu import evaluate, compute_mAP`` for ``from fastccreid.compat.layumi import evaluate,
compute_mAP``. ``evaluate(qf [D], ql, qc, gf [G, D], gl [G], gc [G])`` for one query -> ``(ap, CMC)``: the gallery
ranked by the similarity ``gf @ qf`` (descending; normalise the features first, as their caller does), junk =
distractors (``gl == -1``) plus same id and same camera, ``CMC`` an int32 tensor [G] (1 from the first true match
onwards in the junk-free ranking, zeros past it; ``CMC[0] = -1`` and ``ap`` 0 when the query has no true match),
averaged by the caller (theirs divides by every query, skipping nothing but the ``-1`` rows' AP).
``compute_mAP(index, good_index, junk_index)`` -> ``(ap, CMC)`` for a given ranking: AP by the trapezoid rule
(the Market-1501 MATLAB convention: each match adds ``(precision before it + precision at it) / 2 / n_good``,
precision before the first rank taken as 1), which is not the AP of the other codebases.

Checked against the upstream code (layumi/Person_reID_baseline_pytorch ``evaluate_gpu.py``): ``evaluate`` scores
``torch.mm(gf, qf.view(-1, 1))``, ranks by ``np.argsort(score)[::-1]``, good = same label from another camera,
junk = ``gl == -1`` plus same label and same camera; ``compute_mAP`` builds ``torch.IntTensor(len(index))`` before
the junk is removed (so the CMC spans the whole gallery and stays 1 to its end), returns ``(0, CMC)`` with
``CMC[0] = -1`` when there is no good index; the script's caller adds up ``CMC`` and ``ap`` over the queries whose
``CMC[0] != -1`` and divides both by the number of all queries. Our AP is their loop's arithmetic in their order
(the same float64 bits). Differences (README, Differences from the official code): tied similarities rank by
ascending gallery index (theirs reverses numpy's unstable ascending ``argsort``), ``compute_mAP`` returns
``(0.0, zeros)`` where theirs raises IndexError (good indices given but none left after the junk is removed or none
in ``index``), and bad shapes / NaN features raise a ValueError naming the argument.
"""

from __future__ import annotations

import numpy as np
import torch


def compute_mAP(index, good_index, junk_index):  # noqa: N802 - their function name is the contract
    """(ap float, CMC int32 tensor [len(index)]) of the ranking ``index`` (gallery indices, best first)."""
    index = np.asarray(index).reshape(-1)
    good = np.asarray(good_index).reshape(-1)
    junk = np.asarray(junk_index).reshape(-1)
    cmc = torch.zeros(len(index), dtype=torch.int32)
    if good.size == 0:
        cmc[0] = -1
        return 0, cmc
    kept = index[~np.isin(index, junk)]
    rows = np.nonzero(np.isin(kept, good))[0]  # 0-based ranks of the true matches in the junk-free ranking
    if rows.size == 0:
        return 0.0, cmc  # (their loop would index past the ranking here; every good index was junk or absent)
    cmc[int(rows[0]):] = 1
    i = np.arange(rows.size, dtype=np.float64)
    precision = (i + 1) / (rows + 1)
    old = np.where(rows != 0, i / np.maximum(rows, 1), 1.0)
    # their loop's arithmetic: ap += d_recall * (old + precision) / 2, summed in rank order (cumsum is sequential),
    # so the AP is theirs to the last bit
    ap = float(np.cumsum((1.0 / good.size) * (old + precision) / 2)[-1])
    return ap, cmc


def evaluate(qf, ql, qc, gf, gl, gc):
    """(ap, CMC) of one query (module docstring)."""
    q = torch.as_tensor(np.asarray(qf) if not isinstance(qf, torch.Tensor) else qf).detach()
    g = torch.as_tensor(np.asarray(gf) if not isinstance(gf, torch.Tensor) else gf).detach()
    q = q.reshape(-1)
    if g.dim() != 2 or g.shape[1] != q.numel():
        raise ValueError(f"gf must be [G, D] with D = len(qf) = {q.numel()}, got shape {tuple(g.shape)}")
    if not (q.is_floating_point() and g.is_floating_point()):
        raise TypeError("qf and gf must be floating point")
    gl = np.asarray(gl.cpu() if hasattr(gl, "cpu") else gl).reshape(-1)
    gc = np.asarray(gc.cpu() if hasattr(gc, "cpu") else gc).reshape(-1)
    if len(gl) != g.shape[0] or len(gc) != g.shape[0]:
        raise ValueError(f"gl and gc must have one entry per gallery row ({g.shape[0]}), got {len(gl)} and {len(gc)}")
    for name, t in (("qf", q), ("gf", g)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf")
    score = torch.mm(g, q.to(g.dtype).view(-1, 1)).squeeze(1).cpu().numpy()
    index = np.argsort(-score, kind="stable")  # descending similarity, ties by gallery index
    query_index = np.nonzero(gl == ql)[0]
    camera_index = np.nonzero(gc == qc)[0]
    good_index = np.setdiff1d(query_index, camera_index, assume_unique=True)
    junk_index = np.append(np.intersect1d(query_index, camera_index), np.nonzero(gl == -1)[0])
    return compute_mAP(index, good_index, junk_index)
