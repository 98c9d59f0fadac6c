"""``fastccreid bench eval`` re-ranking rows (issue 27): ``evaluate(qf=..., gf=..., rerank=True)`` (streamed,
never Q×G) at Q 4,000 x G 30,000 x D 512 and, with ``--full``, at MSMT17 size (11,659 x 82,161 x 2,048).

Each case runs in a fresh process (spawned) so its peak RSS is its own: features built there, then the timed
re-ranked evaluation, then, in the same process, the N x N fp32 Gram matmul any exact re-ranking must compute
(N = Q + G; in row blocks of ``GRAM_ROWS`` written into one held buffer: the flops, not an N x N array, and no page
faults; the same with a fresh product per block is reported beside it) and the time as a multiple of it.
Features: ``fastccreid.bench.features.make_features`` (identity structure), L2-normalised as the evaluator does.
"""

from __future__ import annotations

import time

from fastccreid.bench.common import BenchRow

CASES = {"rerank 4000x30000 d512": (4000, 30000, 512, 1000),
         "rerank msmt17 11659x82161 d2048": (11659, 82161, 2048, 3060)}
GRAM_ROWS = 2048


def _worker(size: tuple[int, int, int, int], queue) -> None:
    import resource

    import torch

    from fastccreid.bench.features import make_features
    from fastccreid.metrics import evaluate

    nq, ng, d, nid = size
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid, d=d)
    t0 = time.perf_counter()
    res = evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, rerank=True)
    t_rr = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    feat = torch.nn.functional.normalize(torch.cat([qf, gf]), dim=1)
    del qf, gf
    n = feat.shape[0]
    t0 = time.perf_counter()
    for s in range(0, n, GRAM_ROWS):
        feat[s : s + GRAM_ROWS] @ feat.t()  # a fresh [2048, N] product per block (its page faults included)
    t_fresh = time.perf_counter() - t0
    buf = torch.empty(GRAM_ROWS * n)
    t0 = time.perf_counter()
    for s in range(0, n, GRAM_ROWS):  # the limit: the same products into one held buffer (flops, no faults)
        r = min(GRAM_ROWS, n - s)
        torch.mm(feat[s : s + r], feat.t(), out=buf[: r * n].view(r, n))
    t_gram = time.perf_counter() - t0
    queue.put({"s": t_rr, "rss": rss, "gram_s": t_gram, "gram_fresh_s": t_fresh, "mAP": res.mAP,
               "rank1": res.rank(1), "threads": torch.get_num_threads()})


def run_rerank(full: bool) -> list[BenchRow]:
    """One row per case (the MSMT17-size case only when ``full``): time, peak RSS, multiple of the Gram matmul."""
    import multiprocessing as mp

    rows = []
    ctx = mp.get_context("spawn")
    for name, size in CASES.items():
        if "msmt17" in name and not full:
            continue
        queue = ctx.Queue()
        proc = ctx.Process(target=_worker, args=(size, queue))
        proc.start()
        proc.join()  # (the result is a small dict: the queue's feeder never blocks the worker's exit)
        if proc.exitcode != 0 or queue.empty():
            raise RuntimeError(f"bench eval {name}: the worker process exited with {proc.exitcode}")
        out = queue.get()
        nq, ng, d, _ = size
        extra = {"Q": nq, "G": ng, "D": d, "N": nq + ng, "gram_matmul_s": out["gram_s"],
                 "gram_matmul_fresh_blocks_s": out["gram_fresh_s"],
                 "multiple_of_gram_matmul": out["s"] / out["gram_s"], "mAP": out["mAP"], "rank1": out["rank1"],
                 "threads": out["threads"]}
        rows.append(BenchRow("eval", name, "fast", out["s"], nq / out["s"], out["rss"], 1, nq, extra))
    return rows
