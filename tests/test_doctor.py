"""``fastccreid doctor``: the CPU branch through the CLI, its JSON report, a wrong twin failing it, skipped checks
reported as skipped (never passed), the report streamed and its JSON rewritten after every check, SIGTERM closing
it, a check in its own bounded process, the compiled train / eval cycle check on a small model, the DALI CUDA
version parser and the fp64 routing of the Triton ops (pure functions of dtype / device: no GPU needed)."""

from __future__ import annotations

import json

import pytest
import torch

from fastccreid import doctor
from fastccreid.cli import main
from fastccreid.data.dali import dali_cuda_major, dali_status


@pytest.mark.parametrize("value, major", [
    ("12.1.105", 12), ("12.0", 12), ("13.4.92", 13), ("11.8", 11),
    (121105, 12), (13492, 13), (1180, 11), (120, 12), (12000, 12), (13000, 13), ("121105", 12),
    (0, 0), (None, 0), ("", 0), ("n/a", 0),
])
def test_dali_cuda_major_reads_dali_encoding(value, major):
    assert dali_cuda_major(value) == major


def test_dali_cuda_major_matches_installed_dali():
    dali = pytest.importorskip("nvidia.dali")
    # DALI's own reading (nvidia/dali/backend.py) of its own encoding
    assert dali_cuda_major(dali.__cuda_version__) == int(str(dali.__cuda_version__)[:2])


def _fake(dtype, device):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return torch.empty(4, 8, dtype=dtype, device=device)


def test_fp64_cuda_inputs_route_to_torch(monkeypatch):
    pytest.importorskip("triton")
    from fastccreid.kernels._backend import kernel_backend

    monkeypatch.delenv("FASTCCREID_BACKEND", raising=False)
    for backend in ("auto", "triton"):
        assert kernel_backend(backend, _fake(torch.float64, "cuda")) == "torch"
        assert kernel_backend(backend, _fake(torch.float32, "cuda"), _fake(torch.float64, "cuda")) == "torch"
        assert kernel_backend(backend, _fake(torch.float32, "cuda")) == "triton"
        assert kernel_backend(backend, _fake(torch.bfloat16, "cuda")) == "triton"
    assert kernel_backend("auto", _fake(torch.float32, "cpu")) == "torch"
    rows = doctor.backend_choices(devices=("cuda",), dtypes=(torch.float64, torch.float32))
    assert {r["backend"] for r in rows if r["dtype"] == "float64"} == {"torch"}
    # CUDA evaluation stays on the torch path under "auto" until a GPU has timed both (kernels/_backend.py)
    assert {(r["op"], r["backend"]) for r in rows if r["dtype"] == "float32"} == {
        (op, "torch" if op == "rank_stats" else "triton") for op in doctor.OPS}
    assert {r["op"] for r in rows} == set(doctor.OPS)


