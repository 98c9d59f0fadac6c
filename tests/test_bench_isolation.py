"""``fastccreid bench all``'s runner: each suite in its own bounded process, a failing or hanging suite losing only
itself, the JSON rewritten after every suite, skips recorded with their reason, SIGTERM closing the JSON.

The suites are replaced by tiny Python commands (``fastccreid.bench.suite_command`` is the one place the runner
builds a suite's command), so the runner's own code runs for real in seconds."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fastccreid.bench as bench

# argv: [json_path, parent's json_out]. "ok": one row (and, for train, what the parent's JSON held when it started)
_OK = textwrap.dedent("""
    import json, os, sys
    out, parent, suite = sys.argv[1], sys.argv[2], sys.argv[3]
    seen = json.load(open(parent)) if os.path.exists(parent) else None
    row = {"suite": suite, "case": "c", "path": "fast", "median_s": 0.5, "items_per_s": 2.0,
           "peak_rss_bytes": 1, "repeats": 1, "items": 1,
           "extra": {"parent_json_at_start": seen and [(s["suite"], s["status"]) for s in seen["suites"]],
                     "parent_rows_at_start": seen and len(seen["results"])}}
    skipped = [{"what": "the DALI rows", "reason": "NVIDIA DALI does not import"}] if suite == "train" else []
    payload = {"hardware": {}, "results": [row], "complete": True,
               "suites": [{"suite": suite, "status": "ok", "seconds": 0.1, "rows": 1, "detail": "",
                           "skipped": skipped}]}
    json.dump(payload, open(out, "w"))
    print("suite", suite, "done", flush=True)
""")
_RAISE = "import sys; print('about to fail', flush=True); raise RuntimeError('kernel exploded')"
_HANG = textwrap.dedent("""
    import json, os, time, sys
    row = {"suite": sys.argv[3], "case": "finished before the hang", "path": "fast", "median_s": 1.0,
           "items_per_s": 1.0, "peak_rss_bytes": 1, "repeats": 1, "items": 1, "extra": {}}
    json.dump({"results": [row]}, open(os.environ["FASTCCREID_BENCH_PARTIAL"], "w"))  # as bench.common.keep_partial
    print("hanging", flush=True)
    time.sleep(120)
""")


def _fake_commands(parent_json: str, behaviour: dict[str, str]):
    def command(name: str, quick: bool, json_path: str) -> list[str]:
        code = {"ok": _OK, "raise": _RAISE, "hang": _HANG}[behaviour[name]]
        return [sys.executable, "-c", code, json_path, parent_json, name]
    return command


def _args(json_out: str, **kw) -> argparse.Namespace:
    base = dict(suite="all", quick=True, json_out=json_out, out="", md_out="", isolate=None, suite_timeout="",
                skip_suites="")
    base.update(kw)
    return argparse.Namespace(**base)


def test_a_failing_and_a_hanging_suite_lose_only_themselves(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "bench.json")
    md = str(tmp_path / "bench.md")
    behaviour = {"kernels": "ok", "eval": "raise", "pipeline": "hang", "train": "ok", "extract": "ok"}
    monkeypatch.setattr(bench, "suite_command", _fake_commands(out, behaviour))
    t0 = time.monotonic()
    code = bench.run_bench(_args(out, md_out=md, suite_timeout="pipeline=3,default=60"))
    assert time.monotonic() - t0 < 40  # the hanging suite was stopped at its limit, not waited for
    assert code == 1  # a suite did not finish: the run says so
    payload = json.loads(open(out).read())
    assert payload["complete"] is True
    status = {s["suite"]: s for s in payload["suites"]}
    assert [s["suite"] for s in payload["suites"]] == list(bench.SUITES)
    assert {k: v["status"] for k, v in status.items()} == {
        "kernels": "ok", "eval": "error", "pipeline": "timeout", "train": "ok", "extract": "ok"}
    assert "kernel exploded" in status["eval"]["detail"]  # the error's own message, from its stderr
    assert "stopped after 3 s" in status["pipeline"]["detail"]
    assert status["train"]["skipped"] == [{"what": "the DALI rows", "reason": "NVIDIA DALI does not import"}]
    # the timed-out suite keeps the cases it had finished (its partial file), marked by its record's status
    assert [(r["suite"], r["case"]) for r in payload["results"]] == [
        ("kernels", "c"), ("pipeline", "finished before the hang"), ("train", "c"), ("extract", "c")]
    assert status["pipeline"]["rows"] == 1
    # the JSON was rewritten after every suite: when train started it held the three suites before it
    train_row = payload["results"][2]
    assert train_row["extra"]["parent_json_at_start"] == [["kernels", "ok"], ["eval", "error"],
                                                         ["pipeline", "timeout"]]
    assert train_row["extra"]["parent_rows_at_start"] == 2
    text = capsys.readouterr().out
    assert "suite kernels done" in text and "hanging" in text  # children's output relayed as it came
    assert "== bench eval: error" in text and "== bench pipeline: timeout" in text
    summary = open(md).read()
    assert "| pipeline | timeout |" in summary and "skipped the DALI rows: NVIDIA DALI does not import" in summary


def test_all_suites_ok_exits_0_and_skipped_suites_are_recorded(tmp_path, monkeypatch):
    out = str(tmp_path / "b.json")
    monkeypatch.setattr(bench, "suite_command", _fake_commands(out, dict.fromkeys(bench.SUITES, "ok")))
    assert bench.run_bench(_args(out, suite_timeout="60", skip_suites="train")) == 0
    payload = json.loads(open(out).read())
    assert payload["complete"]
    assert {s["suite"]: s["status"] for s in payload["suites"]} == {**dict.fromkeys(bench.SUITES, "ok"),
                                                                    "train": "skipped"}
    assert len(payload["results"]) == len(bench.SUITES) - 1
    with pytest.raises(ValueError, match="--skip_suites: unknown suites \\['trian'\\]"):
        bench.run_bench(_args(out, skip_suites="trian"))


def test_keep_partial_writes_where_the_runner_reads(tmp_path, monkeypatch):
    from fastccreid.bench.common import PARTIAL_ENV, BenchRow, keep_partial

    keep_partial([BenchRow("eval", "c", "fast", 1.0, 1.0, 1)])  # no runner: nothing written, nothing raised
    path = tmp_path / "partial.json"
    monkeypatch.setenv(PARTIAL_ENV, str(path))
    keep_partial([BenchRow("eval", "c", "fast", 1.0, 1.0, 1)])
    assert [r["case"] for r in json.loads(path.read_text())["results"]] == ["c"]


def test_in_process_suite_error_is_recorded_and_the_next_suite_runs(tmp_path, monkeypatch):
    """--no-isolate: a raising suite is an "error" record (traceback on stderr), the next suite still runs."""
    import fastccreid.bench.kernels as kernels_suite

    def boom(quick):
        raise RuntimeError("no kernel today")

    monkeypatch.setattr(kernels_suite, "run", boom)
    out = str(tmp_path / "k.json")
    assert bench.run_bench(_args(out, suite="kernels", isolate=False)) == 1
    payload = json.loads(open(out).read())
    assert payload["suites"][0]["status"] == "error" and "no kernel today" in payload["suites"][0]["detail"]


@pytest.mark.parametrize("text, expected", [
    ("", dict.fromkeys(bench.SUITES)),
    ("30", dict.fromkeys(bench.SUITES, 30.0)),
    ("kernels=5,default=7", {**dict.fromkeys(bench.SUITES, 7.0), "kernels": 5.0}),
    ("train=9", {**dict.fromkeys(bench.SUITES), "train": 9.0}),
])
def test_suite_timeout_forms(text, expected):
    assert bench.parse_suite_timeouts(text) == expected


@pytest.mark.parametrize("text, match", [("kernals=5", "NAME one of kernels"), ("x", "must be a number"),
                                         ("eval=-1", "must be > 0"), ("0", "must be > 0")])
def test_suite_timeout_errors_name_the_flag(text, match):
    with pytest.raises(ValueError, match="--suite_timeout") as e:
        bench.parse_suite_timeouts(text)
    assert match in str(e.value)


_DRIVER = textwrap.dedent("""
    import sys
    import fastccreid.bench as bench
    sys.path.insert(0, sys.argv[2])
    from test_bench_isolation import _args, _fake_commands
    out = sys.argv[1]
    beh = {"kernels": "ok", "eval": "hang", "pipeline": "ok", "train": "ok", "extract": "ok"}
    bench.suite_command = _fake_commands(out, beh)
    sys.exit(bench.run_bench(_args(out)))
