"""Checkpoints: atomic writes, best copies, safe loading of official-style files (numpy scalars allowed, anything
else refused without running it), clear errors for corrupt / empty / foreign files, RNG round trip."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from fastccreid.engine.checkpoint import (
    BEST_MAP_NAME,
    BEST_RANK1_NAME,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _small_state() -> dict:
    lin = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam([{"params": lin.parameters(), "initial_lr": 3e-4}], lr=3e-4, weight_decay=5e-4)
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    from fastccreid.reference.scheduler import WarmupMultiStepLR

    sched = WarmupMultiStepLR(opt, milestones=[30, 60], gamma=0.1, warmup_factor=0.1)
    opt.step()
    sched.step()
    return {"model_state_dict": lin.state_dict(), "optimizer_state_dict": opt.state_dict(),
            "scheduler_state_dict": sched.state_dict(), "scaler_state_dict": torch.amp.GradScaler("cpu").state_dict(),
            "epoch": 4, "resume_step": 0, "rng": rng_state(), "best": {"best": {"general": {"mAP": 0.5}}, "last": {}},
            "fastccreid": {"format": 1, "num_classes": 3, "dataset": "ltcc"}}


def test_save_is_atomic_and_round_trips_with_best_copies(tmp_path):
    state = _small_state()
    path = str(tmp_path / "run" / "checkpoint_ep5.pth")
    save_checkpoint(state, path, is_best_map=True, is_best_rank1=False)
    assert os.path.isfile(path) and os.path.isfile(tmp_path / "run" / BEST_MAP_NAME)
    assert not os.path.exists(tmp_path / "run" / BEST_RANK1_NAME)
    assert not [f for f in os.listdir(tmp_path / "run") if f.endswith(".tmp")]
    back = load_checkpoint(path)
    assert back["epoch"] == 4 and back["fastccreid"]["dataset"] == "ltcc"
    for k, v in state["model_state_dict"].items():
        assert torch.equal(back["model_state_dict"][k], v)
    assert back["scheduler_state_dict"]["last_epoch"] == state["scheduler_state_dict"]["last_epoch"]
    best = load_checkpoint(str(tmp_path / "run" / BEST_MAP_NAME))
    assert best["epoch"] == 4


def test_failed_save_leaves_the_previous_file_and_no_temp(tmp_path):
    path = str(tmp_path / "c.pth")
    save_checkpoint({"model_state_dict": {"w": torch.ones(2)}, "epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        save_checkpoint({"model_state_dict": {"w": torch.zeros(2)}, "bad": lambda: 0}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pth"]


def test_official_checkpoint_with_numpy_scalars_and_module_prefix_loads(tmp_path):
    """The seed saves rank1 = cmc[0] (np.float32) and mAP = np.mean(...) (np.float64) next to the weights."""
    path = str(tmp_path / "official.pth")
    sd = {"module.classifier.weight": torch.randn(5, 8)}
    torch.save({"model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []},
                "rank1": np.float32(0.781), "mAP": np.float64(0.402), "epoch": np.int64(119)}, path)
    ck = load_checkpoint(path)
    assert isinstance(ck["mAP"], np.float64) and ck["mAP"] == np.float64(0.402)
    assert ck["rank1"] == np.float32(0.781) and int(ck["epoch"]) == 119
    check_compatible(ck, path, num_classes=5, dataset="ltcc")
    with pytest.raises(CheckpointError, match="5 classes but dataset 'prcc' has 150"):
        check_compatible(ck, path, num_classes=150, dataset="prcc")


class _Evil:
    """Unpickling this would create a file: it must never run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_objects_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth")
    torch.save({"model_state_dict": {"w": torch.ones(1)}, "payload": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refusing") as e:
        load_checkpoint(path)
    assert "open" in str(e.value)
    assert not marker.exists()
    path2 = str(tmp_path / "ndarray.pth")
    torch.save({"model_state_dict": {"w": torch.ones(1)}, "arr": np.zeros(3)}, path2)
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(path2)


def test_corrupt_empty_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(str(tmp_path / "absent.pth"))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(str(empty))
    good = tmp_path / "good.pth"
    torch.save({"model_state_dict": {"w": torch.randn(64, 64)}, "epoch": 0}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(str(truncated))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match=str(garbage.name)):
        load_checkpoint(str(garbage))
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "note": "no weights"}, other)
    with pytest.raises(CheckpointError, match="no 'model_state_dict'.*epoch"):
        load_checkpoint(str(other))
    bare = tmp_path / "bare.pth"
    torch.save({"classifier.weight": torch.ones(2, 2)}, bare)
    assert list(load_checkpoint(str(bare))["model_state_dict"]) == ["classifier.weight"]


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = str(tmp_path / "rng.pth")
    save_checkpoint({"model_state_dict": {}, "rng": rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