def test_doctor_cli_cpu_branch_passes_and_writes_the_schema(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert main(["doctor", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    dali_ok, dali_why = dali_status(torch.device("cpu"))
    assert ("all checks passed" in text) == dali_ok and "backend='auto'" in text
    report = json.loads(out.read_text())
    assert report["schema"] == doctor.SCHEMA and report["ok"] is True and report["complete"] is True
    env = report["environment"]
    for key in ("torch", "torch_cuda", "cudnn", "triton", "dali", "cuda_majors", "cuda_majors_match", "bf16"):
        assert key in env
    assert isinstance(env["bf16"]["cpu_native"], bool)
    assert {(r["op"], r["device"], r["dtype"]) for r in report["backends"]} >= {
        (op, "cuda", "float64") for op in doctor.OPS}
    names = [c["name"] for c in report["checks"]]
    assert any("reference" in n for n in names)
    assert any("TRITON_INTERPRET" in n for n in names) == doctor_has_triton()
    dali = [c for c in report["checks"] if c["name"].startswith("dali cpu decode")]
    assert len(dali) == 1
    if dali_ok:
        assert dali[0]["status"] == "ok"
    else:  # DALI absent: skipped with the reason, never "ok"
        assert dali[0]["status"] == "skipped" and dali[0]["ok"] is None and dali[0]["detail"] == dali_why
        assert "[skipped] dali cpu decode" in text and "1 skipped" in text
    for c in report["checks"]:
        assert set(c) == {"name", "ok", "detail", "seconds", "status"}
        assert c["status"] == "skipped" or (c["ok"] is True and c["status"] == "ok")
    assert report["counts"]["fail"] == 0 and report["not_run"] == []


def doctor_has_triton() -> bool:
    from fastccreid.kernels._backend import triton_available

    return triton_available()


def test_a_wrong_twin_fails_the_doctor(tmp_path):
    from fastccreid.kernels import pairwise_distance

    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    good = doctor.twin_check("euclid", lambda: pairwise_distance(x, x, "sqeuclidean", backend="torch"),
                             lambda: torch.cdist(x, x) ** 2, 1e-4)
    wrong = doctor.twin_check("euclid off by 1e-3", lambda: pairwise_distance(x, x, "sqeuclidean", backend="torch"),
                              lambda: torch.cdist(x, x) ** 2 + 1e-3, 1e-4)
    lines = []
    assert doctor.run_doctor(checks=[good], out=lines.append) == 0
    out = tmp_path / "r.json"
    assert doctor.run_doctor(str(out), checks=[good, wrong], out=lines.append) == 1
    report = json.loads(out.read_text())
    assert report["ok"] is False and [c["ok"] for c in report["checks"]] == [True, False]


def test_a_raising_check_is_a_failure_not_a_crash():
    def boom():
        raise RuntimeError("kernel exploded")

    res = doctor.run_checks([doctor.Check("boom", boom)])
    assert not res[0].ok and "kernel exploded" in res[0].detail
    assert doctor.run_doctor(checks=[doctor.Check("boom", boom)], out=lambda s: None) == 1


# The CUDA branch's helpers, run where a CPU can run them (the same code the GPU checks call)

@pytest.mark.dali
def test_dali_decode_check_pipeline_on_cpu():
    pytest.importorskip("nvidia.dali")
    ok, detail = doctor._dali_decode(torch.device("cpu"), decoder="cpu")
    assert ok, detail  # DALI's CPU decoder is libjpeg-turbo, as PIL: equal; flip / crop compare against the same


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_train_step_helper_on_cpu(amp):
    ok, detail = doctor._train_steps(torch.device("cpu"), amp, steps=2)
    assert ok and detail.startswith(amp), detail


def test_a_skipped_check_is_reported_skipped_never_passed(tmp_path):
    good = doctor.Check("good", lambda: (True, "fine"))
    skip = doctor.skipped_check("dali mixed decode vs CPU decode", "NVIDIA DALI does not import (no module)")
    lines: list[str] = []
    out = tmp_path / "r.json"
    assert doctor.run_doctor(str(out), checks=[good, skip], out=lines.append) == 0  # nothing failed
    text = "\n".join(lines)
    assert "all checks passed" not in text
    assert "[skipped] dali mixed decode vs CPU decode (skipped)" in text and "1 passed, 1 skipped" in text
    report = json.loads(out.read_text())
    assert report["counts"] == {"ok": 1, "fail": 0, "skipped": 1}
    assert [(c["status"], c["ok"]) for c in report["checks"]] == [("ok", True), ("skipped", None)]
    assert report["checks"][1]["detail"] == "NVIDIA DALI does not import (no module)"
    # a check may also decide at run time that it cannot run here
    res = doctor.run_checks([doctor.Check("sync mode", lambda: doctor.no_sync_check("cpu"))])
    assert res[0].status == "skipped" and "CUDA" in res[0].detail


def test_each_check_is_printed_and_the_json_rewritten_as_it_finishes(tmp_path):
    out = tmp_path / "r.json"
    lines: list[str] = []
    seen = {}

    def second():  # runs after the first: its line is out and the JSON on disk already holds it
        seen["lines"] = list(lines)
        seen["json"] = json.loads(out.read_text())
        return True, "second"

    checks = [doctor.Check("first", lambda: (True, "first")), doctor.Check("second", second),
              doctor.Check("third", lambda: (False, "third is wrong"))]
    assert doctor.run_doctor(str(out), checks=checks, out=lines.append) == 1
    assert any(line.startswith("  [ok] first") for line in seen["lines"])
    assert not any("second" in line for line in seen["lines"])
    partial = seen["json"]
    assert partial["complete"] is False and partial["ok"] is False
    assert [c["name"] for c in partial["checks"]] == ["first"] and partial["not_run"] == ["second", "third"]
    final = json.loads(out.read_text())
    assert final["complete"] is True and [c["status"] for c in final["checks"]] == ["ok", "ok", "fail"]
    assert lines[-1].startswith("== FAILED: 1 of 3")


_SIGTERM_DRIVER = """
import sys, time
from fastccreid import doctor
checks = [doctor.Check("quick", lambda: (True, "done")),
          doctor.Check("slow", lambda: (time.sleep(60), (True, "never"))[1])]
sys.exit(doctor.run_doctor(sys.argv[1], checks=checks))
"""


def test_sigterm_closes_the_report_with_the_checks_done(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "d.json"
    p = subprocess.Popen([sys.executable, "-c", _SIGTERM_DRIVER, str(out)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in p.stdout:  # printed as soon as it finished, unbuffered
            if "[ok] quick" in line:
                break
        time.sleep(0.5)
        p.send_signal(signal.SIGTERM)
        rest, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1
    assert "INTERRUPTED (SIGTERM during 'slow')" in rest
    report = json.loads(out.read_text())
    assert report["complete"] is False and report["interrupted"] == "SIGTERM during 'slow'"
    assert [c["name"] for c in report["checks"]] == ["quick"] and report["not_run"] == ["slow"]


def test_a_check_in_its_own_process_and_its_time_limit():
    name = "cpu topk_ranking (torch) vs reference argsort"
    check = next(c for c in doctor.cpu_checks() if c.name == name)
    r = doctor.run_isolated(check)
    assert r.status == "ok" and "max |diff| 0" in r.detail, r
    r = doctor.run_isolated(doctor.Check(name, check.fn, timeout_s=0.05))
    assert r.status == "fail" and "timed out after 0 s" in r.detail
    r = doctor.run_isolated(doctor.Check("no such check", check.fn))
    assert r.status == "fail" and "no default check named 'no such check'" in r.detail


class _TinyCSSC(torch.nn.Module):
    """CSSC's interface on a small net: train mode -> (5 features [B, 16], 5 logits [B, 6]); eval -> [B, 16]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=4), torch.nn.BatchNorm2d(16),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.heads = torch.nn.ModuleList(torch.nn.Linear(16, 6) for _ in range(5))

    def forward(self, x):
        f = self.body(x)
        if not self.training:
            return f
        feats = [f * (i + 1) for i in range(5)]
        return feats, [h(v) for h, v in zip(self.heads, feats, strict=True)]


def test_no_recompile_check_through_train_eval_and_the_padded_last_batch():
    ok, detail = doctor.no_recompile_check("cpu", _TinyCSSC(), size=(32, 16))
    assert ok, detail
    assert "eval 1 last batch 0" in detail and "train 2 0" in detail and "eval 2 0" in detail
    # the partial last batch unpadded is a new shape: the check catches the recompile
    ok, detail = doctor.no_recompile_check("cpu", _TinyCSSC(), size=(32, 16), pad_last=False)
    assert not ok and "eval 1 last batch 1" in detail, detail


def test_the_data_package_never_imports_the_doctor():
    """The doctor imports the DALI loader (its version parser lives there); nothing in fastccreid.data imports the
    doctor back, at the top or inside a function (the import circle data/dali.py <-> doctor.py is gone)."""
    import ast
    import os

    import fastccreid.data

    folder = os.path.dirname(fastccreid.data.__file__)
    found = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(folder, name)).read())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                    if isinstance(node, ast.ImportFrom) else [])
            found += [f"{name}: {m}" for m in mods if m == "fastccreid.doctor" or m.startswith("fastccreid.doctor.")]
    assert not found, found


def test_rerank_device_check_runs_and_is_a_cuda_check():
    """The GPU run's re-ranking parity (issue 27): the helper itself on the CPU (cpu vs cpu: identical), and it is
    among the checks a GPU machine runs."""
    import torch

    from fastccreid.doctor import cuda_checks, rerank_device_check

    ok, detail = rerank_device_check(torch.device("cpu"))
    assert ok and "identical" in detail and "max |diff| 0 " in detail, detail
    names = [c.name for c in cuda_checks(torch.device("cuda", 0))]
    assert "streamed re-ranking (cuda:0) vs cpu" in names
