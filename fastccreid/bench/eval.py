"""``fastccreid bench eval``: evaluation from features, fast (``fastccreid.metrics``) vs the seed's reference
(fp32 distance matrix + numpy argsort + per-query Python loop), wall time and peak RSS, D=2048.

Cases: LTCC size (493 x 7,050) and Celeb-reID size (2,972 x 11,006) with the reference; MSMT17 size
(11,659 x 82,161) fast only (the reference's dense arrays pass 22 GB there); a scaling curve of 256 queries
against 1k-16k galleries (64k fast only in full mode); Celeb-reID size with the gallery sharded over 2 gloo
processes against 1 process (full mode only). Quick mode: LTCC size and the scaling curve (and the re-ranking
and compat rows, except on a CUDA machine, where a quick run keeps to the device figures). On a CUDA machine also
``rank_stats`` on device features, the torch path (what ``backend="auto"`` picks on CUDA) against the fused Triton
kernels, at LTCC, Celeb-reID and MSMT17 sizes, each with the time of the cuBLAS Gram matrix an exact evaluation must
compute and each path's mismatches against the fp64 path.
Features are synthetic with identity structure (identity centre + clothes offset + noise, non-negative like
max-pooled ReLU features), so rankings resemble a trained model's rather than pure noise.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from fastccreid.bench.common import BenchRow, interleaved_medians, keep_partial, note_skip, peak_rss_bytes
from fastccreid.bench.features import (  # noqa: F401  (the sizes and make_features: part of this suite's API)
    CASES,
    NOISE,
    SCALE_GALLERIES,
    SCALE_QUERIES,
    D,
    make_features,
)


def _reference_eval(qf, gf, qp, gp, qc, gc):
    """The seed's evaluation (``fastccreid.reference``): dense fp32 distances, argsort, per-query loop."""
    from fastccreid.reference.evaluation import evaluate as ref_evaluate
    from fastccreid.reference.evaluation import get_distmat

    return ref_evaluate(get_distmat(qf, gf), qp, gp, qc, gc)


def fast_eval(qf, gf, qp, gp, qc, gc):
    from fastccreid.metrics import evaluate

    return evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, protocol="market")


def run_case(name: str, with_reference: bool, repeats: int = 3, size: tuple[int, int, int] | None = None
             ) -> list[BenchRow]:
    """Fast (and optionally reference) rows for one named case; ``size`` = (Q, G, #ids) overrides CASES."""
    nq, ng, nid = size if size is not None else CASES[name]
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid)
    rows = []
    fast_eval(qf[:8], gf, qp[:8], gp, qc[:8], gc)  # warm-up outside the timing
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fast_eval(qf, gf, qp, gp, qc, gc)
        times.append(time.perf_counter() - t0)
    t_fast = float(np.median(times))
    extra = {"Q": nq, "G": ng, "D": D, "mAP": res.mAP, "rank1": res.rank(1)}
    if size is not None:  # scaling-curve rows (fixed Q) carry the x of the report's plots
        extra["gallery_size"] = ng
    rows.append(BenchRow("eval", f"{name} {nq}x{ng}", "fast", t_fast, nq / t_fast, peak_rss_bytes(), repeats, nq,
                         extra))
    if with_reference:
        t0 = time.perf_counter()
        ref = _reference_eval(qf, gf, qp, gp, qc, gc)
        t_ref = time.perf_counter() - t0
        extra_r = {**extra, "mAP": float(ref[1]), "rank1": float(ref[0][0]),
                   "mAP_abs_diff": abs(float(ref[1]) - res.mAP)}
        rows.append(BenchRow("eval", f"{name} {nq}x{ng}", "reference", t_ref, nq / t_ref, peak_rss_bytes(), 1, nq,
                             extra_r))
    return rows


def placement_case(name: str, repeats: int = 3) -> list[BenchRow]:
    """``evaluate`` from features with the placement kernel (``backend="auto"`` on CPU: path "fast") and with the
    torch placement (``backend="torch"``: path "torch-placement"), alternating in one process; medians. The same
    numbers (``extra["same_ap"]``), so the ratio is the kernel's gain over the whole evaluation."""
    from fastccreid.metrics import evaluate

    nq, ng, nid = CASES[name]
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid)
    kw = dict(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, return_per_query=True)
    evaluate(**{**kw, "qf": qf[:8], "q_pids": qp[:8], "q_camids": qc[:8]})  # warm-up outside the timing
    times: dict[str, list[float]] = {"auto": [], "torch": []}
    res = {}
    for _ in range(repeats):
        for backend in ("auto", "torch"):
            t0 = time.perf_counter()
            res[backend] = evaluate(**kw, backend=backend)
            times[backend].append(time.perf_counter() - t0)
    same = bool(np.array_equal(res["auto"].all_AP, res["torch"].all_AP))
    t_auto, t_torch = (float(np.median(times[b])) for b in ("auto", "torch"))
    extra = {"Q": nq, "G": ng, "D": D, "mAP": res["auto"].mAP, "same_ap": same, "torch_over_kernel": t_torch / t_auto}
    case = f"{name} {nq}x{ng} placement"
    return [BenchRow("eval", case, "fast", t_auto, nq / t_auto, peak_rss_bytes(), repeats, nq, extra),
            BenchRow("eval", case, "torch-placement", t_torch, nq / t_torch, peak_rss_bytes(), repeats, nq, extra)]


