"""``fastccreid doctor``: what this machine can run, and whether every fast path it would use agrees with its twin.

Prints the torch / CUDA / cuDNN / Triton / DALI versions (and whether their CUDA majors match), native bf16 support,
which backend ``backend="auto"`` picks for each op and why, then runs every available fast path against its torch
twin on small inputs. Exit status 1 when any check fails. On a CPU: the torch twins against ``fastccreid.reference``
and the Triton kernels under ``TRITON_INTERPRET=1`` (in a subprocess) against the torch path. On CUDA also: the
compiled Triton kernels against torch, DALI's mixed (nvJPEG) decode against the CPU decode, a bf16 and an fp16 +
GradScaler train step, a compiled step that does not recompile on its second call, and a steady-state train step
under ``torch.cuda.set_sync_debug_mode("error")``.

Each check's line is printed (and flushed) as soon as it finishes, and the JSON report is rewritten after every
check, so a run stopped by a timeout keeps everything before the check in flight. A check whose requirement is
absent (DALI) is reported ``skipped`` with the reason, never as passed. On CUDA every check runs in its own process
with its own time limit (a CUDA fault or a hang in one cannot poison or stall the others).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

SCHEMA = "fastccreid.doctor/2"  # /2: per-check "status" (ok / fail / skipped), "complete", "counts"
OPS = ("pairwise_distance", "batch_hard_triplet_loss", "rank_stats", "topk_ranking")


def _cuda_major(version: str | None) -> int:
    return int(version.split(".")[0]) if version else 0


def cpu_bf16_flags() -> dict[str, bool]:
    """The CPU's native bf16 features from /proc/cpuinfo (Linux) and torch's own probes."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cpu = getattr(torch, "cpu", None)
    return {
        "avx512_bf16": "avx512_bf16" in flags or bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()),
        "amx_bf16": "amx_bf16" in flags or bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()),
    }


def environment() -> dict[str, Any]:
    """Versions and CUDA majors of torch, cuDNN, Triton (its bundled ptxas) and DALI, and native bf16."""
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    try:
        import triton

        env["triton"] = triton.__version__
        try:
            from triton.backends.nvidia.compiler import get_ptxas_version

            text = str(get_ptxas_version())
            release = re.search(r"release (\d+\.\d+)", text)
            env["triton_ptxas_cuda"] = release.group(1) if release else text.strip().splitlines()[-1][:80]
        except Exception as e:  # noqa: BLE001 - a Triton without the NVIDIA backend: reported, not fatal
            env["triton_ptxas_cuda"] = f"unavailable ({type(e).__name__})"
    except ImportError:
        env["triton"] = None
    try:
        import nvidia.dali as dali

        from fastccreid.data.dali import dali_cuda_major

        env["dali"] = dali.__version__
        env["dali_cuda_major"] = dali_cuda_major(getattr(dali, "__cuda_version__", 0))
    except Exception as e:  # noqa: BLE001 - DALI missing or broken: reported as absent with the reason
        env["dali"] = None
        env["dali_error"] = f"{type(e).__name__}: {e}"
    majors = {"torch": _cuda_major(env["torch_cuda"])}
    if env.get("dali"):
        majors["dali"] = env["dali_cuda_major"]
    env["cuda_majors"] = majors
    known = {m for m in majors.values() if m}
    env["cuda_majors_match"] = len(known) <= 1
    bf16: dict[str, Any] = {"cpu": cpu_bf16_flags()}
    bf16["cpu_native"] = any(bf16["cpu"].values())
    if torch.cuda.is_available():
        cap = torch.cuda.get_device_capability()
        bf16["gpu_capability"] = f"{cap[0]}.{cap[1]}"
        bf16["gpu_native"] = cap >= (8, 0)
        env["gpu"] = torch.cuda.get_device_name()
    env["bf16"] = bf16
    return env