""")


def test_sigterm_closes_the_json_with_the_finished_suites(tmp_path):
    """An outer ``timeout`` (SIGTERM) while a suite runs: that suite is "interrupted", its process group stopped,
    the JSON keeps the suites before it and says ``complete: false``."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-c", _DRIVER, str(out), os.path.dirname(__file__)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait for the partial JSON after the first suite
            if out.exists() and json.loads(out.read_text())["suites"]:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # the hanging suite has started
        p.send_signal(signal.SIGTERM)
        text, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, text
    payload = json.loads(out.read_text())
    assert payload["complete"] is False
    assert [(s["suite"], s["status"]) for s in payload["suites"]] == [("kernels", "ok"), ("eval", "interrupted")]
    assert [(r["suite"], r["case"]) for r in payload["results"]] == [("kernels", "c"),
                                                                    ("eval", "finished before the hang")]


@pytest.mark.parametrize("cuda", [False, True])
def test_quick_eval_on_cuda_records_the_cpu_only_rows_as_skipped(monkeypatch, cuda):
    """On a GPU the quick eval suite (gpu_check.sh) measures the device rows and records the CPU-only re-ranking
    and compat rows as skipped with the reason; on a CPU it runs them. The cases are stubbed."""
    import torch

    from fastccreid.bench import common, compat_eval, rerank
    from fastccreid.bench import eval as bench_eval

    ran: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(bench_eval, "rank_stats_backends_case", lambda name, device, repeats: ran.append(name) or [])
    monkeypatch.setattr(bench_eval, "run_case", lambda name, **kw: ran.append(name) or [])
    monkeypatch.setattr(rerank, "run_rerank", lambda full: ran.append("rerank") or [])
    monkeypatch.setattr(compat_eval, "run_compat", lambda quick: ran.append("compat") or [])
    common.SKIPS.clear()
    bench_eval.run(quick=True)
    skipped = [s["what"] for s in common.SKIPS]
    common.SKIPS.clear()
    assert ("rerank" in ran) == ("compat" in ran) == (not cuda), ran
    assert ("msmt17" in ran) == cuda and "ltcc" in ran, ran
    assert bool(skipped) == cuda and all("re-ranking" in s for s in skipped), skipped


def test_keep_partial_prints_each_row_once_as_it_finishes(capsys):
    from fastccreid.bench.common import BenchRow, keep_partial

    rows = [BenchRow("kernels", "pdist 4096", "fast", 0.002, 10.0, 1)]
    keep_partial(rows)
    rows.append(BenchRow("kernels", "pdist 4096", "reference", 0.004, 5.0, 1))
    keep_partial(rows)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("bench kernels:")]
    assert lines == ["bench kernels: pdist 4096 [fast] median 0.002 s, 10.0 items/s",
                     "bench kernels: pdist 4096 [reference] median 0.004 s, 5.0 items/s"], lines
