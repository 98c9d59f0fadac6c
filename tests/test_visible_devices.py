"""``--gpu_devices`` reaches CUDA_VISIBLE_DEVICES before CUDA first enumerates devices, ``--dist_backend gloo`` with
CUDA devices (ranks sharing a GPU), the process group's timeout, and ``--deterministic``'s CUDA settings.

No GPU here: ``FakeCuda`` stands in for the driver. Like CUDA it reads CUDA_VISIBLE_DEVICES once, at the first
device query, and ignores later changes; ``set_device(i)`` records which physical GPU index ``i`` then is."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch

from fastccreid.engine import distributed


class FakeCuda:
    def __init__(self, physical=("0", "1")):
        self.physical = list(physical)
        self.visible: list[str] | None = None
        self.chosen: list[str] = []

    def _enumerate(self) -> list[str]:
        if self.visible is None:  # CUDA's rule: the variable counts only before the first query
            v = os.environ.get("CUDA_VISIBLE_DEVICES")
            self.visible = self.physical if v is None else [d for d in v.split(",") if d in self.physical]
        return self.visible

    def is_available(self) -> bool:
        return bool(self._enumerate())

    def device_count(self) -> int:
        return len(self._enumerate())

    def set_device(self, index) -> None:
        self.chosen.append(self._enumerate()[index])


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCuda()
    for name in ("is_available", "device_count", "set_device"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    for var in ("CUDA_VISIBLE_DEVICES", "WORLD_SIZE", "RANK", "LOCAL_RANK", distributed.INIT_METHOD_ENV,
                distributed.TIMEOUT_ENV):
        monkeypatch.delenv(var, raising=False)
    return fake


class _NoTrainer:
    """Stands in for Trainer: records the context the CLI built and trains nothing."""

    seen: list = []

    def __init__(self, cfg, ctx, log):
        _NoTrainer.seen.append(ctx)

    def fit(self) -> int:
        return 0


@pytest.mark.parametrize("gpu_devices, physical", [("1", "1"), ("0", "0"), ("1,0", "1")])
def test_gpu_devices_choose_the_physical_gpu_through_the_cli(fake_cuda, monkeypatch, tmp_path, gpu_devices,
                                                             physical):
    from fastccreid.cli import main
    from fastccreid.engine import trainer

    monkeypatch.setattr(trainer, "Trainer", _NoTrainer)
    monkeypatch.setattr(trainer, "check_data", lambda cfg: None)  # no dataset here: only the device choice is tested
    _NoTrainer.seen.clear()
    code = main(["train", "--gpu_devices", gpu_devices, "--nproc", "1", "--save_dir", str(tmp_path), "--no_progress"])
    assert code == 0
    assert fake_cuda.chosen == [physical]  # one process on the GPU the flag names, not physical GPU 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == gpu_devices
    assert _NoTrainer.seen[0].device == torch.device("cuda", 0)


def test_run_train_sets_the_variable_before_its_first_cuda_query(fake_cuda, monkeypatch, tmp_path):
    """The API entry (and a launched rank) without the CLI: run_train itself applies --gpu_devices first."""
    from fastccreid.engine import trainer
    from fastccreid.engine.config import TrainConfig

    monkeypatch.setattr(trainer, "Trainer", _NoTrainer)
    monkeypatch.setattr(trainer, "check_data", lambda cfg: None)
    cfg = TrainConfig(gpu_devices="1", save_dir=str(tmp_path), no_progress=True, nproc=1)
    assert trainer.run_train(cfg) == 0
    assert fake_cuda.chosen == ["1"]


def _record_init(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    return calls


def test_gloo_on_cuda_lets_two_ranks_share_one_gpu(fake_cuda, monkeypatch):
    calls = _record_init(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # a one-GPU machine
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ctx = distributed.setup(gpu_devices="0", dist_backend="gloo")
    assert ctx.backend == "gloo" and ctx.device == torch.device("cuda", 0) and fake_cuda.chosen == ["0"]
    assert calls[0]["backend"] == "gloo" and calls[0]["device_id"] is None
    assert calls[0]["timeout"] == timedelta(seconds=distributed.DEFAULT_TIMEOUT_S)
    # NCCL (auto on CUDA) cannot put rank 1 on a machine with one visible GPU: a clear error, not a hang
    with pytest.raises(ValueError, match="local rank 1 has no GPU.*--dist_backend gloo"):
        distributed.setup(gpu_devices="0")


def test_auto_is_nccl_on_cuda_with_the_configured_timeout(fake_cuda, monkeypatch):
    calls = _record_init(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7200")
    ctx = distributed.setup(gpu_devices="0,1")
    assert ctx.backend == "nccl" and fake_cuda.chosen == ["1"]
    assert calls[0]["timeout"] == timedelta(seconds=7200) and calls[0]["device_id"] == torch.device("cuda", 1)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
        distributed.collective_timeout()


def test_dist_backend_flag_is_validated():
    from fastccreid.engine.config import TrainConfig

    with pytest.raises(ValueError, match="--dist_backend must be one of auto, nccl, gloo"):
        TrainConfig(dist_backend="mpi").validate()
    with pytest.raises(ValueError, match="--dist_backend nccl needs CUDA"):
        TrainConfig(dist_backend="nccl", use_cpu=True).validate()


def test_resolve_nproc_allows_shared_gpus_only_with_gloo():
    from fastccreid.engine.config import TrainConfig
    from fastccreid.engine.launch import resolve_nproc

    assert resolve_nproc(TrainConfig(gpu_devices="0", nproc=2, dist_backend="gloo"), cuda_available=True) == 2
    with pytest.raises(ValueError, match="--dist_backend gloo"):
        resolve_nproc(TrainConfig(gpu_devices="0", nproc=2), cuda_available=True)


def test_deterministic_on_cuda_turns_on_deterministic_algorithms(monkeypatch):
    from fastccreid.engine.trainer import apply_deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        apply_deterministic(True, torch.device("cpu"))  # CPU: cuDNN flags only, the global mode untouched
        assert not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        apply_deterministic(True, torch.device("cuda", 0))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