def backend_choices(devices: Sequence[str] = ("cpu", "cuda"),
                    dtypes: Sequence[torch.dtype] = (torch.float32, torch.bfloat16, torch.float64)) -> list[dict]:
    """What ``backend="auto"`` runs for each op, device and dtype, and why. Probed on fake tensors (no memory,
    no GPU needed): the same resolution function the ops call."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fastccreid.kernels import rank_place_cpu
    from fastccreid.kernels._backend import (
        RANK_STATS_CUDA_AUTO_WHY,
        kernel_backend,
        rank_stats_backend,
        triton_available,
    )

    placed_natively = rank_place_cpu.available()  # (float32 distances: what the placement kernel reads)
    rows = []
    for dev in devices:
        for dt in dtypes:
            with FakeTensorMode():
                t = torch.empty(4, 8, dtype=dt, device=dev)
            chosen = kernel_backend("auto", t)
            env = os.environ.get("FASTCCREID_BACKEND", "").strip()
            if env and env != "auto":
                why = f"FASTCCREID_BACKEND={env}"
            elif dev != "cuda":
                why = "CPU tensors take the vectorised torch path"
            elif not triton_available():
                why = "triton is not installed"
            elif dt == torch.float64:
                why = "fp64 stays on the torch path (the Triton kernels compute in fp32)"
            else:
                why = "CUDA tensors take the Triton kernels"
            for op in OPS:
                backend, note = chosen, why
                if op == "rank_stats" and backend == "triton" and rank_stats_backend("auto", t) == "torch":
                    backend, note = "torch", RANK_STATS_CUDA_AUTO_WHY
                elif backend == "triton" and op in ("rank_stats", "topk_ranking"):
                    note = why + " (metric sqeuclidean; other metrics take the torch path)"
                elif op == "rank_stats" and dev != "cuda" and not env and dt == torch.float32 and placed_natively:
                    note = why + ", non-matches placed by the compiled CPU kernel (kernels/csrc, same bits)"
                rows.append({"op": op, "device": dev, "dtype": str(dt).replace("torch.", ""), "backend": backend,
                             "why": note})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Checks: each returns (ok, detail)

CHECK_TIMEOUT_S = 100.0  # one isolated check (cold Triton compiles and autotuning included; gpu_check.sh: 150 s in all)
STATUSES = ("ok", "fail", "skipped")


class SkipCheck(Exception):
    """Raised by a check whose requirement is absent on this machine (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One fast path against its twin: ``fn()`` returns (ok, detail) or raises ``SkipCheck(reason)``.
    ``timeout_s`` bounds it when it runs in its own process."""

    name: str
    fn: Callable[[], tuple[bool, str]]
    timeout_s: float = CHECK_TIMEOUT_S
    own_process: bool = False  # under isolation: run in a fresh process (the CUDA checks)


def skipped_check(name: str, reason: str) -> Check:
    """A check that reports ``skipped`` with ``reason`` (what is absent and why), never ``ok``."""

    def fn() -> tuple[bool, str]:
        raise SkipCheck(reason)

    return Check(f"{name} (skipped)", fn)


@dataclasses.dataclass
class CheckResult:
    """What one check found: ``status`` "ok" / "fail" / "skipped"; ``ok`` True / False, None when skipped."""

    name: str
    ok: bool | None
    detail: str
    seconds: float
    status: str = "ok"

    @classmethod
    def make(cls, name: str, ok: bool | None, detail: str, seconds: float) -> CheckResult:
        status = "skipped" if ok is None else ("ok" if ok else "fail")
        return cls(name, ok, detail, round(seconds, 3), status)


def _close(name: str, a, b, atol: float, rtol: float = 0.0) -> tuple[bool, str]:
    a = np.asarray(a.detach().cpu().double() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
    b = np.asarray(b.detach().cpu().double() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    if a.shape != b.shape:
        return False, f"{name}: shape {a.shape} vs {b.shape}"
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    ok = bool(np.allclose(a, b, atol=atol, rtol=rtol)) and np.array_equal(np.isnan(a), np.isnan(b))
    return ok, f"{name}: max |diff| {err:.3g} (atol {atol:g})"


def _inputs(device, dtype=torch.float32, seed: int = 0):
    """x [24, 40], y [17, 40] features and P x K = 6 x 4 labels [24]."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 40, generator=gen).to(device=device, dtype=dtype)
    y = torch.randn(17, 40, generator=gen).to(device=device, dtype=dtype)
    labels = torch.arange(6).repeat_interleave(4).to(device)
    return x, y, labels


def _seed_normalize(f: torch.Tensor) -> torch.Tensor:
    return f / (f.norm(dim=1, keepdim=True) + 1e-12)


def twin_check(name: str, fast: Callable[[], Any], twin: Callable[[], Any], atol: float, rtol: float = 0.0) -> Check:
    """A check that ``fast()`` equals ``twin()`` within atol / rtol (tensors or arrays, same shape)."""
    return Check(name, lambda: _close(name, fast(), twin(), atol, rtol))


def cpu_checks() -> list[Check]:
    """The torch twins on CPU against the seed's algorithms in ``fastccreid.reference``."""
    from fastccreid import metrics
    from fastccreid.kernels import batch_hard_triplet_loss, pairwise_distance, topk_ranking
    from fastccreid.reference import evaluation as ref_eval
    from fastccreid.reference.losses import TripletLoss, euclidean_dist

    x, y, labels = _inputs("cpu")
    gen = torch.Generator().manual_seed(1)
    qf, gf = torch.randn(10, 32, generator=gen), torch.randn(50, 32, generator=gen)
    qp, gp = torch.randint(0, 5, (10,), generator=gen), torch.randint(0, 5, (50,), generator=gen)
    qc, gc = torch.randint(0, 3, (10,), generator=gen), torch.randint(0, 3, (50,), generator=gen)

    def eval_fast():
        r = metrics.evaluate(qf=qf, gf=gf, q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc, normalize=True,
                             max_rank=10, backend="torch")
        return np.concatenate([r.cmc[:10], [r.mAP, r.mINP]])

    def eval_ref():
        dm = ref_eval.get_distmat(qf, gf)
        cmc, m_ap, m_inp = ref_eval.evaluate(dm, qp.numpy(), gp.numpy(), qc.numpy(), gc.numpy(), max_rank=10)
        return np.concatenate([cmc[:10], [m_ap, m_inp]])

    def topk_ref():
        dm = ref_eval.get_distmat(qf, gf)
        return np.argsort(dm, axis=1, kind="stable")[:, :7].astype(np.float64)

    return [
        twin_check("cpu pairwise_distance euclidean (torch) vs reference euclidean_dist",
                   lambda: pairwise_distance(x, y, "euclidean", backend="torch"), lambda: euclidean_dist(x, y), 1e-4),
        twin_check("cpu batch_hard_triplet_loss (torch) vs reference TripletLoss",
                   lambda: batch_hard_triplet_loss(x, labels, 0.3, backend="torch"),
                   lambda: TripletLoss(0.3)(x, labels), 1e-5),
        twin_check("cpu evaluate market (torch rank_stats) vs reference evaluate", eval_fast, eval_ref, 1e-6),
        twin_check("cpu topk_ranking (torch) vs reference argsort",
                   lambda: topk_ranking(_seed_normalize(qf), _seed_normalize(gf), 7, backend="torch")[1].double(),
                   topk_ref, 0.0),
        native_rerank_check(),
    ]


def native_rerank_check() -> Check:
    """The compiled CPU kernels (re-ranking scan and Jaccard rows, rank placement) against the torch path, bit for
    bit; skipped, saying so, where they are not built (re-ranking then takes the torch path, about 2x slower)."""
    from fastccreid.kernels import rerank_cpu

    name = "cpu re-ranking kernels (native) vs torch path"
    if not rerank_cpu.available():
        return skipped_check(name, "the compiled CPU kernels are not built (this checkout was not pip-installed, "
                                   "the install found no C compiler, or FASTCCREID_NO_NATIVE=1 hides them): "
                                   "re-ranking and the rank placement take the torch path")

    def fn() -> tuple[bool, str]:
        from fastccreid.metrics import evaluate
        from fastccreid.rerank import build_reranker

        gen = torch.Generator().manual_seed(36)
        q, g = (torch.randint(-3, 4, (m, 12), generator=gen).float() for m in (30, 200))
        lab = dict(q_pids=torch.randint(0, 8, (30,), generator=gen), g_pids=torch.randint(0, 8, (200,), generator=gen),
                   q_camids=torch.zeros(30, dtype=torch.int64), g_camids=torch.ones(200, dtype=torch.int64))
        a, b = build_reranker(q, g, backend="torch"), build_reranker(q, g, backend="native")
        same = torch.equal(torch.cat([c for *_, c in a.chunks()]), torch.cat([c for *_, c in b.chunks()]))
        ea = evaluate(qf=q, gf=g, normalize=False, rerank=True, backend="torch", **lab)  # torch ops throughout
        eb = evaluate(qf=q, gf=g, normalize=False, rerank=True, **lab)
        ok = same and ea.mAP == eb.mAP and bool(np.array_equal(ea.cmc, eb.cmc))
        return ok, (f"re-ranked chunks {'identical' if same else 'DIFFER'}, mAP {eb.mAP:.6f} vs torch "
                    f"{ea.mAP:.6f}")

    return Check(name, fn)


# The Triton kernels against the torch path on one device: run here on CUDA, or in a TRITON_INTERPRET=1
# subprocess on CPU tensors. Prints one JSON line per check.
_TRITON_SCRIPT = r"""
import json, sys, torch
from fastccreid.doctor import triton_vs_torch
for r in triton_vs_torch(sys.argv[1]):
    print(json.dumps(r), flush=True)
"""


TRITON_GROUPS = ("pairwise_distance", "batch_hard_triplet_loss", "rank_stats", "topk_ranking")


def triton_vs_torch(device: str, groups: Sequence[str] = TRITON_GROUPS) -> list[dict]:
    """Each Triton op of ``groups`` against its torch twin on ``device`` (CUDA, or CPU under TRITON_INTERPRET=1).
    rank_stats: both fp32 paths against the fp64 torch path (a GEMM may sum K in another order than the fused
    kernel, so the two fp32 paths may differ from each other by rounding, not from the truth by more)."""
    from fastccreid.kernels import batch_hard_triplet_loss, pairwise_distance, rank_stats, topk_ranking

    unknown = set(groups) - set(TRITON_GROUPS)
    if unknown:
        raise ValueError(f"triton_vs_torch: unknown groups {sorted(unknown)}; valid: {list(TRITON_GROUPS)}")
    out = []
    dtypes = (torch.float32, torch.bfloat16) if device != "cpu" else (torch.float32,)
    for dt in dtypes:
        x, y, labels = _inputs(device, dt)
        tol = 1e-4 if dt == torch.float32 else 2e-2
        if "pairwise_distance" in groups:
            for metric in ("sqeuclidean", "euclidean", "cosine"):
                ok, detail = _close(f"pairwise {metric} {dt}", pairwise_distance(x, y, metric, backend="triton"),
                                    pairwise_distance(x, y, metric, backend="torch"), tol, tol)
                out.append({"name": f"triton pairwise_distance {metric} {dt} ({device})", "ok": ok,
                            "detail": detail})
        if "batch_hard_triplet_loss" in groups:
            ok, detail = _close("triplet", batch_hard_triplet_loss(x, labels, 0.3, backend="triton"),
                                batch_hard_triplet_loss(x, labels, 0.3, backend="torch"), tol, tol)
            out.append({"name": f"triton batch_hard_triplet_loss {dt} ({device})", "ok": ok, "detail": detail})
    gen = torch.Generator().manual_seed(2)
    qf, gf = torch.randn(10, 32, generator=gen).to(device), torch.randn(70, 32, generator=gen).to(device)
    qp, gp = torch.randint(0, 5, (10,), generator=gen).to(device), torch.randint(0, 5, (70,), generator=gen).to(device)
    qc, gc = torch.randint(0, 3, (10,), generator=gen).to(device), torch.randint(0, 3, (70,), generator=gen).to(device)
    lab = dict(q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    if "rank_stats" in groups:
        exact = rank_stats(qf.double(), gf.double(), "sqeuclidean", junk="market", backend="torch", **lab)
        parts, ok = [], True
        for backend in ("triton", "torch"):
            r = rank_stats(qf, gf, "sqeuclidean", junk="market", backend=backend, **lab)
            same_rank = bool(torch.equal(r.first_rank, exact.first_rank))
            err = float((r.ap.double() - exact.ap.double()).abs().max())
            ok = ok and same_rank and err <= 1e-6
            parts.append(f"{backend}: first_rank equal to fp64 {same_rank}, max |AP - fp64 AP| {err:.3g}")
        out.append({"name": f"triton rank_stats ({device})", "ok": ok, "detail": "; ".join(parts)})
    if "topk_ranking" in groups:
        for k in (5, 200):
            va, ia = topk_ranking(qf, gf, k, junk="market", backend="triton", **lab)
            vb, ib = topk_ranking(qf, gf, k, junk="market", backend="torch", **lab)
            ok = bool(torch.equal(ia, ib)) and bool(torch.allclose(va, vb, atol=1e-4, equal_nan=True))
            out.append({"name": f"triton topk_ranking k={k} ({device})", "ok": ok,
                        "detail": f"indices equal {bool(torch.equal(ia, ib))}"})
    return out


def interpreter_check(timeout: float = 600.0) -> Check:
    """The Triton kernels under TRITON_INTERPRET=1 in a fresh process (the variable must be set before triton is
    first imported) against the torch path."""

    def run() -> tuple[bool, str]:
        env = dict(os.environ, TRITON_INTERPRET="1")
        env.pop("FASTCCREID_BACKEND", None)
        p = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT, "cpu"], env=env, capture_output=True, text=True,
                           timeout=timeout)
        rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
        if p.returncode != 0 or not rows:
            return False, f"interpreter run failed (exit {p.returncode}): {p.stderr[-800:]}"
        bad = [r for r in rows if not r["ok"]]
        return not bad, "; ".join(r["detail"] for r in (bad or rows))

    return Check("triton kernels under TRITON_INTERPRET=1 vs torch (CPU)", run)