def mismatches_vs_fp64(stats, exact, ap_tol: float = 1e-6) -> dict[str, Any]:
    """How far one path's rank statistics are from the fp64 path's on the same features: queries whose first
    correct rank differs, APs off by more than ``ap_tol`` (and by more than 1e-9), and the largest AP difference."""
    d = (stats.ap.double().cpu() - exact.ap.double().cpu()).abs()
    return {"first_rank_mismatches": int((stats.first_rank.cpu() != exact.first_rank.cpu()).sum()),
            f"ap_mismatches_{ap_tol:g}": int((d > ap_tol).sum()), "ap_mismatches_1e-9": int((d > 1e-9).sum()),
            "max_ap_abs_diff": float(d.max()) if d.numel() else 0.0}


def rank_stats_backends_case(name: str, device: torch.device, repeats: int = 5,
                             size: tuple[int, int, int] | None = None) -> list[BenchRow]:
    """Rows for one named case: ``rank_stats`` on ``device`` features with ``backend="torch"`` (matmul distances per
    query chunk + lookup placement) and ``backend="triton"`` (fused distance tiles + placement), and in ``extra``
    the time of q @ g.T (on CUDA the cuBLAS fp32 matmul an exact evaluation must do), each path's time as a
    multiple of it (the data for the CUDA ``auto`` rule, kernels/_backend.py) and ``vs_fp64``: each path's
    mismatches against the fp64 torch path on the same features. The two fp32 paths are not required to agree
    bit for bit: cuBLAS may split K where the fused kernel sums in K order, so distances differ by ulps and near
    ties may swap (reversing the K order alone moved AP by > 1e-9 on half of LTCC's queries). On CPU the Triton
    path runs only under TRITON_INTERPRET=1 (tests use a small ``size``)."""
    from fastccreid.kernels import rank_stats

    nq, ng, nid = size if size is not None else CASES[name]
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid, d=D if size is None else 64)
    qf, gf = qf.to(device), gf.to(device)
    lab = {k: torch.as_tensor(v).to(device) for k, v in
           (("q_pids", qp), ("g_pids", gp), ("q_camids", qc), ("g_camids", gc))}
    paths = {b: (lambda b=b: rank_stats(qf, gf, "sqeuclidean", junk="market", backend=b, **lab))
             for b in ("torch", "triton")}
    got = {b: fn() for b, fn in paths.items()}  # also the warm-up: Triton compiles and autotunes here
    exact = rank_stats(qf.double(), gf.double(), "sqeuclidean", junk="market", backend="torch", **lab)
    vs = {b: mismatches_vs_fp64(got[b], exact) for b in paths}
    between = mismatches_vs_fp64(got["triton"], got["torch"])
    med = interleaved_medians({**paths, "gram": lambda: qf @ gf.t()}, repeats, device)
    rows = []
    for path in ("torch", "triton"):
        r = got[path]
        extra = {"Q": nq, "G": ng, "D": qf.shape[1], "backend": path, "gram_matmul_s": med["gram"],
                 "multiple_of_gram_matmul": med[path] / med["gram"], "mAP": float(r.ap[r.valid].mean()),
                 "mAP_fp64": float(exact.ap[exact.valid].mean()), "vs_fp64": vs[path], "triton_vs_torch": between}
        rows.append(BenchRow("eval", f"rank_stats {device.type} {name} {nq}x{ng}", path, med[path], nq / med[path],
                             peak_rss_bytes(), repeats, nq, extra))
    return rows


