"""Re-ranked evaluation sharded over processes (issue 27, item 4): ``evaluate(rerank=True, process_group=True)``
with the gallery split over 2 and 3 gloo processes equals one process's ``evaluate(rerank=True)`` exactly (per-query
AP / INP, CMC) on ties, duplicate features across shard boundaries, k1 larger than the set, uneven shards, more
processes than neighbour blocks or query chunks; one process equals the dense oracle's matrix evaluated, so the
pair cannot agree on a wrong answer; ``eval-features --nproc 2 --reranking`` prints the one-process numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.dist import init_env, spawn
from helpers.rerank_cases import dense_rerank_fp32_jaccard

import fastccreid.rerank as rerank_mod
from fastccreid.evaluation.sharded import shard_bounds
from fastccreid.metrics import evaluate

TIMEOUT_S = 240.0
TINY = dict(QUERY_CHUNK_BYTES=1, NEIGHBOUR_CHUNK_BYTES=1, PAIR_BUDGET=64)  # many neighbour blocks and query chunks


def _cases() -> list[dict]:
    rng = np.random.default_rng(27)
    cases = []
    for name, nq, ng, d, kw, budgets, cuts in [
        ("random", 23, 97, 16, {}, TINY, None),
        ("ties-uneven", 17, 64, 12, dict(rerank_k1=6, rerank_k2=1), TINY, {2: [0, 1, 64], 3: [0, 40, 41, 64]}),
        ("k1-over-n", 5, 11, 8, dict(rerank_k1=30, rerank_k2=3), TINY, None),
        ("default-budgets", 19, 80, 16, dict(normalize=False, rerank_lambda=0.5), {}, None),
    ]:
        cent = rng.standard_normal((8, d))
        qp, gp = rng.integers(0, 8, nq), rng.integers(0, 8, ng)
        if name.startswith("ties"):  # small integers: every distance exact, ties everywhere
            qf = rng.integers(-1, 2, (nq, d)).astype(np.float32)
            gf = rng.integers(-1, 2, (ng, d)).astype(np.float32)
        else:
            qf = (cent[qp] + 0.7 * rng.standard_normal((nq, d))).astype(np.float32)
            gf = (cent[gp] + 0.7 * rng.standard_normal((ng, d))).astype(np.float32)
        for cut in (ng // 3, ng // 2, 2 * ng // 3):  # duplicates on both sides of the shard boundaries
            if 1 < cut < ng - 1:
                gf[cut - 1] = gf[cut]
                gp[cut - 1] = gp[cut]
        qf[0] = gf[3]  # a query that is a gallery item
        lab = dict(q_pids=qp, g_pids=gp, q_camids=np.zeros(nq, dtype=np.int64), g_camids=rng.integers(1, 3, ng),
                   q_clothes=rng.integers(0, 2, nq), g_clothes=rng.integers(0, 2, ng))
        cases.append(dict(name=name, qf=qf, gf=gf, lab=lab, kw=kw, budgets=budgets, cuts=cuts))
    return cases


def _args(case: dict, lo: int, hi: int, protocol: str) -> dict:
    lab = case["lab"]
    return dict(qf=case["qf"], gf=case["gf"][lo:hi], q_pids=lab["q_pids"], g_pids=lab["g_pids"][lo:hi],
                q_camids=lab["q_camids"], g_camids=lab["g_camids"][lo:hi], q_clothes=lab["q_clothes"],
                g_clothes=lab["g_clothes"][lo:hi], protocol=protocol, rerank=True, return_per_query=True,
                **case["kw"])


def _summary(res) -> dict:
    return dict(cmc=res.cmc, mAP=res.mAP, mINP=res.mINP, ap=res.all_AP, inp=res.all_INP, vq=res.valid_query_index)


PROTOCOLS = ("market", "ltcc-cc")


def _worker(rank: int, world: int, store: str, cases: list[dict], out: str) -> None:
    init_env(rank, world, store)
    from fastccreid.engine.distributed import cleanup, setup

    setup(use_cpu=True)
    try:
        results = []
        defaults = {k: getattr(rerank_mod, k) for k in TINY}
        for case in cases:
            for k, v in {**defaults, **case["budgets"]}.items():
                setattr(rerank_mod, k, v)
            ng = case["gf"].shape[0]
            lo, hi = (case["cuts"][world][rank], case["cuts"][world][rank + 1]) if case["cuts"] else \
                shard_bounds(ng, rank, world)
            for protocol in PROTOCOLS:
                results.append(_summary(evaluate(**_args(case, lo, hi, protocol), process_group=True)))
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        cleanup()


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_reranking_equals_one_process(world, tmp_path, monkeypatch):
    cases = _cases()
    spawn(_worker, world, (world, str(tmp_path), cases, str(tmp_path)), timeout=TIMEOUT_S)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    i = 0
    for case in cases:
        defaults = {k: getattr(rerank_mod, k) for k in TINY}
        for k, v in {**defaults, **case["budgets"]}.items():
            monkeypatch.setattr(rerank_mod, k, v)
        ng = case["gf"].shape[0]
        for protocol in PROTOCOLS:
            one = _summary(evaluate(**_args(case, 0, ng, protocol)))
            for r in range(world):
                got, name = per_rank[r][i], f"{case['name']} {protocol} (rank {r} of {world})"
                np.testing.assert_array_equal(got["vq"], one["vq"], err_msg=name)
                for k in ("cmc", "ap", "inp"):
                    np.testing.assert_array_equal(got[k], one[k], err_msg=f"{name}: {k}")
                assert got["mAP"] == one["mAP"] and got["mINP"] == one["mINP"], name
            i += 1
        for k, v in defaults.items():
            monkeypatch.setattr(rerank_mod, k, v)
    # one process against the dense oracle (no shared code): the same CMC, mAP to 1e-12 (chunking, see
    # test_rerank_streamed.test_many_chunks_and_blocks)
    case = cases[0]
    q = torch.from_numpy(case["qf"])
    g = torch.from_numpy(case["gf"])
    qn, gn = q / (q.norm(dim=1, keepdim=True) + 1e-12), g / (g.norm(dim=1, keepdim=True) + 1e-12)
    want = evaluate(torch.from_numpy(dense_rerank_fp32_jaccard(qn, gn, 20, 6, 0.3)), **{
        k: v for k, v in _args(case, 0, g.shape[0], "market").items() if k not in ("qf", "gf", "rerank")})
    assert np.array_equal(want.cmc, per_rank[0][0]["cmc"])
    assert abs(want.mAP - per_rank[0][0]["mAP"]) <= 1e-6


def test_cli_eval_features_nproc_2_reranking(tmp_path):
    rng = np.random.default_rng(31)
    nq, ng, d = 21, 90, 12
    qp, gp = rng.integers(0, 9, nq), rng.integers(0, 9, ng)
    qf = rng.standard_normal((nq, d)).astype(np.float32)
    gf = rng.standard_normal((ng, d)).astype(np.float32)
    gf[44] = gf[45]  # a tie across the shards' boundary (shard_bounds(90, 0, 2) = (0, 45))
    lab = dict(q_pids=qp, g_pids=gp, q_camids=np.zeros(nq, dtype=np.int64), g_camids=rng.integers(1, 3, ng))
    q, g = str(tmp_path / "q.npy"), str(tmp_path / "g.npy")
    for path, feats, side in ((q, qf, "q"), (g, gf, "g")):
        np.save(path, feats)
        np.savez(path[: -len(".npy")] + ".labels.npz", pids=lab[f"{side}_pids"], camids=lab[f"{side}_camids"])
    out = str(tmp_path / "n2.json")
    proc = subprocess.run([sys.executable, "-m", "fastccreid", "eval-features", q, g, "--nproc", "2", "--reranking",
                           "--json", out], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    res = json.load(open(out))
    assert res["nproc"] == 2 and res["reranking"] is True
    one = evaluate(qf=qf, gf=gf, rerank=True, **lab)
    assert res["mAP"] == pytest.approx(one.mAP, abs=1e-12) and res["mINP"] == pytest.approx(one.mINP, abs=1e-12)
    np.testing.assert_allclose(res["cmc"], one.cmc[: len(res["cmc"])], rtol=0, atol=1e-12)
    plain = evaluate(qf=qf, gf=gf, **lab)
    assert abs(plain.mAP - one.mAP) > 1e-6  # re-ranking took effect
