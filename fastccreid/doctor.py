"""``fastccreid doctor``: what this machine can run, and whether every fast path it would use agrees with its twin.

Prints the torch / CUDA / cuDNN / Triton / DALI versions (and whether their CUDA majors match), native bf16 support,
which backend ``backend="auto"`` picks for each op and why, then runs every available fast path against its torch
twin on small inputs. Exit status 1 when any check fails. On a CPU: the torch twins against ``fastccreid.reference``
and the Triton kernels under ``TRITON_INTERPRET=1`` (in a subprocess) against the torch path. On CUDA also: the
compiled Triton kernels against torch, DALI's mixed (nvJPEG) decode against the CPU decode, a bf16 and an fp16 +
GradScaler train step, a compiled step that does not recompile on its second call, and a steady-state train step
under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

SCHEMA = "fastccreid.doctor/1"
OPS = ("pairwise_distance", "batch_hard_triplet_loss", "rank_stats", "topk_ranking")


def dali_cuda_major(value: Any) -> int:
    """CUDA major of NVIDIA DALI's ``__cuda_version__``, read as DALI reads it; 0 when unknown.

    DALI writes ``int('12.1.105'.replace('.', ''))`` = 121105 (``nvidia/dali/__init__.py``) and reads the major
    back as ``int(str(__cuda_version__)[:2])`` (``nvidia/dali/backend.py``); CUDA >= 10 has two digits. A dotted
    string ('12.1.105', '12.0') gives the part before the first dot.
    """
    if value is None or isinstance(value, bool):
        return 0
    text = str(value).strip()
    if not text:
        return 0
    if "." in text:
        head = text.split(".", 1)[0]
        return int(head) if head.isdigit() else 0
    if not text.isdigit() or int(text) == 0:
        return 0
    return int(text[:2])


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

            env["triton_ptxas_cuda"] = get_ptxas_version()
        except Exception as e:  # noqa: BLE001 - a Triton without the NVIDIA backend: reported, not fatal
            env["triton_ptxas_cuda"] = f"unavailable ({type(e).__name__})"
    except ImportError:
        env["triton"] = None
    try:
        import nvidia.dali as dali

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

    from fastccreid.kernels._backend import (
        RANK_STATS_CUDA_AUTO_WHY,
        kernel_backend,
        rank_stats_backend,
        triton_available,
    )

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
                rows.append({"op": op, "device": dev, "dtype": str(dt).replace("torch.", ""), "backend": backend,
                             "why": note})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Checks: each returns (ok, detail)

@dataclasses.dataclass(frozen=True)
class Check:
    """One fast path against its twin: ``fn()`` returns (ok, detail)."""

    name: str
    fn: Callable[[], tuple[bool, str]]


@dataclasses.dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


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
    ]


# The Triton kernels against the torch path on one device: run here on CUDA, or in a TRITON_INTERPRET=1
# subprocess on CPU tensors. Prints one JSON line per check.
_TRITON_SCRIPT = r"""
import json, sys, torch
from fastccreid.doctor import triton_vs_torch
for r in triton_vs_torch(sys.argv[1]):
    print(json.dumps(r), flush=True)