# ---------------------------------------------------------------------------------------------------------------
# CUDA-only checks (written to the documented APIs; they need a GPU to run)

def _tiny_model(device) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 32)).to(device)


def _train_steps(device, amp: str, steps: int = 3) -> tuple[bool, str]:
    """A few train steps (triplet + CE on a P x K batch) under ``amp`` bf16 / fp16 (+ GradScaler): finite losses."""
    from fastccreid.engine.amp import resolve_amp
    from fastccreid.kernels import batch_hard_triplet_loss

    cfg = resolve_amp(amp, device)
    model = _tiny_model(device)
    head = torch.nn.Linear(32, 6).to(device)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01)
    scaler = cfg.grad_scaler()  # torch.amp.GradScaler: scale(loss).backward(), step(opt), update()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 16, 8, generator=gen).to(device)
    y = torch.arange(6).repeat_interleave(4).to(device)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        with cfg.autocast():
            f = model(x)
            logits = head(f)
        loss = torch.nn.functional.cross_entropy(logits.float(), y) + batch_hard_triplet_loss(f.float(), y, 0.3)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach())
    vals = [float(v) for v in torch.stack(losses).cpu()]
    return all(math.isfinite(v) for v in vals), f"{cfg.name} losses {[round(v, 4) for v in vals]}"


