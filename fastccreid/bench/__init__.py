"""``fastccreid bench``: fast vs reference in one process, one row per path per case.

Each suite module (``kernels``, ``eval``, ``pipeline``, ``train``, ``extract``) exposes
``run(quick: bool) -> list[BenchRow]``. Rows carry the hardware line so that results are data (JSON, markdown,
plots), as Liger's benchmark CSV.

``bench all`` runs each suite in its own process (``--isolate``, the default for ``all``), bounded by
``--suite_timeout``: a suite that raises, crashes or runs out of time loses only its own rows and is recorded with
its status (``ok`` / ``error`` / ``timeout``) and the tail of its error output. The JSON file is rewritten after
every suite (``"complete": false`` until the last one), so a run stopped from outside keeps every finished suite.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field

from fastccreid.bench import common
from fastccreid.bench.common import (  # noqa: F401  (re-exported: the public import path of these names)
    BenchRow,
    format_table,
    hardware,
    peak_rss_bytes,
    time_median,
    write_json,
)

SUITES = ("kernels", "eval", "pipeline", "train", "extract")
SUITE_STATUSES = ("ok", "skipped", "error", "timeout", "interrupted")  # skipped: by --skip_suites


@dataclass
class SuiteRecord:
    """How one suite ended: ``status`` one of SUITE_STATUSES, its wall seconds, the error tail (``detail``) and
    what it skipped on this machine (``skipped``: [{"what", "reason"}])."""

    suite: str
    status: str
    seconds: float
    rows: int = 0
    detail: str = ""
    skipped: list[dict[str, str]] = field(default_factory=list)


def parse_suite_timeouts(text: str, suites: tuple[str, ...] = SUITES) -> dict[str, float | None]:
    """``--suite_timeout``: "" (no limit), one number of seconds for every suite, or ``name=S`` pairs separated by
    commas (``default=S`` for the rest), e.g. "kernels=60,train=150,default=90"."""
    out: dict[str, float | None] = dict.fromkeys(suites)
    text = (text or "").strip()
    if not text:
        return out

    def seconds(v: str, what: str) -> float:
        try:
            s = float(v)
        except ValueError:
            raise ValueError(f"--suite_timeout: {what} must be a number of seconds, got {v!r}") from None
        if s <= 0:
            raise ValueError(f"--suite_timeout: {what} must be > 0 seconds, got {v!r}")
        return s

    if "=" not in text:
        return dict.fromkeys(suites, seconds(text, "the limit"))
    pairs = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in (*suites, "default"):
            raise ValueError(f"--suite_timeout: {part!r} is not NAME=SECONDS with NAME one of "
                             f"{', '.join((*suites, 'default'))}")
        pairs[name] = seconds(value.strip(), name)
    default = pairs.pop("default", None)
    return {s: pairs.get(s, default) for s in suites}


def _run_in_process(name: str, quick: bool) -> tuple[list[BenchRow], SuiteRecord]:
    """One suite in this process; an exception ends that suite only (status "error", traceback on stderr)."""
    common.SKIPS.clear()
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(f"fastccreid.bench.{name}")
        rows, status, detail = module.run(quick=quick), "ok", ""
    except Exception as e:  # noqa: BLE001 - a failing suite is recorded and the next one runs
        traceback.print_exc()
        rows, status, detail = [], "error", f"{type(e).__name__}: {e}"
    skipped = [{"what": s["what"], "reason": s["reason"]} for s in common.SKIPS if s["suite"] == name]
    common.SKIPS.clear()
    return rows, SuiteRecord(name, status, round(time.perf_counter() - t0, 2), len(rows), detail, skipped)


class _Interrupted(BaseException):
    """SIGTERM reached the runner (an outer ``timeout``): close the JSON with what is done."""


def _relay(stream, sink, tail: list[str]) -> None:
    """Copy a child's stream line by line to ``sink`` (flushed) and keep its last lines in ``tail``."""
    for line in iter(stream.readline, ""):
        sink.write(line)
        sink.flush()
        tail.append(line)
        del tail[:-40]
    stream.close()


def suite_command(name: str, quick: bool, json_path: str) -> list[str]:
    """The command that runs suite ``name`` alone in a fresh process and writes its rows to ``json_path``."""
    cmd = [sys.executable, "-m", "fastccreid", "bench", name, "--no-isolate", "--json", json_path]
    return cmd + ["--quick"] if quick else cmd