"""


def triton_vs_torch(device: str) -> list[dict]:
    """Each Triton op against its torch twin on ``device`` (CUDA, or CPU under TRITON_INTERPRET=1)."""
    from fastccreid.kernels import batch_hard_triplet_loss, pairwise_distance, rank_stats, topk_ranking

    out = []
    dtypes = (torch.float32, torch.bfloat16) if device != "cpu" else (torch.float32,)
    for dt in dtypes:
        x, y, labels = _inputs(device, dt)
        tol = 1e-4 if dt == torch.float32 else 2e-2
        for metric in ("sqeuclidean", "euclidean", "cosine"):
            ok, detail = _close(f"pairwise {metric} {dt}", pairwise_distance(x, y, metric, backend="triton"),
                                pairwise_distance(x, y, metric, backend="torch"), tol, tol)
            out.append({"name": f"triton pairwise_distance {metric} {dt} ({device})", "ok": ok, "detail": detail})
        ok, detail = _close("triplet", batch_hard_triplet_loss(x, labels, 0.3, backend="triton"),
                            batch_hard_triplet_loss(x, labels, 0.3, backend="torch"), tol, tol)
        out.append({"name": f"triton batch_hard_triplet_loss {dt} ({device})", "ok": ok, "detail": detail})
    gen = torch.Generator().manual_seed(2)
    qf, gf = torch.randn(10, 32, generator=gen).to(device), torch.randn(70, 32, generator=gen).to(device)
    qp, gp = torch.randint(0, 5, (10,), generator=gen).to(device), torch.randint(0, 5, (70,), generator=gen).to(device)
    qc, gc = torch.randint(0, 3, (10,), generator=gen).to(device), torch.randint(0, 3, (70,), generator=gen).to(device)
    lab = dict(q_pids=qp, g_pids=gp, q_camids=qc, g_camids=gc)
    a = rank_stats(qf, gf, "sqeuclidean", junk="market", backend="triton", **lab)
    b = rank_stats(qf, gf, "sqeuclidean", junk="market", backend="torch", **lab)
    same = bool(torch.equal(a.first_rank, b.first_rank)) and bool(torch.allclose(a.ap, b.ap, atol=1e-9))
    out.append({"name": f"triton rank_stats ({device})", "ok": same,
                "detail": f"first_rank equal {bool(torch.equal(a.first_rank, b.first_rank))}, "
                          f"max |AP diff| {float((a.ap - b.ap).abs().max()):.3g}"})
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


def _no_recompile(device) -> tuple[bool, str]:
    """torch.compile of a train step: one graph on the first call, none added by the second (same shapes).
    A custom backend counts compilations and hands the graph to inductor (torch.compile's documented custom-backend
    interface: ``backend(gm, example_inputs) -> callable``)."""
    from torch._inductor.compile_fx import compile_fx

    from fastccreid.kernels import batch_hard_triplet_loss

    calls = []

    def counting(gm, example_inputs):
        calls.append(1)
        return compile_fx(gm, example_inputs)

    model = _tiny_model(device)
    y = torch.arange(6).repeat_interleave(4).to(device)

    @torch.compile(backend=counting)
    def step(x):
        return batch_hard_triplet_loss(model(x), y, 0.3, validate=False)

    x = torch.randn(24, 3, 16, 8, device=device)
    step(x).backward()
    first = len(calls)
    step(x + 1).backward()
    return first >= 1 and len(calls) == first, f"graphs compiled: {first} on call 1, {len(calls) - first} on call 2"


def _no_sync(device) -> tuple[bool, str]:
    """A steady-state train step (after one warm-up step: autotuning and allocator warm-up may sync) under
    ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing CUDA call."""
    from fastccreid.kernels import batch_hard_triplet_loss

    model = _tiny_model(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    y = torch.arange(6).repeat_interleave(4).to(device)
    x = torch.randn(24, 3, 16, 8, device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = batch_hard_triplet_loss(model(x), y, 0.3, validate=False)
        loss.backward()
        opt.step()
        return loss.detach()

    step()
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    except RuntimeError as e:
        return False, f"host sync in a steady-state step: {e}"
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return bool(torch.isfinite(loss).item()), "no synchronizing call in a steady-state step"


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


def cuda_checks(device: torch.device) -> list[Check]:
    """Checks that need a GPU: compiled Triton vs torch, DALI mixed decode, AMP train steps, compile, syncs."""
    checks = []
    from fastccreid.kernels._backend import triton_available

    if triton_available():
        def compiled() -> tuple[bool, str]:
            rows = triton_vs_torch(str(device))
            bad = [r for r in rows if not r["ok"]]
            return not bad, "; ".join(r["detail"] for r in (bad or rows))

        checks.append(Check(f"compiled triton kernels vs torch ({device})", compiled))
    from fastccreid.data.dali import dali_status

    usable, why = dali_status(device)
    if usable:
        checks.append(Check("dali mixed decode vs CPU decode", lambda: _dali_decode(device)))
    else:
        checks.append(Check(f"dali mixed decode (skipped: {why})", lambda: (True, why)))
    checks.append(Check("bf16 train step", lambda: _train_steps(device, "bf16")))
    checks.append(Check("fp16 + GradScaler train step", lambda: _train_steps(device, "fp16")))
    checks.append(Check("compiled step does not recompile", lambda: _no_recompile(device)))
    checks.append(Check("steady-state step under set_sync_debug_mode('error')", lambda: _no_sync(device)))
    return checks


def default_checks() -> list[Check]:
    """Every check this machine can run: the CPU twins, then the compiled Triton kernels and the other CUDA
    checks on a GPU, else the Triton kernels under the interpreter."""
    from fastccreid.kernels._backend import triton_available

    checks = cpu_checks()
    if torch.cuda.is_available():  # the compiled kernels are checked there; the interpreter would add a minute
        checks += cuda_checks(torch.device("cuda", torch.cuda.current_device()))
    elif triton_available():
        checks.append(interpreter_check())
    return checks


def run_checks(checks: Sequence[Check]) -> list[CheckResult]:
    """Run each check; an exception is a failed check with its message (the others still run)."""
    out = []
    for c in checks:
        t = time.perf_counter()
        try:
            ok, detail = c.fn()
        except Exception as e:  # noqa: BLE001 - the doctor reports every failure and goes on
            ok, detail = False, f"{type(e).__name__}: {e}"
        out.append(CheckResult(c.name, bool(ok), detail, round(time.perf_counter() - t, 3)))
    return out


def _atomic_write(path: str, text: str) -> None:
    """Write next to ``path`` and rename over it: a reader never sees half a report."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def run_doctor(json_path: str | None = None, checks: Sequence[Check] | None = None, out=print) -> int:
    """Print the report (and write it as JSON to ``json_path``); 0 when every check passed, else 1."""
    env = environment()
    backends = backend_choices()
    out("== fastccreid doctor")
    for key in ("python", "torch", "torch_cuda", "cudnn", "triton", "triton_ptxas_cuda", "dali", "gpu"):
        if key in env:
            out(f"  {key:18s} {env[key]}")
    out(f"  CUDA majors        {env['cuda_majors']} -> {'match' if env['cuda_majors_match'] else 'MISMATCH'}")
    out(f"  native bf16        {env['bf16']}")
    out("== backend='auto'")
    for r in backends:
        out(f"  {r['op']:24s} {r['device']:4s} {r['dtype']:8s} -> {r['backend']:6s} {r['why']}")
    out("== fast paths vs twins")
    results = run_checks(default_checks() if checks is None else checks)
    for r in results:
        out(f"  [{'ok' if r.ok else 'FAIL'}] {r.name} ({r.seconds:.1f}s): {r.detail}")
    ok = all(r.ok for r in results) and bool(results)
    out(f"== {'all checks passed' if ok else 'FAILED'}")
    if json_path:
        report = {"schema": SCHEMA, "ok": ok, "environment": env, "backends": backends,
                  "checks": [dataclasses.asdict(r) for r in results]}
        _atomic_write(json_path, json.dumps(report, indent=2, default=str))
    return 0 if ok else 1


def run_cli(args) -> int:
    return run_doctor(json_path=args.json_out or None)