def _cssc_small(device) -> torch.nn.Module:
    from fastccreid.models import CSSC

    torch.manual_seed(0)
    return CSSC(6, last_stride=1, pretrained=None).to(device).to(memory_format=torch.channels_last)


def _aot_eager() -> Callable:
    """torch.compile's "aot_eager" backend: dynamo + AOTAutograd (functionalization, the CUDA ops' Triton
    decomposition, the joint graph) without Inductor's code generation, so the recompile check costs seconds."""
    return torch._dynamo.lookup_backend("aot_eager")


def no_recompile_check(device, model: torch.nn.Module | None = None, *, batch: int = 8, eval_batch: int = 6,
                       last: int = 3, size: tuple[int, int] = (128, 64), pad_last: bool = True,
                       compiler: Callable | None = None) -> tuple[bool, str]:
    """The trainer's compiled nets through a train / eval cycle: ``torch.compile(model, dynamic=False)`` twice (the
    train net and the eval net, as ``Trainer``), two train steps, the switch to eval mode under ``no_grad`` with a
    full eval batch [eval_batch, 3, H, W] and the last partial batch of ``last`` rows zero-padded to eval_batch (as
    ``extract_features`` with ``static_batch``), then train and eval again. Graphs may be compiled on the first call
    of each mode, never after. A custom backend counts the graphs dynamo hands over (``backend(gm, example_inputs)
    -> callable``, torch.compile's documented interface) and runs them through ``compiler`` (default: inductor on
    CUDA; the FX graph's own forward on CPU). Recompiles are dynamo's (guards), whatever the backend.
    ``pad_last=False`` feeds the partial batch unpadded (the failure this check exists to catch)."""
    from fastccreid.engine.loss import cssc_loss

    device = torch.device(device)
    if compiler is None:
        if device.type == "cuda":
            from torch._inductor.compile_fx import compile_fx as compiler
        else:
            def compiler(gm, example_inputs):
                return gm.forward
    calls: list[int] = []

    def counting(gm, example_inputs):
        calls.append(1)
        return compiler(gm, example_inputs)

    model = _cssc_small(device) if model is None else model
    train_net = torch.compile(model, dynamic=False, backend=counting)
    eval_net = torch.compile(model, dynamic=False, backend=counting)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    h, w = size
    x = torch.randn(batch, 3, h, w, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    y = (torch.arange(batch) // 4).to(device)
    xe = torch.randn(eval_batch, 3, h, w, generator=gen).to(device).contiguous(memory_format=torch.channels_last)
    tail = xe[:last]
    if pad_last:
        tail = torch.cat([tail, tail.new_zeros((eval_batch - last, 3, h, w))]).contiguous(
            memory_format=torch.channels_last)
    counts: list[tuple[str, int]] = []

    def train_step(tag: str) -> None:
        model.train()
        before = len(calls)
        feats, logits = train_net(x)
        loss = cssc_loss(feats, logits, y, use_triplet=True, margin=0.3).total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        counts.append((tag, len(calls) - before))

    def eval_pass(tag: str) -> None:
        model.eval()
        with torch.no_grad():
            for what, batch_in in (("", xe), (" last batch", tail)):
                before = len(calls)
                eval_net(batch_in)
                counts.append((tag + what, len(calls) - before))
        model.train()

    train_step("train 1")
    train_step("train 2")
    eval_pass("eval 1")
    train_step("train 3")
    eval_pass("eval 2")
    first = {"train 1", "eval 1"}
    late = sum(n for tag, n in counts if tag not in first)
    ok = late == 0 and all(n >= 1 for tag, n in counts if tag in first)
    return ok, "graphs compiled per call: " + ", ".join(f"{tag} {n}" for tag, n in counts)


def no_sync_check(device, *, batch: int = 8, size: tuple[int, int] = (128, 64), amp: str = "auto"
                  ) -> tuple[bool, str]:
    """The trainer's step as ``bench train`` times it (CSSC, autocast, ``cssc_loss`` with the fused triplet term,
    fused Adam, GradScaler) at steady state (after two warm-up steps: autotuning and allocator warm-up may sync)
    under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing CUDA call."""
    from fastccreid.bench.train import make_fast_step

    device = torch.device(device)
    if device.type != "cuda":
        raise SkipCheck("set_sync_debug_mode needs a CUDA device")
    step, desc = make_fast_step(device, amp_mode=amp, compile_model=False)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *size, generator=gen).to(device)
    y = (torch.arange(batch) // 4).to(device)
    step(x, y)
    step(x, y)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step(x, y)
    except RuntimeError as e:
        return False, f"host sync in a steady-state step ({desc}): {e}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return bool(torch.isfinite(loss).item()), f"no synchronizing call in a steady-state step ({desc})"


def _dali_decode(device, decoder: str = "mixed") -> tuple[bool, str]:
    """DALI's mixed decode (nvJPEG on the GPU) against the CPU decode of the same JPEG (PIL / libjpeg-turbo):
    different IDCTs, so equal within a few grey levels. Also flipped (``fn.flip``) and shifted (``fn.crop``)."""
    import io

    from nvidia.dali import fn, pipeline_def, types
    from PIL import Image

    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (8, 4, 3)), np.ones((16, 16, 1))).astype(np.uint8)  # 128 x 64 blocks
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, format="JPEG", quality=95)
    data = np.frombuffer(buf.getvalue(), dtype=np.uint8)
    cpu = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).astype(np.int16)

    gpu = decoder == "mixed"

    @pipeline_def(batch_size=1, num_threads=1, device_id=(device.index or 0) if gpu else None)
    def pipe():
        enc = fn.external_source(source=lambda: [data], batch=True, dtype=types.UINT8)
        img = fn.decoders.image(enc, device=decoder, output_type=types.RGB)
        return img, fn.flip(img, horizontal=1), fn.crop(img, crop=(96, 48), crop_pos_x=0.0, crop_pos_y=0.0)

    p = pipe()
    p.build()
    img, flipped, cropped = ((o.as_cpu() if gpu else o).at(0).astype(np.int16) for o in p.run())
    diffs = {"decode": np.abs(img - cpu), "flip": np.abs(flipped - cpu[:, ::-1]),
             "crop": np.abs(cropped - cpu[:96, :48])}
    worst = {k: float(v.mean()) for k, v in diffs.items()}
    ok = all(v.shape == d.shape for v, d in ((img, cpu),)) and all(m <= 3.0 for m in worst.values())
    return ok, "mean |diff| grey levels " + ", ".join(f"{k} {v:.2f}" for k, v in worst.items())


