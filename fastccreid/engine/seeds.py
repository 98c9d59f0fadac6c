"""``fastccreid train ... --seeds 1,2,3``: one training per seed, then the mean ± std of every reported number.

Cloth-changing ReID numbers move by a point or two from seed to seed (the authors of CAL / FIRe / CSSC answer
"cannot reproduce" issues with "average several runs"); this makes the average one command. Each seed trains with the
same flags in ``SAVE_DIR/seed-N/`` (its own ``run.json``, logs, checkpoints): one after another, or, with several
``--gpu_devices`` on CUDA (and no ``--nproc`` > 1), one run per GPU at a time in parallel (each a single process;
its console output in ``seed-N/console.txt``). Then R-1 / mAP / mINP of every setting, at the last evaluated epoch
and at the best one (the seed's rule), are read back from the runs' records and printed as mean ± sample standard
deviation (n - 1) with each run's value, and written to ``SAVE_DIR/seeds.json`` (atomically).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fastccreid.engine.config import TrainConfig
from fastccreid.engine.runrecord import RUN_NAME, atomic_write_json, read_run

SEEDS_NAME = "seeds.json"
SEEDS_SCHEMA = "fastccreid.seeds/1"
METRICS = (("rank1", "R-1"), ("mAP", "mAP"), ("mINP", "mINP"))  # (record key, printed name)
WHICH = ("last", "best")
EXIT_INTERRUPTED, EXIT_USAGE = 130, 2


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]. Raises ValueError naming --seeds for anything but distinct integers."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, e.g. --seeds 1,2,3; got {text!r}") from None
    if not seeds:
        raise ValueError(f"--seeds must name at least one seed, e.g. --seeds 1,2,3; got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must not repeat a seed (each has its own folder seed-N); got {text!r}")
    return seeds


def seed_dir(save_dir: str, seed: int) -> str:
    """Where seed ``seed``'s run goes: ``SAVE_DIR/seed-N``."""
    return os.path.join(save_dir, f"seed-{seed}")


def parallel_devices(cfg: TrainConfig, cuda_available: bool) -> list[str]:
    """The GPUs to run seeds on in parallel (one run each), or [] for one run after another: several
    ``--gpu_devices`` on CUDA, one machine, and no ``--nproc`` > 1 (which asks for DDP runs over all of them)."""
    devices = [d.strip() for d in str(cfg.gpu_devices).split(",") if d.strip()]
    if cfg.use_cpu or not cuda_available or len(devices) < 2 or cfg.nproc > 1 or cfg.nnodes > 1:
        return []
    return devices


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with n - 1; None for one value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std: no values")
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5


def summarize(records: Mapping[Any, Mapping[str, Any]]) -> dict[str, Any]:
    """{setting: {"last" | "best": {metric: {"mean", "std", "values": {run: value}}}}} over ``records`` ({run
    label (the seed): run record}); values are fractions in [0, 1]; runs without results are left out."""
    out: dict[str, Any] = {}
    for run, rec in records.items():
        results = rec.get("results") or {}
        for which in WHICH:
            for setting, m in ((results.get(which) or {}).get("settings") or {}).items():
                for key, _ in METRICS:
                    if key in m:
                        slot = out.setdefault(setting, {}).setdefault(which, {}).setdefault(key, {"values": {}})
                        slot["values"][str(run)] = float(m[key])
    for per_which in out.values():
        for per_metric in per_which.values():
            for slot in per_metric.values():
                slot["mean"], slot["std"] = mean_std(list(slot["values"].values()))
    return out


def format_table(summary: Mapping[str, Any], runs: Sequence[Any], title: str = "") -> str:
    """The printed table: one row per (setting, last | best, metric) with mean ± std and each run, in percent."""
    cols = [f"seed {r}" for r in runs]
    head = f"{'setting':<18}{'epoch':<6}{'metric':<7}{'mean ± std':>16}" + "".join(f"{c:>10}" for c in cols)
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for setting, per_which in summary.items():
        for which in WHICH:
            for key, name in METRICS:
                slot = (per_which.get(which) or {}).get(key)
                if slot is None:
                    continue
                std = "-" if slot["std"] is None else f"{100 * slot['std']:.2f}"
                cells = "".join(f"{100 * slot['values'][str(r)]:>10.2f}" if str(r) in slot["values"] else f"{'-':>10}"
                                for r in runs)
                mean = f"{100 * slot['mean']:.2f} ± {std}"
                lines.append(f"{setting:<18}{which:<6}{name:<7}{mean:>16}{cells}")
    return "\n".join(lines)


def _run_sequential(cfgs: Sequence[TrainConfig], prog: str) -> dict[int, int]:
    from fastccreid.engine.trainer import run_train

    codes: dict[int, int] = {}
    for i, c in enumerate(cfgs):
        print(f"==> seed {c.seed} ({i + 1} of {len(cfgs)}): {c.save_dir}", flush=True)
        codes[c.seed] = run_train(c, prog=prog)
        if codes[c.seed] in (EXIT_INTERRUPTED, EXIT_USAGE):  # stopped by the user, or flags no seed can run with
            break
    return codes


