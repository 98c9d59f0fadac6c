"""``fastccreid doctor``: the CPU branch through the CLI, its JSON report, a wrong twin failing it, the DALI CUDA
version parser and the fp64 routing of the Triton ops (pure functions of dtype / device: no GPU needed)."""

from __future__ import annotations

import json

import pytest
import torch

from fastccreid import doctor
from fastccreid.cli import main


@pytest.mark.parametrize("value, major", [
    ("12.1.105", 12), ("12.0", 12), ("13.4.92", 13), ("11.8", 11),
    (121105, 12), (13492, 13), (1180, 11), (120, 12), (12000, 12), (13000, 13), ("121105", 12),
    (0, 0), (None, 0), ("", 0), ("n/a", 0),
])
def test_dali_cuda_major_reads_dali_encoding(value, major):
    assert doctor.dali_cuda_major(value) == major


def test_dali_cuda_major_matches_installed_dali():
    dali = pytest.importorskip("nvidia.dali")
    # DALI's own reading (nvidia/dali/backend.py) of its own encoding
    assert doctor.dali_cuda_major(dali.__cuda_version__) == int(str(dali.__cuda_version__)[:2])


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
    assert "all checks passed" in text and "backend='auto'" in text
    report = json.loads(out.read_text())
    assert report["schema"] == doctor.SCHEMA and report["ok"] is True
    env = report["environment"]
    for key in ("torch", "torch_cuda", "cudnn", "triton", "dali", "cuda_majors", "cuda_majors_match", "bf16"):
        assert key in env
    assert isinstance(env["bf16"]["cpu_native"], bool)
    assert {(r["op"], r["device"], r["dtype"]) for r in report["backends"]} >= {
        (op, "cuda", "float64") for op in doctor.OPS}
    names = [c["name"] for c in report["checks"]]
    assert any("reference" in n for n in names)
    assert any("TRITON_INTERPRET" in n for n in names) == doctor_has_triton()
    for c in report["checks"]:
        assert set(c) == {"name", "ok", "detail", "seconds"} and c["ok"] is True


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