def _dali_check(device: torch.device) -> Check:
    """DALI's decode against PIL's on ``device`` (mixed = nvJPEG on CUDA, DALI's CPU decoder on a CPU), or a
    skipped check naming why DALI is not usable here."""
    from fastccreid.data.dali import dali_status

    decoder = "mixed" if device.type == "cuda" else "cpu"
    name = f"dali {decoder} decode vs CPU decode"
    usable, why = dali_status(device)
    if not usable:
        return skipped_check(name, why)
    return Check(name, lambda: _dali_decode(device, decoder=decoder))


def rerank_device_check(device: torch.device) -> tuple[bool, str]:
    """Streamed k-reciprocal re-ranking on ``device`` against the CPU (issue 27): small-integer features (every
    distance exact, so the neighbour lists must be identical), re-ranked distances within 2e-3 (the weights
    exp(-d) / sum come from torch on a GPU, numpy on the CPU: a float16 entry of V can move by one ulp) and the
    streamed evaluation's mAP within 1e-3."""
    from fastccreid.metrics import evaluate
    from fastccreid.rerank import build_reranker, re_ranking

    gen = torch.Generator().manual_seed(27)
    q, g = (torch.randint(-3, 4, (m, 16), generator=gen).float() for m in (40, 260))
    qp, gp = torch.randint(0, 12, (40,), generator=gen), torch.randint(0, 12, (260,), generator=gen)
    lab = dict(q_pids=qp, g_pids=gp, q_camids=torch.zeros(40, dtype=torch.int64),
               g_camids=torch.ones(260, dtype=torch.int64))
    a, b = build_reranker(q, g), build_reranker(q.to(device), g.to(device))
    same_v = torch.equal(a.v_col, b.v_col.cpu()) and torch.equal(a.v_ptr, b.v_ptr.cpu())
    ra, rb = re_ranking(q, g), re_ranking(q.to(device), g.to(device))
    err = float(np.max(np.abs(ra - rb)))
    ea = evaluate(qf=q, gf=g, normalize=False, rerank=True, **lab)
    eb = evaluate(qf=q.to(device), gf=g.to(device), normalize=False, rerank=True,
                  **{k: v.to(device) for k, v in lab.items()})
    ok = same_v and err <= 2e-3 and abs(ea.mAP - eb.mAP) <= 1e-3
    return ok, (f"re-ranking {device} vs cpu: V's support {'identical' if same_v else 'DIFFERS'}, max |diff| "
                f"{err:.3g} (atol 2e-3), mAP {eb.mAP:.6f} vs {ea.mAP:.6f}")


