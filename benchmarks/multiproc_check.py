"""The multi-process checks of issue 25 on one device, for ``benchmarks/gpu_check.sh`` (two processes sharing one GPU
over gloo: NCCL refuses two ranks on one device, and several GPUs are not available there).

1. ``compiled-global-bn``: 2 gloo ranks, a conv/BN/ReLU/conv/BN stack with ``GlobalBatchNorm``, ``torch.compile``
   (inductor, ``fullgraph=True``: a graph break at a BN layer fails) vs eager on the same rows: forward, parameter
   gradients and running statistics (fp32, 1e-4 relative) and the step time of each.
2. ``cli-nproc-2-vs-1``: ``fastccreid train --nproc 2`` (on CUDA ``--gpu_devices 0 --dist_backend gloo``: both ranks on
   GPU 0) vs ``--nproc 1``, one fp32 step of batch 8 on a synthetic LTCC at 128x32, through the elastic launcher:
   every BN running statistic in the checkpoint within 1e-4 relative (to its tensor's largest entry) and the printed
   losses equal to 4 significant digits (what tests/test_elastic.py checks on a CPU), plus each run's wall time.

Usage: python benchmarks/multiproc_check.py --json OUT.json [--device auto|cuda|cpu] [--timeout S]
Writes OUT.json after each check (a timeout loses only the check in flight); exit 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch

H, W = 128, 32
LOSSES = re.compile(r"Ep1 Id:([\d.]+) Tri:([\d.]+)")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


# ------------------------------------------------------------------ 1. compiled GlobalBatchNorm, 2 ranks, one device


def _stack_worker(rank: int, world: int, store: str, device: str, out: str) -> None:
    from fastccreid.bench.common import time_median
    from fastccreid.engine.distributed import INIT_METHOD_ENV, cleanup, setup
    from fastccreid.engine.global_bn import convert_batchnorm

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      **{INIT_METHOD_ENV: "file://" + os.path.join(store, "store")})
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // (2 * world)))
    ctx = setup(use_cpu=device == "cpu", dist_backend="gloo")
    try:
        def make() -> torch.nn.Module:
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                      torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1),
                                      torch.nn.BatchNorm2d(32))
            return convert_batchnorm(net.to(ctx.device), "global", ctx)

        g = torch.Generator().manual_seed(0)
        x = (torch.randn(4 * world, 3, 32, 16, generator=g)[4 * rank:4 * rank + 4] * (1 + rank)).to(ctx.device)
        eager, comp = make(), make()
        cnet = torch.compile(comp, fullgraph=True, dynamic=False)
        got, times = {}, {}
        sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)
        for name, net, params in (("eager", eager, eager), ("compiled", cnet, comp)):
            def step(net=net, params=params) -> None:
                params.zero_grad(set_to_none=True)
                y = net(x)
                y.square().mean().backward()

            t0 = time.perf_counter()
            y = net(x)
            (y.square() * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum().backward()
            first = time.perf_counter() - t0
            got[name] = {"y": y.detach().cpu(), "grads": [p.grad.detach().cpu() for p in params.parameters()],
                         "state": {k: v.detach().cpu().clone() for k, v in params.state_dict().items()},
                         "types": sorted({type(m).__name__ for m in params.modules()})}
            times[name] = {"first_call_s": round(first, 3), "step_s": time_median(lambda s=step: (s(), sync()),
                                                                                   repeats=10, warmup=2)}
        if rank == 0:
            worst = {"y": _rel(got["compiled"]["y"], got["eager"]["y"]),
                     "grads": max(_rel(a, b) for a, b in zip(got["compiled"]["grads"], got["eager"]["grads"],
                                                                  strict=True)),
                     "state": max(_rel(got["compiled"]["state"][k], v) for k, v in got["eager"]["state"].items()
                                  if v.is_floating_point())}
            ok = "GlobalBatchNorm" in got["compiled"]["types"] and max(worst.values()) <= 1e-4
            with open(out, "w") as f:
                json.dump({"ok": ok, "device": str(ctx.device), "backend": ctx.backend, "worst_rel": worst,
                           "times": times, "types": got["compiled"]["types"]}, f)
    finally:
        cleanup()


def check_compiled_stack(device: str) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        mp.start_processes(_stack_worker, args=(2, tmp, device, out), nprocs=2, join=True, start_method="spawn")
        with open(out) as f:
            return json.load(f)


# ------------------------------------------------------------------ 2. the CLI, --nproc 2 vs --nproc 1, one step


def _train_argv(root: str, save: str, nproc: int, device: str) -> list[str]:
    argv = [sys.executable, "-m", "fastccreid", "train", "--dataset", "ltcc", "--dataset_root", root,
            "--dataset_filename", "", "--height", str(H), "--width", str(W), "--train_batch", "8",
            "--num_instances", "4", "--test_batch", "16", "-j", "0", "--pretrained", "none", "--no_progress",
            "--loader", "torch", "--save_dir", save, "--max_epoch", "1", "--max_steps_per_epoch", "1",
            "--tri_start_epoch", "0", "--eval_epoch", "-1", "--seed", "1", "--amp", "off", "--no-compile",
            "--save_checkpoint", "--print_train_info_epoch_freq", "1", "--nproc", str(nproc)]
    return argv + (["--use_cpu"] if device == "cpu" else ["--gpu_devices", "0", "--dist_backend", "gloo"])


def check_cli(device: str, timeout: float) -> dict:
    from fastccreid.data.synth import make_synthetic
    from fastccreid.engine.checkpoint import LAST_NAME, load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic("ltcc", os.path.join(tmp, "ltcc"), ids=8, seed=0, clothes=2, cams=2, images_per=2,
                              size=(H, W))
        runs, result = {}, {"done_after_s": {}}
        procs = {}
        t0 = time.perf_counter()
        for n in (1, 2):  # both at once: the device and the cores are shared, the numbers are not timed
            save = os.path.join(tmp, f"n{n}")
            procs[n] = subprocess.Popen(_train_argv(root, save, n, device), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        for n, p in procs.items():
            try:
                out, _ = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            except subprocess.TimeoutExpired:
                for q in procs.values():
                    q.kill()
                raise
            result["done_after_s"][f"nproc_{n}"] = round(time.perf_counter() - t0, 1)
            if p.returncode != 0:
                return {"ok": False, "error": f"--nproc {n} exited {p.returncode}", "output_tail": out[-3000:]}
            save = os.path.join(tmp, f"n{n}")
            log = open(os.path.join(save, "log_train.txt")).read()
            m = LOSSES.search(log)
            runs[n] = (load_checkpoint(os.path.join(save, LAST_NAME))["model_state_dict"],
                       tuple(float(v) for v in m.groups()) if m else None, "(2 process(es))" in log)
        (w1, l1, _), (w2, l2, two) = runs[1], runs[2]
        stats = [k for k in w1 if k.endswith(("running_mean", "running_var"))]
        # relative to each tensor's largest entry, with the test's 1e-7 absolute floor (a statistic near 0)
        worst = max(float((w2[k] - w1[k]).abs().max()) / (float(w1[k].abs().max()) + 1e-3) for k in stats)
        losses_ok = l1 is not None and l2 is not None and all(
            abs(a - b) <= 5e-4 * abs(b) for a, b in zip(l1, l2, strict=True)) and l1[1] > 0
        result.update(ok=bool(two and losses_ok and worst <= 1e-4 and len(stats) > 100), two_processes_logged=two,
                      losses={"nproc_1": l1, "nproc_2": l2}, bn_statistics=len(stats), worst_bn_stat_rel=worst)
        return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", required=True, help="where the results go (rewritten after each check)")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds for the two CLI runs together")
    args = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    report = {"device": device, "checks": {}}
    checks = (("compiled-global-bn", lambda: check_compiled_stack(device)),
              ("cli-nproc-2-vs-1", lambda: check_cli(device, args.timeout)))
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as exc:  # noqa: BLE001  (recorded as a failed check, the next one still runs)
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000],
                   "traceback": traceback.format_exc()[-3000:]}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        report["checks"][name] = res
        print(f"multiproc_check: {name}: {'ok' if res['ok'] else 'FAIL'} ({res['seconds']} s) "
              + json.dumps({k: v for k, v in res.items() if k not in ("ok", "seconds", "traceback", "output_tail")}),
              flush=True)
        if not res["ok"]:
            print(res.get("output_tail") or res.get("traceback", ""), flush=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if all(c["ok"] for c in report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