def _run_parallel(cfgs: Sequence[TrainConfig], devices: Sequence[str]) -> dict[int, int]:
    """One child process per seed (``python -m fastccreid.engine.seeds CONFIG.json``), at most one per device at a
    time; each child's console output goes to ``seed-N/console.txt``."""
    pending = list(cfgs)
    running: dict[str, tuple[TrainConfig, subprocess.Popen, Any, str]] = {}
    codes: dict[int, int] = {}
    try:
        while pending or running:
            for dev in devices:
                if dev not in running and pending:
                    c = pending.pop(0).replace(gpu_devices=dev, nproc=1)
                    os.makedirs(c.save_dir, exist_ok=True)
                    fd, cfg_path = tempfile.mkstemp(prefix=".seed-config.", suffix=".json", dir=c.save_dir)
                    with os.fdopen(fd, "w") as f:
                        json.dump(c.to_dict(), f)
                    out = open(os.path.join(c.save_dir, "console.txt"), "w")  # noqa: SIM115 - closed below
                    proc = subprocess.Popen([sys.executable, "-m", "fastccreid.engine.seeds", cfg_path], stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                    running[dev] = (c, proc, out, cfg_path)
                    print(f"==> seed {c.seed} on GPU {dev}: {c.save_dir} (output in console.txt)", flush=True)
            for dev, (c, proc, out, cfg_path) in list(running.items()):
                if proc.poll() is not None:
                    out.close()
                    os.remove(cfg_path)
                    codes[c.seed] = proc.returncode
                    del running[dev]
                    print(f"==> seed {c.seed} on GPU {dev}: exit {proc.returncode}", flush=True)
                    if proc.returncode == EXIT_INTERRUPTED:
                        pending.clear()
            time.sleep(0.5)
    finally:
        for _c, proc, out, cfg_path in running.values():  # an abort (a second Ctrl-C): the children go too
            proc.terminate()
            proc.wait()
            out.close()
            if os.path.exists(cfg_path):
                os.remove(cfg_path)
    return codes


def run_seeds(cfg: TrainConfig, seeds: Sequence[int], *, prog: str = "fastccreid train",
              devices: Sequence[str] | None = None) -> int:
    """Train ``cfg`` once per seed in ``SAVE_DIR/seed-N`` (``devices``: GPUs to run on in parallel, None: decided by
    ``parallel_devices``), print the mean ± std table, write ``SAVE_DIR/seeds.json``. Returns 0 when every run
    finished, else the first failing run's exit code."""
    import torch

    if cfg.evaluate or cfg.resume:
        raise ValueError("--seeds trains from scratch once per seed: it does not take --evaluate / --resume (resume "
                         "one seed's run with --resume SAVE_DIR/seed-N/checkpoint_last.pth --save_dir "
                         "SAVE_DIR/seed-N --seed N)")
    seeds = list(seeds)
    parse_seeds(",".join(str(s) for s in seeds))  # the same checks for a Python caller
    cfg.validate()
    cfgs = [cfg.replace(seed=int(s), save_dir=seed_dir(cfg.save_dir, int(s))) for s in seeds]
    devices = list(devices) if devices is not None else parallel_devices(cfg, torch.cuda.is_available())
    codes = _run_parallel(cfgs, devices) if devices else _run_sequential(cfgs, prog)
    records: dict[int, dict[str, Any]] = {}
    runs = []
    for c in cfgs:
        entry: dict[str, Any] = {"seed": c.seed, "dir": os.path.relpath(c.save_dir, cfg.save_dir),
                                 "exit_code": codes.get(c.seed)}
        try:
            rec = read_run(os.path.join(c.save_dir, RUN_NAME))
            entry["status"] = rec.get("status")
            if codes.get(c.seed) is not None:
                records[c.seed] = rec
        except ValueError:
            entry["status"] = "not run" if c.seed not in codes else "no record"
        runs.append(entry)
    summary = summarize(records)
    done = [s for s in records if (records[s].get("results") or {}).get("last")]
    title = (f"==> {len(done)} of {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) in {cfg.save_dir}: mean ± "
             f"sample std (n - 1), then each run, in %; best = the seed's rule (chosen on the test set), last = the "
             f"last evaluated epoch")
    table = format_table(summary, done, title) if done else "==> no seed finished an evaluation: no table"
    print(table, flush=True)
    path = atomic_write_json({"schema": SEEDS_SCHEMA, "save_dir": os.path.abspath(cfg.save_dir), "seeds": seeds,
                              "std": "sample (n - 1)", "values": "fractions in [0, 1]", "runs": runs,
                              "summary": summary, "table": table}, os.path.join(cfg.save_dir, SEEDS_NAME))
    print(f"wrote {path}", flush=True)
    failed = [codes[s] for s in seeds if codes.get(s) not in (None, 0)]
    if failed:
        return failed[0]
    return 0 if len(codes) == len(seeds) else EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """A parallel seed's child: ``python -m fastccreid.engine.seeds CONFIG.json`` (a ``TrainConfig.to_dict``)."""
    from fastccreid.engine.trainer import run_train

    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        raise ValueError("usage: python -m fastccreid.engine.seeds CONFIG.json")
    with open(argv[0]) as f:
        cfg = TrainConfig.from_dict(json.load(f))
    return run_train(cfg, prog="fastccreid train")


if __name__ == "__main__":
    sys.exit(main())