def cuda_checks(device: torch.device) -> list[Check]:
    """Checks that need a GPU: compiled Triton vs torch (one check per op, each its own cold compiles), DALI mixed
    decode, AMP train steps, the compiled train / eval cycle, syncs in the real step."""
    checks = []
    from fastccreid.kernels._backend import triton_available

    if triton_available():
        for group in TRITON_GROUPS:
            def compiled(group=group) -> tuple[bool, str]:
                rows = triton_vs_torch(str(device), groups=(group,))
                bad = [r for r in rows if not r["ok"]]
                return not bad, "; ".join(r["detail"] for r in (bad or rows))

            checks.append(Check(f"compiled triton {group} vs torch ({device})", compiled))
    else:
        checks.append(skipped_check(f"compiled triton kernels vs torch ({device})", "triton is not installed"))
    checks.append(_dali_check(device))
    checks.append(Check(f"streamed re-ranking ({device}) vs cpu", lambda: rerank_device_check(device)))
    checks.append(Check("bf16 train step", lambda: _train_steps(device, "bf16")))
    checks.append(Check("fp16 + GradScaler train step", lambda: _train_steps(device, "fp16")))
    checks.append(Check("compiled CSSC train / eval cycle does not recompile (padded last eval batch)",
                        lambda: no_recompile_check(device, compiler=_aot_eager())))
    checks.append(Check("steady-state CSSC fused-Adam cssc_loss step under set_sync_debug_mode('error')",
                        lambda: no_sync_check(device)))
    return [dataclasses.replace(c, own_process=not c.name.endswith("(skipped)")) for c in checks]


