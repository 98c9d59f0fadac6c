"""The bench framework: rows, the table with speed-ups, and the report files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

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


# The JSON contract of ``fastccreid bench ... --json FILE`` (README, Performance): field -> type.
ROW_FIELDS = {"suite": str, "case": str, "path": str, "median_s": float, "items_per_s": float,
              "peak_rss_bytes": int, "repeats": int, "items": int, "extra": dict}
HARDWARE_FIELDS = {"cpu", "cores", "torch", "gpu", "numpy", "commit", "python"}


def test_bench_cli_runs_a_quick_suite_and_writes_the_documented_json(tmp_path):
    """``fastccreid bench kernels --quick --json F`` for real, in a subprocess (3 repeats per case to keep it short):
    exit 0, the markdown table on stdout, and a JSON file with the hardware line and one row per (case, path)."""
    out = tmp_path / "bench" / "kernels.json"
    env = {**os.environ, "FASTCCREID_BENCH_REPEATS": "3"}
    proc = subprocess.run([sys.executable, "-m", "fastccreid", "bench", "kernels", "--quick", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== bench kernels (quick)" in proc.stdout and "| suite | case | path |" in proc.stdout
    assert f"wrote {out}" in proc.stdout
    assert not list(out.parent.glob("*.tmp"))  # the atomic write left no temporary file
    payload = json.loads(out.read_text())
    assert set(payload) == {"hardware", "results", "suites", "complete"}
    assert payload["complete"] is True
    assert [(s["suite"], s["status"], s["rows"]) for s in payload["suites"]] == [("kernels", "ok", 10)]
    hw = payload["hardware"]
    assert HARDWARE_FIELDS <= set(hw), HARDWARE_FIELDS - set(hw)
    assert isinstance(hw["cores"], int) and hw["cores"] >= 1 and hw["torch"] == torch.__version__
    rows = payload["results"]
    for row in rows:
        assert set(row) == set(ROW_FIELDS), row
        for name, typ in ROW_FIELDS.items():
            assert isinstance(row[name], typ), (name, row[name])
        assert row["suite"] == "kernels" and row["path"] in ("fast", "reference") and row["repeats"] == 3
        assert row["median_s"] > 0 and row["items"] > 0 and row["peak_rss_bytes"] > 2**20
        assert row["items_per_s"] == pytest.approx(row["items"] / row["median_s"], rel=1e-9)
    # quick mode: triplet at B = 32 and 256, pdist at 32x32, 256x256 and LTCC's 493 x 7,050; each fast and reference
    cases = {}
    for row in rows:
        cases.setdefault(row["case"], []).append(row["path"])
    assert all(sorted(paths) == ["fast", "reference"] for paths in cases.values()), cases
    assert sorted(cases) == sorted([f"triplet fwd+bwd B={b} D=2048" for b in (32, 256)]
                                   + [f"pdist euclidean {m}x{n} D=2048" for m, n in ((32, 32), (256, 256),
                                                                                   (493, 7050))])


def test_cuda_event_timing_keeps_the_host_syncs_outside_the_timed_region(monkeypatch):
    """With ``events`` on a CUDA device each timed call sits between two recorded events and the host waits only
    after the second: the time is the events' elapsed time, never a wall time that includes a sync. A fake
    ``torch.cuda`` (Event, synchronize) logs the order of calls."""
    from fastccreid.bench.common import interleaved_medians

    log: list[str] = []

    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            FakeEvent.clock += 1.0
            self.t = FakeEvent.clock
            log.append("record")

        def synchronize(self):
            log.append("wait")

        def elapsed_time(self, other):  # milliseconds, as torch.cuda.Event.elapsed_time
            return 250.0 * (other.t - self.t)

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    med = interleaved_medians({"k": lambda: log.append("fn")}, 3, torch.device("cuda"), events=True)
    assert med == {"k": 0.25}
    timed = log[log.index("record"):]
    for i in range(0, len(timed), 5):  # record, fn, record, wait, then the next call's sync
        assert timed[i:i + 4] == ["record", "fn", "record", "wait"], timed


def test_summary_table_shows_the_cublas_fraction():
    """The cuBLAS FLOP-rate fraction is a figure of the summary table (the printed one and bench.md), not only a
    key of the JSON rows."""
    from dataclasses import asdict

    from fastccreid.bench.report import summary_table

    row = BenchRow("kernels", "pdist euclidean 4096x4096 D=2048", "fast", 0.002, 8.4e9, 2**30,
                   extra={"fraction_of_cublas_flop_rate": 0.8123, "cublas_s": 0.0016})
    table = summary_table({"results": [asdict(row)], "suites": [], "complete": True})
    assert "pdist euclidean 4096x4096" in table and "0.81 of cuBLAS's FLOP rate" in table, table
