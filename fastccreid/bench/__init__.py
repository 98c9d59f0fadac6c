"""``fastccreid bench``: fast vs reference in one process, one row per path per case.

Each suite module (``kernels``, ``eval``, ``pipeline``, ``train``) exposes ``run(quick: bool) -> list[BenchRow]``.
Rows carry the hardware line so that results are data (JSON, markdown, plots), as Liger's benchmark CSV.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import asdict

from fastccreid.bench.common import (  # noqa: F401  (re-exported: the public import path of these names)
    BenchRow,
    format_table,
    hardware,
    peak_rss_bytes,
    time_median,
    write_json,
)

SUITES = ("kernels", "eval", "pipeline", "train", "extract")


def run_bench(args: argparse.Namespace) -> int:
    suites = SUITES if args.suite == "all" else (args.suite,)
    rows: list[BenchRow] = []
    for name in suites:
        module = importlib.import_module(f"fastccreid.bench.{name}")
        print(f"== bench {name}{' (quick)' if args.quick else ''}", flush=True)
        suite_rows = module.run(quick=args.quick)
        print(format_table(suite_rows), flush=True)
        rows.extend(suite_rows)
    payload = {"hardware": hardware(), "results": [asdict(r) for r in rows]}
    if args.json_out:
        write_json(args.json_out, payload)
        print(f"wrote {args.json_out}")
    if args.out:
        from fastccreid.bench.report import write_report

        write_report(payload, rows, args.out)
        print(f"wrote report to {args.out}")
    return 0
