"""``benchmarks/gpu_check.sh`` on a machine like the bare GPU one: a clean copy of the repository (the files git
knows), nothing installed from it, pip unable to reach an index, ``python3`` (or the torch 2.11 venv without DALI).

Default run: the set-up steps alone (the version line, the checkout importable from the copy, not from an installed
fastccreid). ``slow``: the whole script here (doctor CPU branches, quick CPU benches, CUDA parts skipped), exit 0,
at most 8 files, DALI's check skipped where DALI is absent. The runner's per-suite isolation, partial JSON and
skip records are tested fast in tests/test_bench_isolation.py and tests/test_doctor.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join("benchmarks", "gpu_check.sh")
OLDEST_VENV = "/root/.cache/fastccreid/venv-oldest/bin/python"

PYTHONS = [
    pytest.param(shutil.which("python3") or sys.executable, id="python3"),
    pytest.param(OLDEST_VENV, id="torch-2.11-venv", marks=pytest.mark.skipif(
        not os.path.exists(OLDEST_VENV), reason=f"the torch 2.11 / triton 3.6 venv is absent ({OLDEST_VENV})")),
]


def _clean_copy(dest) -> str:
    """The files git knows (tracked and not ignored), copied: no build outputs, no egg-info, no caches."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True)
    if listed.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout (git ls-files: {listed.stderr.decode().strip()})")
    names = listed.stdout.decode().split("\0")
    root = os.path.join(dest, "checkout")
    for name in filter(None, names):
        src = os.path.join(REPO, name)
        if not os.path.isfile(src):
            continue  # deleted in the working tree
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        shutil.copy2(src, os.path.join(root, name))
    return root


def _offline_env(python: str, **extra) -> dict[str, str]:
    """A minimal environment: pip has no index (PIP_NO_INDEX, empty PIP_FIND_LINKS), HTTP(S) goes to a closed
    port, and the repository under test is not on PYTHONPATH."""
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": "/usr/local/bin:/usr/bin:/bin",
           "PYTHON": python, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9", "TMPDIR": os.environ.get("TMPDIR", "/tmp")}
    env.update(extra)
    return env


@pytest.mark.parametrize("python", PYTHONS)
def test_setup_steps_make_the_clean_copy_importable_offline(tmp_path, python):
    root = _clean_copy(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(["bash", SCRIPT, str(out)], cwd=root, env=_offline_env(python, GPU_CHECK_ONLY="setup"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("gpu_check: python ") and all(
        k in lines[0] for k in ("torch ", "CUDA ", "cuDNN ", "triton ", "GPU ")), lines[0]
    # the package that ran is the copy's (an editable install elsewhere does not win), and nothing was installed
    assert f"fastccreid from {root}/fastccreid/__init__.py" in p.stdout, p.stdout
    assert f"kernels from {os.path.realpath(root)}/kernels/__init__.py" in p.stdout, p.stdout
    assert os.listdir(out) == ["gpu_check.log"]
    assert not [n for n in os.listdir(root) if n.endswith(".egg-info")]


def test_script_calls_python3_and_installs_nothing():
    text = open(os.path.join(REPO, SCRIPT)).read()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert 'PY="${PYTHON:-python3}"' in code
    assert "pip install" not in code and " python -m" not in code and "\npython " not in code


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_the_whole_script_runs_here_offline_and_exits_0(tmp_path, python):
    root = _clean_copy(tmp_path)
    out = tmp_path / "out"
    p = subprocess.run(["bash", SCRIPT, str(out)], cwd=root, env=_offline_env(python), capture_output=True,
                       text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
    files = sorted(os.listdir(out))
    assert len(files) <= 8 and {"gpu_check.log", "doctor.json", "bench.json", "bench.md", "multiproc.json"} <= set(
        files), files
    multiproc = json.loads((out / "multiproc.json").read_text())
    assert set(multiproc["checks"]) == {"compiled-global-bn", "cli-nproc-2-vs-1"}
    assert all(c["ok"] for c in multiproc["checks"].values()), multiproc
    doctor = json.loads((out / "doctor.json").read_text())
    assert doctor["complete"] and doctor["ok"] and doctor["counts"]["fail"] == 0
    has_dali = subprocess.run([python, "-c", "import nvidia.dali"], capture_output=True).returncode == 0
    dali = [c for c in doctor["checks"] if c["name"].startswith("dali ")]
    assert dali and all(c["status"] == ("ok" if has_dali else "skipped") for c in dali), dali
    bench = json.loads((out / "bench.json").read_text())
    status = {s["suite"]: s["status"] for s in bench["suites"]}
    assert bench["complete"] and status == {"kernels": "ok", "eval": "ok", "pipeline": "ok", "train": "skipped",
                                            "extract": "ok"}, bench["suites"]
    pipeline = next(s for s in bench["suites"] if s["suite"] == "pipeline")
    assert bool(pipeline["skipped"]) != has_dali  # the DALI rows: measured, or skipped with the reason
    assert "== gpu_check summary" in p.stdout and "(exit 0)" in p.stdout
    assert "CUDA parts are skipped" in p.stdout


def test_cuda_limits_end_the_script_within_8_minutes():
    """The CUDA branch's limits, read from the script: the suites fit the bench's limit, a doctor check fits the
    doctor's, and the deadline the bench limit is cut to, plus the kill grace, stays under 480 s (the GPU machine's
    8 minutes; its per-command limit is 10)."""
    import re

    from fastccreid.bench import SUITES, parse_suite_timeouts
    from fastccreid.doctor import CHECK_TIMEOUT_S

    text = open(os.path.join(REPO, SCRIPT)).read()
    branch = text[text.index('if [ "$cuda" = "1" ]; then'):text.index("else", text.index('if [ "$cuda" = "1" ]'))]
    values = dict(re.findall(r"(\w+)=\"?([\w=,]+)\"?", branch))
    t_doctor, t_bench, deadline = (int(values[k]) for k in ("t_doctor", "t_bench", "deadline"))
    suites = parse_suite_timeouts(values["suite_limits"])
    assert set(suites) == set(SUITES) and all(suites.values()), suites
    assert sum(suites.values()) <= t_bench
    assert CHECK_TIMEOUT_S <= t_doctor
    grace = {int(g) for g in re.findall(r"timeout --kill-after=(\d+)", text)}
    assert 'left=$(( deadline - SECONDS ))' in text and '[ "$left" -lt "$t_bench" ] && t_bench=$left' in text
    assert t_doctor + max(grace) < deadline and deadline + max(grace) + 10 <= 480, (deadline, grace)
    # the multi-process check runs only in what is left before its own deadline, past the bench's
    mp_deadline = int(values["mp_deadline"])
    assert 'left=$(( mp_deadline - SECONDS )); [ "$left" -lt "$t_mp" ] && t_mp=$left' in text
    assert deadline < mp_deadline and mp_deadline + 5 + 10 <= 480, mp_deadline  # (its own kill grace: 5 s)
    assert 'timeout --kill-after=5 "$t_mp"' in text