def _sharded_worker(rank: int, world: int, folder: str) -> None:
    """One process of the sharded row: its shard of the .npy gallery, timed ``evaluate``, peak RSS to JSON."""
    import json
    import os
    import resource

    import torch.distributed as dist

    from fastccreid.features_io import load_features
    from fastccreid.metrics import evaluate

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(folder, "store"), rank=rank,
                                world_size=world)
    q = load_features(os.path.join(folder, "q.npy"))
    g = load_features(os.path.join(folder, "g.npy"), shard=(rank, world))
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    res = evaluate(qf=q.feats, gf=g.feats, q_pids=q.pids, g_pids=g.pids, q_camids=q.camids, g_camids=g.camids,
                   protocol="market", process_group=True if world > 1 else None)
    out = {"s": time.perf_counter() - t0, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "mAP": res.mAP, "cmc": res.cmc.tolist()}
    with open(os.path.join(folder, f"w{world}r{rank}.json"), "w") as f:
        json.dump(out, f)
    if world > 1:
        dist.destroy_process_group()


def run_sharded(nproc: int = 2) -> list[BenchRow]:
    """Celeb-reID size with the gallery sharded over ``nproc`` gloo processes (each reads its rows of a .npy) vs one
    process, each in a fresh process (peak RSS per process); checks the results are equal."""
    import json
    import os
    import tempfile

    import torch.multiprocessing as mp

    nq, ng, nid = CASES["celeb"]
    (qf, qp, qc, _), (gf, gp, gc, _) = make_features(nq, ng, nid)
    with tempfile.TemporaryDirectory(prefix="fastccreid-bench-") as folder:
        for name, f, p, c in (("q", qf, qp, qc), ("g", gf, gp, gc)):
            np.save(os.path.join(folder, f"{name}.npy"), f.numpy())
            np.savez(os.path.join(folder, f"{name}.labels.npz"), pids=p, camids=c)
        del qf, gf
        runs = {}
        for world in (1, nproc):
            mp.spawn(_sharded_worker, args=(world, folder), nprocs=world, join=True)
            runs[world] = [json.load(open(os.path.join(folder, f"w{world}r{r}.json"))) for r in range(world)]
    one, many = runs[1][0], runs[nproc]
    diff = max(abs(r["mAP"] - one["mAP"]) for r in many)
    cmc_diff = max(float(np.abs(np.subtract(r["cmc"], one["cmc"])).max()) for r in many)
    if diff > 1e-12 or cmc_diff > 1e-12:
        raise RuntimeError(f"sharded evaluation differs from one process: mAP by {diff:.3g}, CMC by {cmc_diff:.3g}")
    t = max(r["s"] for r in many)
    extra = {"Q": nq, "G": ng, "D": D, "nproc": nproc, "mAP": many[0]["mAP"], "rank1": many[0]["cmc"][0],
             "one_process_s": one["s"], "one_process_peak_rss_bytes": one["rss"], "mAP_abs_diff_vs_one_process": diff}
    return [BenchRow("eval", f"celeb {nq}x{ng} sharded over {nproc} processes", "fast", t, nq / t,
                     max(r["rss"] for r in many), 1, nq, extra)]


def run(quick: bool) -> list[BenchRow]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows: list[BenchRow] = []
    if torch.cuda.is_available():  # first: the figures a GPU check waits for
        for name in ("ltcc", "celeb", "msmt17"):
            rows += rank_stats_backends_case(name, torch.device("cuda"), repeats=5 if name != "msmt17" else 3)
            keep_partial(rows)
    rows += run_case("ltcc", with_reference=True)
    keep_partial(rows)
    # scaling curve: time and peak memory vs gallery size at a fixed 256 queries, both paths
    for ng in SCALE_GALLERIES if quick else SCALE_GALLERIES + (64000,):
        rows += run_case(f"scale-g{ng}", with_reference=ng <= 16000, repeats=1 if ng > 16000 else 3,
                         size=(SCALE_QUERIES, ng, max(8, ng // 40)))
        keep_partial(rows)
    if quick and torch.cuda.is_available():
        # CPU-only rows (the 4,000 x 30,000 re-ranking alone took 180 s on the 2-core machine): a quick run on a GPU
        # (benchmarks/gpu_check.sh, 8 minutes in all) measures the device; 'bench eval' without --quick has them
        note_skip("eval", "the re-ranking and compat rows (CPU only)",
                  "quick mode on a CUDA machine keeps to the device figures; run 'fastccreid bench eval' for them")
    else:
        from fastccreid.bench.rerank import run_rerank

        rows += run_rerank(full=not quick)  # re-ranking rows (issue 27); the MSMT17-size one in full mode only
        from fastccreid.bench.compat_eval import run_compat

        rows += run_compat(quick)  # strong-baseline R1_mAP_eval vs their eval_func path (issue 26)
        keep_partial(rows)
    if quick:
        return rows
    rows += run_case("celeb", with_reference=True, repeats=2)
    rows += placement_case("celeb")  # the placement kernel against the torch placement (CPU)
    rows += run_case("msmt17", with_reference=False, repeats=1)
    rows += run_sharded(2)
    return rows
