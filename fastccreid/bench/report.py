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


def _figure(r: dict[str, Any]) -> str | None:
    """The one figure a GPU check waits for in a row, as text; None when the row carries none of them."""
    e = r.get("extra", {})
    if "fraction_of_cublas_flop_rate" in e:
        return f"{e['fraction_of_cublas_flop_rate']:.2f} of cuBLAS's FLOP rate on the same shapes"
    if "multiple_of_gram_matmul" in e:
        vs = e.get("vs_fp64", {})
        mism = (f"; vs fp64: first_rank differs on {vs.get('first_rank_mismatches')} of {e.get('Q')} queries, "
                f"AP by > 1e-6 on {vs.get('ap_mismatches_1e-6')}, max |AP diff| {vs.get('max_ap_abs_diff', 0):.2g}"
                if vs else "")
        return f"{e['multiple_of_gram_matmul']:.2f}x the cuBLAS q @ g.T{mism}"
    if r.get("suite") == "train" and "peak_mem_per_image_MiB" in e:
        return (f"{e.get('amp')} {'compiled' if e.get('compile') else 'eager'}"
                f"{' channels_last' if e.get('channels_last') else ''}, peak {e['peak_mem_per_image_MiB']} MiB/img")
    if r.get("suite") == "extract":
        return f"inference ({e.get('precision')}, {e.get('loader') or e.get('runtime')})"
    return None


def summary_table(payload: dict[str, Any]) -> str:
    """One markdown table of the figures the ``auto`` rule and the README wait for (cuBLAS fractions, rank_stats
    multiples and their mismatches vs fp64, train and inference img/s with peak memory), then each suite's status
    and what it skipped."""
    lines = ["| suite | case | path | median (s) | items/s | figure |", "|---|---|---|---:|---:|---|"]
    for r in payload.get("results", []):
        fig = _figure(r)
        if fig is not None:
            lines.append(f"| {r['suite']} | {r['case']} | {r['path']} | {r['median_s']:.4g} | "
                         f"{r['items_per_s']:,.1f} | {fig} |")
    if len(lines) == 2:
        lines.append("| - | no row carries a summary figure | | | | |")
    lines += ["", "| suite | status | seconds | rows | skipped / error |", "|---|---|---:|---:|---|"]
    for s in payload.get("suites", []):
        note = "; ".join(f"skipped {k['what']}: {k['reason']}" for k in s.get("skipped", []))
        if s.get("detail"):
            note = (note + "; " if note else "") + s["detail"].strip().splitlines()[-1][:300]
        lines.append(f"| {s['suite']} | {s['status']} | {s['seconds']:.0f} | {s['rows']} | "
                     f"{note.replace('|', '/')} |")
    if not payload.get("complete", True):
        lines.append("\n(incomplete: the run stopped before its last suite)")
    return "\n".join(lines)


def write_markdown(payload: dict[str, Any], rows: list[BenchRow], path: str) -> str:
    """The hardware line, every row's table and the summary table, in one markdown file (written atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"Hardware: {_hardware_line(payload['hardware'])}\n\n{format_table(rows)}\n\n"
                f"## Summary\n\n{summary_table(payload)}\n")
    os.replace(tmp, path)
    return path


def write_report(payload: dict[str, Any], rows: list[BenchRow], out_dir: str) -> list[str]:
    """Write results.json, results.md and (when matplotlib is installed) the PNG plots; return written paths."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    path = os.path.join(out_dir, "results.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    written.append(path)
    written.append(write_markdown(payload, rows, os.path.join(out_dir, "results.md")))
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