def default_checks() -> list[Check]:
    """Every check this machine can run: the CPU twins, then the compiled Triton kernels and the other CUDA
    checks on a GPU, else DALI's CPU decode and the Triton kernels under the interpreter."""
    from fastccreid.kernels._backend import triton_available

    checks = cpu_checks()
    if torch.cuda.is_available():  # the compiled kernels are checked there; the interpreter would add a minute
        checks += cuda_checks(torch.device("cuda", 0))
    else:
        checks.append(_dali_check(torch.device("cpu")))
        if triton_available():
            checks.append(interpreter_check())
        else:
            checks.append(skipped_check("triton kernels under TRITON_INTERPRET=1 vs torch (CPU)",
                                        "triton is not installed"))
    return checks


def run_check(check: Check) -> CheckResult:
    """Run one check in this process: an exception is a failed check with its message; ``SkipCheck`` a skip."""
    t = time.perf_counter()
    try:
        ok, detail = check.fn()
        ok = bool(ok)
    except SkipCheck as e:
        ok, detail = None, str(e)
    except Exception as e:  # noqa: BLE001 - the doctor reports every failure and goes on
        ok, detail = False, f"{type(e).__name__}: {e}"
    return CheckResult.make(check.name, ok, detail, time.perf_counter() - t)


# One default check, by name, in a fresh process: prints its result as one JSON line.
_ONE_CHECK_SCRIPT = r"""
import dataclasses, json, sys
from fastccreid.doctor import default_checks, run_check
found = [c for c in default_checks() if c.name == sys.argv[1]]
if not found:
    raise SystemExit(f"no default check named {sys.argv[1]!r}")
print("DOCTOR-RESULT " + json.dumps(dataclasses.asdict(run_check(found[0]))), flush=True)
"""


def run_isolated(check: Check) -> CheckResult:
    """Run the default check named ``check.name`` in its own process, bounded by ``check.timeout_s``: a CUDA fault,
    a crash or a hang fails that check alone (its output's tail is the detail)."""
    t = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        p = subprocess.run([sys.executable, "-c", _ONE_CHECK_SCRIPT, check.name], env=env, capture_output=True,
                           text=True, timeout=check.timeout_s)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-400:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return CheckResult.make(check.name, False, f"timed out after {check.timeout_s:.0f} s (own process) {tail}",
                                time.perf_counter() - t)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("DOCTOR-RESULT "):
            return CheckResult(**json.loads(line[len("DOCTOR-RESULT "):]))
    return CheckResult.make(check.name, False, f"its process exited {p.returncode} without a result: "
                                               f"{(p.stderr or p.stdout)[-800:]}", time.perf_counter() - t)


