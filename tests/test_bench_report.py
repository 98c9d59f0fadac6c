"""The bench framework: rows, the table with speed-ups, and the report files."""

from __future__ import annotations

import json

from fastccreid.bench import BenchRow, format_table, time_median
from fastccreid.bench.report import write_report


def _rows():
    return [
        BenchRow("eval", "g1000", "reference", 2.0, 500.0, 2**30, extra={"gallery_size": 1000}),
        BenchRow("eval", "g1000", "fast", 0.05, 20000.0, 2**29, extra={"gallery_size": 1000}),
        BenchRow("eval", "g10000", "reference", 20.0, 500.0, 2**31, extra={"gallery_size": 10000}),
        BenchRow("eval", "g10000", "fast", 0.5, 20000.0, 2**29, extra={"gallery_size": 10000}),
    ]


def test_table_has_speedup_on_fast_rows():
    table = format_table(_rows())
    lines = table.splitlines()
    assert "40.0x" in lines[3]
    assert lines[2].rstrip().endswith("|  |")


def test_report_writes_json_markdown_and_plots(tmp_path):
    payload = {"hardware": {"cpu": "test", "cores": 2}, "results": []}
    written = write_report(payload, _rows(), str(tmp_path))
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"results.json", "results.md", "eval_time.png", "eval_memory.png"} <= names
    assert json.loads((tmp_path / "results.json").read_text())["hardware"]["cores"] == 2
    assert (tmp_path / "eval_time.png").read_bytes()[:4] == b"\x89PNG"


def test_time_median_counts_calls():
    calls = []
    t = time_median(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and t >= 0


def test_variant_rows_get_their_speedup_from_items_per_second():
    rows = [BenchRow("pipeline", "jpeg", "fast", 0.25, 1000.0, 2**30),
            BenchRow("pipeline", "jpeg", "fast-uint8", 0.2, 1250.0, 2**30),
            BenchRow("pipeline", "jpeg", "reference", 0.5, 500.0, 2**30)]
    lines = format_table(rows).splitlines()
    assert lines[2].endswith("| 2.0x |") and lines[3].endswith("| 2.5x |") and lines[4].endswith("|  |")
