"""One table of evaluation conventions (``fastccreid eval-features Q G --compare-protocols``): the same features
evaluated under every protocol and codebase convention that the labels allow, so a reader sees how much of a
paper-to-paper gap is the protocol rather than the model.

Each line calls that codebase's call form from ``fastccreid.compat`` (or ``fastccreid.metrics.evaluate`` for our
protocols) on the seed's distance (squared euclidean of L2-normalised features; layumi's line ranks by the cosine
similarity of the same normalised features, which orders alike). The peers' forms take a dense distance matrix, so
this holds one [Q, G] float32 matrix (Market-1501: 214 MB). mINP is given where the convention defines it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class ConventionRow:
    """One convention's figures in [0, 1] (mINP None where the convention has none)."""

    convention: str
    protocol: str
    rank1: float
    mAP: float
    mINP: float | None
    num_valid_queries: int | None


def compare_conventions(qf, gf, q_pids, g_pids, q_camids, g_camids, q_clothes=None, g_clothes=None,
                        normalize: bool = True, cuhk03_seed: int = 0) -> list[ConventionRow]:
    """Rows for every convention that applies: clothes labels add CAL CC / SC. Features [Q, D] / [G, D]."""
    from fastccreid.compat import fastreid, layumi, open_reid, simple_ccreid, strong_baseline, torchreid
    from fastccreid.kernels.seed_distance import chunk_distance
    from fastccreid.metrics import NoValidQueryError, evaluate, normalize_features

    q = torch.as_tensor(np.asarray(qf)) if not isinstance(qf, torch.Tensor) else qf
    g = torch.as_tensor(np.asarray(gf)) if not isinstance(gf, torch.Tensor) else gf
    qp, gp, qc, gc = (np.asarray(x) for x in (q_pids, g_pids, q_camids, g_camids))
    if not (torch.isfinite(q).all() and torch.isfinite(g).all()):
        raise ValueError("the query or gallery features contain NaN or Inf")
    qn = normalize_features(q) if normalize else q.float()
    gn = normalize_features(g) if normalize else g.float()
    dm = np.concatenate([chunk_distance(qn[s : s + 1024], gn, "sqeuclidean").cpu().numpy()
                         for s in range(0, qn.shape[0], 1024)])
    rows: list[ConventionRow] = []

    def ours(name, protocol, **labels):
        r = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, protocol=protocol,
                     cuhk03_seed=cuhk03_seed, **labels)
        rows.append(ConventionRow(name, protocol, r.rank(1), r.mAP, r.mINP, r.num_valid_queries))

    ours("seed/FIRe market", "market")
    ours("seed/FIRe prcc (all gallery)", "prcc")
    if q_clothes is not None and g_clothes is not None:
        qcl, gcl = np.asarray(q_clothes), np.asarray(g_clothes)
        for mode, protocol in (("CC", "ltcc-cc"), ("SC", "ltcc-sc")):
            try:
                r = evaluate(dm, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, q_clothes=qcl, g_clothes=gcl,
                             protocol=protocol)
            except NoValidQueryError:
                continue  # no query has a true match under this rule
            cmc, mAP = simple_ccreid.evaluate_with_clothes(dm, qp, gp, qc, gc, qcl, gcl, mode=mode)
            rows.append(ConventionRow(f"CAL {mode}", protocol, float(cmc[0]), float(mAP), r.mINP,
                                      r.num_valid_queries))
    cmc, mAP = torchreid.evaluate_rank(dm, qp, gp, qc, gc)
    rows.append(ConventionRow("torchreid market", "market", float(cmc[0]), float(mAP), None, None))
    state = np.random.get_state()
    np.random.seed(cuhk03_seed)
    try:
        cmc, mAP = torchreid.evaluate_rank(dm, qp, gp, qc, gc, use_metric_cuhk03=True)
        rows.append(ConventionRow("torchreid cuhk03", "cuhk03", float(cmc[0]), float(mAP), None, None))
        cmc_c = open_reid.cmc(dm, qp, gp, qc, gc, topk=1, **open_reid.CUHK03)
    finally:
        np.random.set_state(state)  # the draws use numpy's global RNG, as theirs: leave the caller's as it was
    cmc, aps, inps = fastreid.evaluate_rank(dm, qp, gp, qc, gc)
    rows.append(ConventionRow("fast-reid", "market", float(cmc[0]), float(np.mean(aps)), float(np.mean(inps)),
                              len(aps)))
    cmc, mAP = strong_baseline.eval_func(dm, qp, gp, qc, gc)
    rows.append(ConventionRow("strong-baseline", "market", float(cmc[0]), float(mAP), None, None))
    ap_o = float(open_reid.mean_ap(dm, qp, gp, qc, gc))
    cmc_m = open_reid.cmc(dm, qp, gp, qc, gc, topk=1, **open_reid.MARKET)
    rows.append(ConventionRow("open-reid first-match", "market", float(cmc_m[0]), ap_o, None, None))
    rows.append(ConventionRow("open-reid cuhk03-style", "cuhk03", float(cmc_c[0]), ap_o, None, None))
    # layumi: per query, CMC and AP summed over the queries with a match, divided by every query (their caller)
    ap_sum, r1_sum = 0.0, 0
    for i in range(qn.shape[0]):
        ap, c = layumi.evaluate(qn[i], int(qp[i]), int(qc[i]), gn, gp, gc)
        if int(c[0]) == -1:
            continue
        ap_sum += ap
        r1_sum += int(c[0])
    rows.append(ConventionRow("layumi (trapezoid AP)", "market", r1_sum / len(qp), ap_sum / len(qp), None, None))
    return rows


def conventions_table(rows: list[ConventionRow]) -> str:
    """The rows as one text table, figures in percent."""
    lines = [f"{'convention':<30}{'protocol':<10}{'R-1':>8}{'mAP':>8}{'mINP':>8}"]
    for r in rows:
        minp = f"{100 * r.mINP:>8.2f}" if r.mINP is not None else f"{'-':>8}"
        lines.append(f"{r.convention:<30}{r.protocol:<10}{100 * r.rank1:>8.2f}{100 * r.mAP:>8.2f}{minp}")
    return "\n".join(lines)


def conventions_json(rows: list[ConventionRow]) -> list[dict]:
    """The rows as JSON-ready dicts."""
    return [asdict(r) for r in rows]
