"""``fastccreid bench --out DIR``: the rows as a markdown table, plus PNG plots of the scaling curves.

Plots: evaluation time and peak memory vs gallery size (rows of suite "eval" with ``extra["gallery_size"]``),
and train images/s vs batch size (rows of suite "train" with ``extra["batch"]``), fast and reference paths.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastccreid.bench.common import BenchRow, format_table


def _hardware_line(hw: dict[str, Any]) -> str:
    keys = ("cpu", "cores", "gpu", "torch", "triton", "dali", "numpy", "python", "commit")
    return ", ".join(f"{k}={hw.get(k)}" for k in keys)


def _series(rows: list[BenchRow], suite: str, xkey: str, ykey: str) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.suite != suite or xkey not in r.extra:
            continue
        y = r.peak_rss_bytes / 2**20 if ykey == "peak_rss_mib" else getattr(r, ykey)
        out.setdefault(r.path, []).append((float(r.extra[xkey]), float(y)))
    return {k: sorted(v) for k, v in out.items()}


def write_report(payload: dict[str, Any], rows: list[BenchRow], out_dir: str) -> list[str]:
    """Write results.json, results.md and (when matplotlib is installed) the PNG plots; return written paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    written.append(path)
    path = os.path.join(out_dir, "results.md")
    with open(path, "w") as f:
        f.write(f"Hardware: {_hardware_line(payload['hardware'])}\n\n{format_table(rows)}\n")
    written.append(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNG plots (pip install matplotlib)")
        return written
    plots = [
        ("eval", "gallery_size", "median_s", "gallery size", "evaluation time (s)", "eval_time.png", True),
        ("eval", "gallery_size", "peak_rss_mib", "gallery size", "peak RSS (MiB)", "eval_memory.png", True),
        ("train", "batch", "items_per_s", "batch size", "train images/s", "train_throughput.png", False),
    ]
    for suite, xkey, ykey, xlabel, ylabel, name, logx in plots:
        series = _series(rows, suite, xkey, ykey)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, points in sorted(series.items()):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        if logx:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
