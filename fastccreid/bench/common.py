"""What every bench suite shares: the result row, the timing and memory probes, the hardware line, the markdown
table and the atomic JSON write. Suites and ``report`` import this module; ``fastccreid.bench`` (the dispatcher)
imports the suites lazily, so nothing imports its importer.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class BenchRow:
    """One measured path of one case. ``path`` is "fast" or "reference"; the two paths share ``case``."""

    suite: str
    case: str
    path: str
    median_s: float
    items_per_s: float
    peak_rss_bytes: int
    repeats: int = 1
    items: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


SKIPS: list[dict[str, str]] = []  # what a suite could not measure here and why (run_bench reads and clears it)


def note_skip(suite: str, what: str, reason: str) -> None:
    """Record that ``suite`` measured no ``what`` on this machine because of ``reason`` (printed now; the runner
    puts it in the suite's record, so an absent path is reported as skipped, never silently missing)."""
    SKIPS.append({"suite": suite, "what": what, "reason": reason})
    print(f"bench {suite}: skipped {what}: {reason}", flush=True)


PARTIAL_ENV = "FASTCCREID_BENCH_PARTIAL"  # set by the isolating runner: where a suite keeps its rows so far


_PRINTED: list[weakref.ref] = []  # the rows keep_partial has printed in this process (by identity)


def row_line(r: BenchRow) -> str:
    """One finished row as one line: "bench SUITE: CASE [PATH] median S s, N items/s"."""
    return f"bench {r.suite}: {r.case} [{r.path}] median {r.median_s:.4g} s, {r.items_per_s:,.1f} items/s"


def keep_partial(rows: list[BenchRow]) -> None:
    """A suite's rows so far: each row not printed yet is printed (and flushed) as one line, so a run shows its
    figures as they come; in an isolated run they are also written (atomically) where the runner reads them if the
    suite then runs out of time or fails: finished cases are kept."""
    _PRINTED[:] = [w for w in _PRINTED if w() is not None]
    for r in rows:
        if not any(w() is r for w in _PRINTED):
            _PRINTED.append(weakref.ref(r))
            print(row_line(r), flush=True)
    path = os.environ.get(PARTIAL_ENV)
    if path:
        from dataclasses import asdict

        write_json(path, {"results": [asdict(r) for r in rows]})


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def time_median(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device | None = None,
                        events: bool = False) -> dict[str, float]:
    """Median seconds per function over ``repeats`` rounds that run them in turn (after one untimed run each), so
    load from other processes on a shared machine hits every path alike. On a CUDA ``device`` each timed call is
    synchronised before and after (kernels run asynchronously); with ``events`` the time is the device's, between
    two CUDA events recorded around the call on the current stream (``torch.cuda.Event(enable_timing=True)``,
    ``elapsed_time`` in ms), so the host syncs that bracket it fall outside the timed region (for functions whose
    work is all on the current stream: the kernel rows)."""
    import torch

    cuda = device is not None and device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for fn in fns.values():
        fn()
        sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            if cuda and events:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1000.0)
                continue
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def hardware() -> dict[str, Any]:
    """CPU, cores, GPU and library versions, plus the git commit when run from a checkout."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    info["torch"] = torch.__version__
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    for mod in ("triton", "nvidia.dali", "numpy"):
        try:
            info[mod.split(".")[-1]] = importlib.import_module(mod).__version__
        except Exception:  # noqa: BLE001 - an optional library that fails to import is reported as absent
            info[mod.split(".")[-1]] = None
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(__file__),
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    info["python"] = platform.python_version()
    return info


def format_table(rows: list[BenchRow]) -> str:
    """Markdown table: each case's rows, with the speed-up over the case's reference row (items/s ratio) on every
    other path (fast, and variants such as the pipeline's fast-uint8)."""
    ref = {(r.suite, r.case): r for r in rows if r.path == "reference"}
    lines = [
        "| suite | case | path | median (s) | items/s | peak RSS (MiB) | speed-up |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = ref.get((r.suite, r.case))
        speed = ""
        if base is not None and r is not base and r.items_per_s > 0 and base.items_per_s > 0:
            speed = f"{r.items_per_s / base.items_per_s:.1f}x"
        lines.append(
            f"| {r.suite} | {r.case} | {r.path} | {r.median_s:.4f} | {r.items_per_s:,.1f} | "
            f"{r.peak_rss_bytes / 2**20:,.0f} | {speed} |"
        )
    return "\n".join(lines)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` as indented JSON, atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
