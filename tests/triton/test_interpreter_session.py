"""Runs this folder's kernel tests as their own pytest session under TRITON_INTERPRET=1 (see conftest.py): the
interpreter must be chosen before the kernel modules are imported, which this CPU-only session did without it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cores import usable_cores

HERE = Path(__file__).resolve().parent


@pytest.mark.triton
@pytest.mark.timeout(1500)  # ~3 min on a quiet 2-core EPYC, several times that on a loaded one
def test_kernels_under_the_interpreter():
    pytest.importorskip("triton")
    # the interpreter runs each program in Python, one core a process: with pytest-xdist (the dev extra) the
    # session's tests go to one worker per core (OMP 1 each), about half the wall time on 2 cores; serial without
    workers = min(4, usable_cores()) if importlib.util.find_spec("xdist") else 1
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1" if workers > 1 else "2")
    env.pop("FASTCCREID_BACKEND", None)
    files = sorted(str(p) for p in HERE.glob("test_triton_*.py"))
    assert files, f"no test_triton_*.py in {HERE}"
    par = ["-n", str(workers)] if workers > 1 else []
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *par, *files],
                         cwd=HERE.parent.parent, env=env, capture_output=True, text=True, timeout=1440)
    report = out.stdout[-8000:] + ("\n" + out.stderr[-2000:] if out.stderr.strip() else "")
    assert out.returncode == 0, f"Triton interpreter session failed (exit {out.returncode}):\n{report}"
    assert " passed" in out.stdout and " skipped" not in out.stdout, report
