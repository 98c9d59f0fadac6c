"""Exact evaluation over N processes (gloo on CPU): ``evaluate(..., process_group=True)`` with the gallery sharded
over 2 and 3 processes equals the single-process ``evaluate`` (CMC, mAP, mINP, per-query AP / INP to 1e-12) on
random cases with junk, ties across shard boundaries, identities absent from the gallery or from a shard, uneven
shards, several query chunks and gallery tiles cut by shard boundaries; a rank's bad input stops every rank with an
error; ``fastccreid eval-features --nproc 2`` reads its shards from .npy files and prints the one-process numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.dist import init_env, spawn
from helpers.eval_cases import per_query_oracle

from fastccreid.evaluation.sharded import shard_bounds
from fastccreid.metrics import evaluate

JUNK = {"market": "market", "ltcc-general": "market", "celeb": "market", "ltcc-cc": "ltcc-cc", "prcc": None}
TIMEOUT_S = 240.0


def _labels(rng, nq: int, ng: int, npid: int, absent: int):
    """Labels with ``absent`` query identities that the gallery never holds, 3 cameras and 3 outfits."""
    qp = rng.integers(0, npid + absent, nq)
    gp = rng.integers(0, npid, ng)
    return dict(q_pids=qp, g_pids=gp, q_camids=rng.integers(0, 3, nq), g_camids=rng.integers(0, 3, ng),
                q_clothes=rng.integers(0, 3, nq), g_clothes=rng.integers(0, 3, ng))


def _cases() -> list[dict]:
    """Deterministic cases; ``cuts`` are the shard boundaries per world size (None: shard_bounds)."""
    cases = []
    rng = np.random.default_rng(1501)
    for i, protocol in enumerate(JUNK):
        nq, ng = 37, 150 + 13 * i
        lab = _labels(rng, nq, ng, npid=12, absent=3)
        ties = i % 2 == 0  # integer distances 0..3: ties everywhere, across every shard boundary
        dm = rng.integers(0, 4, (nq, ng)).astype(np.float32) if ties else rng.random((nq, ng)).astype(np.float32)
        cases.append(dict(name=f"distmat-{protocol}", dm=dm, protocol=protocol, lab=lab, kw={}))
    # one identity only in the first few gallery rows (absent from the other shards), several query chunks
    lab = _labels(rng, 40, 120, npid=6, absent=2)
    lab["g_pids"][:5] = 99
    lab["q_pids"][:4] = 99
    dm = rng.integers(0, 3, (40, 120)).astype(np.float64)
    cases.append(dict(name="distmat-chunks-fp64", dm=dm, protocol="market", lab=lab, kw=dict(chunk_size=7)))
    # uneven shards, one of a single item
    lab = _labels(rng, 25, 90, npid=5, absent=1)
    dm = rng.integers(0, 3, (25, 90)).astype(np.float32)
    cases.append(dict(name="distmat-uneven", dm=dm, protocol="ltcc-cc", lab=lab, kw={},
                      cuts={2: [0, 1, 90], 3: [0, 60, 61, 90]}))
    for j, (ng, d, normalize) in enumerate([(300, 64, True), (2600, 24, True), (700, 8, False)]):
        nq = 45
        lab = _labels(rng, nq, ng, npid=20, absent=4)
        qf = rng.standard_normal((nq, d)).astype(np.float32)
        gf = rng.standard_normal((ng, d)).astype(np.float32)
        # duplicated gallery rows on both sides of every shard boundary (and of the 2600 gallery's tiles): a
        # same-pid copy and an other-pid copy tie with the original
        for cut in (ng // 3, ng // 2, 2 * ng // 3, 1300, 1301):
            if cut + 2 < ng:
                gf[cut - 2] = gf[cut + 1]
                gf[cut] = gf[cut + 1]
                lab["g_pids"][cut - 2] = lab["g_pids"][cut + 1]
        if not normalize:  # small integers: every distance exact, ties exact
            qf, gf = np.round(qf * 2), np.round(gf * 2)
        # chunk_size=1: one-row products (a matrix-vector product, whose rounding depends on the width): the
        # shards must compute the single process's full-width tiles, not their own narrower ones
        cases.append(dict(name=f"features-{ng}x{d}", qf=qf, gf=gf, protocol=list(JUNK)[j + 1], lab=lab,
                          kw=dict(normalize=normalize, chunk_size=1 if j == 0 else None)))
    return cases


def _bounds(case: dict, rank: int, world: int, ng: int) -> tuple[int, int]:
    cuts = case.get("cuts", {}).get(world)
    return (cuts[rank], cuts[rank + 1]) if cuts else shard_bounds(ng, rank, world)


def _shard_args(case: dict, lo: int, hi: int) -> dict:
    lab = case["lab"]
    kw = dict(q_pids=lab["q_pids"], g_pids=lab["g_pids"][lo:hi], q_camids=lab["q_camids"],
              g_camids=lab["g_camids"][lo:hi], q_clothes=lab["q_clothes"], g_clothes=lab["g_clothes"][lo:hi],
              protocol=case["protocol"], **case["kw"])
    if "dm" in case:
        return dict(distmat=case["dm"][:, lo:hi], **kw)
    return dict(qf=case["qf"], gf=case["gf"][lo:hi], **kw)


def _summary(res) -> dict:
    return dict(cmc=res.cmc, mAP=res.mAP, mINP=res.mINP, nvalid=res.num_valid_queries, nq=res.num_queries,
                ap=res.all_AP, inp=res.all_INP, vq=res.valid_query_index)


def _worker(rank: int, world: int, store: str, cases: list[dict], out: str) -> None:
    init_env(rank, world, store)
    from fastccreid.engine.distributed import cleanup, setup

    setup(use_cpu=True)
    try:
        results = []
        for case in cases:
            ng = case["dm"].shape[1] if "dm" in case else case["gf"].shape[0]
            lo, hi = _bounds(case, rank, world, ng)
            res = evaluate(**_shard_args(case, lo, hi), return_per_query=True, process_group=True)
            results.append(_summary(res))
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        cleanup()


def _single(case: dict) -> dict:
    ng = case["dm"].shape[1] if "dm" in case else case["gf"].shape[0]
    return _summary(evaluate(**_shard_args(case, 0, ng), return_per_query=True))


def _same(a: dict, b: dict, name: str) -> None:
    assert a["nvalid"] == b["nvalid"] and a["nq"] == b["nq"], name
    np.testing.assert_array_equal(a["vq"], b["vq"], err_msg=name)
    for k in ("cmc", "ap", "inp"):
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-12, err_msg=f"{name}: {k}")
    assert abs(a["mAP"] - b["mAP"]) <= 1e-12 and abs(a["mINP"] - b["mINP"]) <= 1e-12, name


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_equals_one_process(world, tmp_path):
    cases = _cases()
    spawn(_worker, world, (world, str(tmp_path), cases, str(tmp_path)), timeout=TIMEOUT_S)
    per_rank = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for i, case in enumerate(cases):
        single = _single(case)
        for r in range(world):
            _same(per_rank[r][i], single, f"{case['name']} (rank {r} of {world})")
        if "dm" in case:  # and the single process against the stable-sort oracle, so the pair cannot agree wrongly
            lab = case["lab"]
            per = per_query_oracle(case["dm"], lab["q_pids"], lab["g_pids"], lab["q_camids"], lab["g_camids"],
                                   lab["q_clothes"], lab["g_clothes"], JUNK[case["protocol"]])
            ap = [o[1] for o in per if o is not None]
            np.testing.assert_allclose(single["ap"], ap, rtol=0, atol=1e-12, err_msg=case["name"])


def test_shard_bounds_tile_in_order():
    for n in (0, 1, 5, 11006):
        for world in (1, 2, 3, 8):
            b = [shard_bounds(n, r, world) for r in range(world)]
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(b[r][1] == b[r + 1][0] for r in range(world - 1))
            assert max(h - lo for lo, h in b) - min(h - lo for lo, h in b) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(10, 2, 2)


def _bad_shard_case(rank: int, world: int):
    """Queries, this rank's gallery shard, the same shard with a NaN on rank 1, and evaluate's keywords for it."""
    rng = np.random.default_rng(7)
    lab = _labels(rng, 10, 40, npid=4, absent=0)
    qf, gf = rng.random((10, 8)).astype(np.float32), rng.random((40, 8)).astype(np.float32)
    lo, hi = shard_bounds(40, rank, world)
    bad = gf[lo:hi].copy()
    if rank == 1:
        bad[0, 0] = np.nan
    kw = dict(q_pids=lab["q_pids"], g_pids=lab["g_pids"][lo:hi], q_camids=lab["q_camids"],
              g_camids=lab["g_camids"][lo:hi], process_group=True)
    return lab, qf, gf[lo:hi], bad, kw


def _error_worker(rank: int, world: int, store: str, out: str) -> None:
    init_env(rank, world, store)
    from fastccreid.engine.distributed import cleanup, setup

    setup(use_cpu=True)
    lab, qf, g_ok, g, kw = _bad_shard_case(rank, world)
    seen = []
    try:
        for call in (dict(qf=qf, gf=g), dict(qf=qf, gf=g_ok, protocol="cuhk03"),
                     dict(qf=qf[: 9 + rank], gf=g_ok, q_pids=lab["q_pids"][: 9 + rank],
                          q_camids=lab["q_camids"][: 9 + rank])):
            try:
                evaluate(**{**kw, **call})
                seen.append("no error")
            except (ValueError, RuntimeError) as exc:
                seen.append(f"{type(exc).__name__}: {exc}")
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(seen, f)
    finally:
        cleanup()


def test_a_bad_shard_stops_every_rank(tmp_path):
    """NaN in one rank's shard, protocol cuhk03, and ranks passing different queries: every rank raises (none
    waits in a collective for a rank that gave up)."""
    spawn(_error_worker, 2, (2, str(tmp_path), str(tmp_path)), timeout=TIMEOUT_S)
    r0, r1 = (json.load(open(tmp_path / f"rank{r}.json")) for r in range(2))
    assert r1[0] == "ValueError: features contain NaN or Inf"
    assert r0[0].startswith("RuntimeError") and "rank(s) [1]" in r0[0]
    assert all("cuhk03" in m and m.startswith("ValueError") for m in (r0[1], r1[1]))
    assert all(m.startswith("ValueError") and "same queries" in m for m in (r0[2], r1[2]))


def _cycle_worker(rank: int, world: int, store: str, out: str) -> None:
    """Each error path of a sharded evaluation, then the frames of fastccreid/evaluation that only the cyclic GC
    would free (gc disabled, DEBUG_SAVEALL keeps what it finds)."""
    import gc

    init_env(rank, world, store)
    from fastccreid.engine.distributed import cleanup, setup

    setup(use_cpu=True)
    _, qf, g_ok, g, kw = _bad_shard_case(rank, world)
    leaked = {}
    try:
        for name, call in (("nan", dict(qf=qf, gf=g)), ("cuhk03", dict(qf=qf, gf=g_ok, protocol="cuhk03"))):
            gc.collect()
            gc.disable()
            gc.set_debug(gc.DEBUG_SAVEALL)
            try:
                evaluate(**{**kw, **call})
            except (ValueError, RuntimeError):
                pass
            gc.collect()
            leaked[name] = sorted({o.f_code.co_name for o in gc.garbage if isinstance(o, type(sys._getframe()))
                                   and f"{os.sep}evaluation{os.sep}" in o.f_code.co_filename})
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        with open(os.path.join(out, f"cycles{rank}.json"), "w") as f:
            json.dump(leaked, f)
    finally:
        cleanup()


def test_error_paths_leave_no_reference_cycles(tmp_path):
    """A raised error must not keep evaluate's frames (and the process group they hold) in a reference cycle: such
    a frame outlived destroy_process_group until the cyclic GC ran, gloo was then torn down at interpreter exit,
    and about 1 exit in 6 aborted (SIGABRT, "terminate called without an active exception")."""
    spawn(_cycle_worker, 2, (2, str(tmp_path), str(tmp_path)), timeout=TIMEOUT_S)
    for r in range(2):
        assert json.load(open(tmp_path / f"cycles{r}.json")) == {"nan": [], "cuhk03": []}, r


def test_process_group_needs_distributed():
    with pytest.raises(ValueError, match="not initialised"):
        evaluate(np.zeros((2, 3)), q_pids=[0, 1], g_pids=[0, 1, 1], q_camids=[0, 0], g_camids=[1, 1, 1],
                 process_group=True)


def _write_npy(path: str, feats, lab: dict, side: str) -> None:
    np.save(path, feats)
    np.savez(path[: -len(".npy")] + ".labels.npz", pids=lab[f"{side}_pids"], camids=lab[f"{side}_camids"],
             clothes=lab[f"{side}_clothes"])


def test_cli_eval_features_nproc_2(tmp_path):
    rng = np.random.default_rng(11)
    lab = _labels(rng, 30, 257, npid=15, absent=2)
    qf = rng.standard_normal((30, 12)).astype(np.float32)
    gf = rng.standard_normal((257, 12)).astype(np.float32)
    gf[128] = gf[129]  # a tie across the two shards' boundary (shard_bounds(257, 0, 2) = (0, 128))
    q, g = str(tmp_path / "q.npy"), str(tmp_path / "g.npy")
    _write_npy(q, qf, lab, "q")
    _write_npy(g, gf, lab, "g")
    outs = {}
    for n in (1, 2):
        out = str(tmp_path / f"n{n}.json")
        proc = subprocess.run([sys.executable, "-m", "fastccreid", "eval-features", q, g, "--protocol", "ltcc-cc",
                               "--nproc", str(n), "--json", out], capture_output=True, text=True,
                              timeout=TIMEOUT_S, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("ltcc-cc") == 1  # one table, printed by rank 0 only
        outs[n] = json.load(open(out))
    assert outs[2]["nproc"] == 2
    for k in ("mAP", "mINP", "cmc", "num_valid_queries", "num_gallery"):
        np.testing.assert_allclose(outs[2][k], outs[1][k], rtol=0, atol=1e-12, err_msg=k)
    direct = evaluate(qf=qf, gf=gf, protocol="ltcc-cc", **lab)
    assert abs(outs[2]["mAP"] - direct.mAP) <= 1e-12


def _eval_features_nproc2(tmp_path, qf, gf, lab, *extra: str) -> subprocess.CompletedProcess:
    q, g = str(tmp_path / "q.npy"), str(tmp_path / "g.npy")
    _write_npy(q, qf, lab, "q")
    _write_npy(g, gf, lab, "g")
    return subprocess.run([sys.executable, "-m", "fastccreid", "eval-features", q, g, "--nproc", "2", *extra],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_cli_eval_features_nproc_2_names_the_failing_rank(tmp_path):
    """NaN only in rank 1's gallery rows: exit 2, rank 1 prints its own error (it was lost before: only rank 0
    printed, and rank 0's message points at 'their error messages'), rank 0 names rank 1; an error every rank
    raises (the same bad argument) is printed once."""
    rng = np.random.default_rng(12)
    lab = _labels(rng, 8, 40, npid=4, absent=0)
    qf = rng.standard_normal((8, 12)).astype(np.float32)
    gf = rng.standard_normal((40, 12)).astype(np.float32)
    gf[35, 3] = np.nan  # shard_bounds(40, 1, 2) = (20, 40): rank 1's rows
    proc = _eval_features_nproc2(tmp_path, qf, gf, lab)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fastccreid eval-features: error:")]
    assert len(lines) == 2, proc.stderr
    assert any(ln.startswith("fastccreid eval-features: error: rank 1: ") and "NaN" in ln for ln in lines), lines
    assert any("rank(s) [1]" in ln for ln in lines), lines
    gf[35, 3] = 0.5
    proc = _eval_features_nproc2(tmp_path, qf, gf, lab, "--protocol", "cuhk03")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fastccreid eval-features: error:")]
    assert len(lines) == 1 and "cuhk03" in lines[0] and "rank 1" not in lines[0], proc.stderr