def _run_isolated(name: str, quick: bool, timeout: float | None) -> tuple[list[BenchRow], SuiteRecord]:
    """One suite in a fresh process (``suite_command``), bounded by ``timeout`` seconds (SIGTERM to its process
    group, then SIGKILL 10 s later); its output goes to ours line by line."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fastccreid-bench-{name}-") as tmp:
        out = os.path.join(tmp, "suite.json")
        cmd = suite_command(name, quick, out)
        partial = os.path.join(tmp, "partial.json")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{common.PARTIAL_ENV: partial})
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        tails: tuple[list[str], list[str]] = ([], [])
        relays = [threading.Thread(target=_relay, args=(s, k, t), daemon=True)
                  for s, k, t in ((proc.stdout, sys.stdout, tails[0]), (proc.stderr, sys.stderr, tails[1]))]
        for r in relays:
            r.start()
        status = "ok"
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            status = "timeout"
        except _Interrupted:
            status = "interrupted"
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            for r in relays:
                r.join(timeout=5)
        seconds = round(time.perf_counter() - t0, 2)
        tail = "".join(tails[1][-15:] or tails[0][-15:]).strip()[-2000:]
        kept: list[BenchRow] = []
        if os.path.exists(partial):  # the cases it finished before it stopped
            with open(partial) as f:
                kept = [BenchRow(**r) for r in json.load(f)["results"]]
        if status == "timeout":
            return kept, SuiteRecord(name, status, seconds, len(kept), f"stopped after {timeout:.0f} s: {tail}")
        if status == "interrupted":
            return kept, SuiteRecord(name, status, seconds, len(kept), f"SIGTERM reached the runner: {tail}")
        if proc.returncode != 0 or not os.path.exists(out):
            return kept, SuiteRecord(name, "error", seconds, len(kept), f"exit {proc.returncode}: {tail}")
        with open(out) as f:
            payload = json.load(f)
    rows = [BenchRow(**r) for r in payload["results"]]
    skipped = [s for rec in payload.get("suites", []) for s in rec.get("skipped", [])]
    return rows, SuiteRecord(name, "ok", seconds, len(rows), "", skipped)


def suite_line(rec: SuiteRecord) -> str:
    """"== bench NAME: STATUS (seconds, rows[, skipped: what (why)])[: last line of the error]"."""
    skipped = "; ".join(f"{s['what']} ({s['reason']})" for s in rec.skipped)
    last = rec.detail.strip().splitlines()[-1] if rec.detail.strip() else ""
    return (f"== bench {rec.suite}: {rec.status} ({rec.seconds:.0f} s, {rec.rows} rows"
            f"{', skipped: ' + skipped if skipped else ''}){': ' + last if last else ''}")


def bench_payload(rows: list[BenchRow], records: list[SuiteRecord], complete: bool,
                  hw: dict | None = None) -> dict:
    """The JSON document: ``hardware``, ``results`` (the rows), ``suites`` (how each ended) and ``complete``."""
    return {"hardware": hw if hw is not None else hardware(), "results": [asdict(r) for r in rows],
            "suites": [asdict(r) for r in records], "complete": complete}


def run_bench(args: argparse.Namespace) -> int:
    """Run the suites (isolated for ``all`` unless ``--no-isolate``), print each suite's table as it finishes,
    rewrite ``--json`` after each, and at the end the summary table and ``--md`` / ``--out`` reports. Exit 1 when
    a suite failed or timed out (the others' rows are still written), else 0."""
    from fastccreid.bench.report import summary_table

    suites = SUITES if args.suite == "all" else (args.suite,)
    skip = [s.strip() for s in (getattr(args, "skip_suites", "") or "").split(",") if s.strip()]
    unknown = sorted(set(skip) - set(SUITES))
    if unknown:
        raise ValueError(f"--skip_suites: unknown suites {unknown}; valid: {', '.join(SUITES)}")
    isolate = getattr(args, "isolate", None)
    isolate = args.suite == "all" if isolate is None else bool(isolate)
    timeouts = parse_suite_timeouts(getattr(args, "suite_timeout", "") or "")
    if not isolate and any(timeouts[s] for s in suites):
        raise ValueError("--suite_timeout needs --isolate (a suite can only be stopped in its own process)")
    hw = hardware()
    rows: list[BenchRow] = []
    records: list[SuiteRecord] = []

    def on_term(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        raise _Interrupted()

    previous = signal.signal(signal.SIGTERM, on_term) if isolate else None
    try:
        for name in suites:
            if name in skip:
                rec = SuiteRecord(name, "skipped", 0.0, 0, "", [{"what": "the whole suite", "reason": "--skip_suites"}])
                records.append(rec)
                print(suite_line(rec), flush=True)
                continue
            print(f"== bench {name}{' (quick)' if args.quick else ''}"
                  f"{f' (own process, limit {timeouts[name]:.0f} s)' if isolate and timeouts[name] else ''}",
                  flush=True)
            try:
                if isolate:
                    suite_rows, rec = _run_isolated(name, args.quick, timeouts[name])
                else:
                    suite_rows, rec = _run_in_process(name, args.quick)
            except _Interrupted:
                records.append(SuiteRecord(name, "interrupted", 0.0, 0, "SIGTERM reached the runner"))
                break
            records.append(rec)
            rows.extend(suite_rows)
            if suite_rows:
                print(format_table(suite_rows), flush=True)
            print(suite_line(rec), flush=True)
            if args.json_out:
                write_json(args.json_out, bench_payload(rows, records, False, hw))
            if rec.status == "interrupted":
                break
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    complete = len(records) == len(suites) and all(r.status != "interrupted" for r in records)
    payload = bench_payload(rows, records, complete, hw)
    if isolate or len(suites) > 1:  # a suite's own process leaves the summary to the runner
        print("== summary\n" + summary_table(payload), flush=True)
    if args.json_out:
        write_json(args.json_out, payload)
        print(f"wrote {args.json_out}")
    md = getattr(args, "md_out", "")
    if md:
        from fastccreid.bench.report import write_markdown

        write_markdown(payload, rows, md)
        print(f"wrote {md}")
    if args.out:
        from fastccreid.bench.report import write_report

        write_report(payload, rows, args.out)
        print(f"wrote report to {args.out}")
    failed = [r.suite for r in records if r.status not in ("ok", "skipped")]
    if failed:
        print(f"== bench: {', '.join(failed)} did not finish (see 'suites' in the JSON)", flush=True)
    return 1 if failed or not complete else 0