def run_checks(checks: Sequence[Check], isolate: bool = False,
               on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Run each check (those marked ``own_process`` in a fresh process when ``isolate``: default checks only, found
    again there by name);
    ``on_result`` sees each result as soon as it is known. A failing check never stops the others."""
    out = []
    for c in checks:
        r = run_isolated(c) if isolate and c.own_process else run_check(c)
        out.append(r)
        if on_result is not None:
            on_result(r)
    return out


def _atomic_write(path: str, text: str) -> None:
    """Write next to ``path`` and rename over it: a reader never sees half a report."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _print_flush(line: str) -> None:
    print(line, flush=True)


class _Terminated(BaseException):
    """SIGTERM arrived (``timeout`` ran out): the report is closed with what is done."""


def summary_line(results: Sequence[CheckResult]) -> str:
    """The closing line: "all checks passed" only when every check ran and passed; skips are counted and named."""
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    if counts["fail"] or not results:
        return f"FAILED: {counts['fail']} of {len(results)} checks failed ({counts['skipped']} skipped)"
    if counts["skipped"]:
        names = "; ".join(r.name for r in results if r.status == "skipped")
        return f"no check failed: {counts['ok']} passed, {counts['skipped']} skipped (not run: {names})"
    return f"all checks passed ({counts['ok']})"


def run_doctor(json_path: str | None = None, checks: Sequence[Check] | None = None, out=_print_flush,
               isolate: bool | None = None) -> int:
    """Print the report line by line (and keep ``json_path`` up to date after every check); 0 when no check
    failed (skipped checks are named, not counted as passed), else 1. ``isolate``: each check in its own process
    (default: on CUDA, for the default checks). SIGTERM closes the report with the checks done so far (exit 1)."""
    env = environment()
    backends = backend_choices()
    out("== fastccreid doctor")
    for key in ("python", "torch", "torch_cuda", "cudnn", "triton", "triton_ptxas_cuda", "dali", "dali_error", "gpu"):
        if key in env:
            out(f"  {key:18s} {env[key]}")
    out(f"  CUDA majors        {env['cuda_majors']} -> {'match' if env['cuda_majors_match'] else 'MISMATCH'}")
    out(f"  native bf16        {env['bf16']}")
    out("== backend='auto'")
    for r in backends:
        out(f"  {r['op']:24s} {r['device']:4s} {r['dtype']:8s} -> {r['backend']:6s} {r['why']}")
    if isolate is None:
        isolate = checks is None and bool(env["cuda_available"])
    todo = default_checks() if checks is None else list(checks)
    out(f"== fast paths vs twins ({len(todo)} checks{', each in its own process' if isolate else ''})")
    results: list[CheckResult] = []
    interrupted: str | None = None

    def report(complete: bool) -> dict:
        counts = {s: sum(r.status == s for r in results) for s in STATUSES}
        return {"schema": SCHEMA, "ok": complete and bool(results) and not counts["fail"], "complete": complete,
                "interrupted": interrupted, "counts": counts, "environment": env, "backends": backends,
                "checks": [dataclasses.asdict(r) for r in results],
                "not_run": [c.name for c in todo[len(results):]]}

    def on_result(r: CheckResult) -> None:
        results.append(r)
        tag = {"ok": "ok", "fail": "FAIL", "skipped": "skipped"}[r.status]
        out(f"  [{tag}] {r.name} ({r.seconds:.1f}s): {r.detail}")
        if json_path:
            _atomic_write(json_path, json.dumps(report(False), indent=2, default=str))

    def on_term(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        raise _Terminated()

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: no handler, the partial JSON still stands
        pass
    try:
        run_checks(todo, isolate=isolate, on_result=on_result)
    except (_Terminated, KeyboardInterrupt) as e:
        interrupted = (f"{'SIGTERM' if isinstance(e, _Terminated) else 'SIGINT'} during "
                       f"{todo[len(results)].name!r}" if len(results) < len(todo) else "after the last check")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    rep = report(interrupted is None)
    line = summary_line(results)
    if interrupted:
        line = f"INTERRUPTED ({interrupted}): {line}; not run: {len(rep['not_run'])}"
    out(f"== {line}")
    if json_path:
        _atomic_write(json_path, json.dumps(rep, indent=2, default=str))
    return 0 if rep["ok"] else 1


def run_cli(args) -> int:
    return run_doctor(json_path=args.json_out or None)
