"""No hidden host syncs in the training step's input path (issue 13).

Without a GPU, the ``meta`` device stands in for CUDA: a host-to-device copy shows up as ``aten._to_copy`` /
``aten.copy_`` from a CPU tensor to a meta one (TorchDispatchMode), and a constant built on the device as a
``torch.tensor(..., device=...)`` call (TorchFunctionMode). The checks: the normalisation constants are built once
per (device, dtype) and a steady-state ``to_model_input`` makes no copy at all; host data (labels, erase boxes,
indices) goes with ``non_blocking=True`` (from pinned memory when CUDA is available; that part needs a GPU).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from fastccreid.data import transforms
from fastccreid.data.batch import Batch, labels_on_device, to_model_input
from fastccreid.data.records import ImageRecord
from fastccreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD, host_to_device, norm_constants

DEV = torch.device("meta")


class HostTraffic(TorchDispatchMode):
    """Records every host-to-device copy (CPU source, non-CPU result) with its ``non_blocking`` flag."""

    def __init__(self):
        super().__init__()
        self.copies: list[tuple[str, bool]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst = out if isinstance(out, torch.Tensor) else None
            if src.device.type == "cpu" and dst is not None and dst.device.type != "cpu":
                self.copies.append((name, bool(kwargs.get("non_blocking", False) or
                                               (name == "copy_" and len(args) > 2 and args[2]))))
        return out


class DeviceConstants(TorchFunctionMode):
    """Counts ``torch.tensor(..., device=<not cpu>)`` calls: a Python list sent to the device (a blocking copy)."""

    def __init__(self):
        super().__init__()
        self.built = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.tensor and torch.device(kwargs.get("device", "cpu")).type != "cpu":
            self.built += 1
        return func(*args, **kwargs)


def _batch(device, boxes_device, b=3, h=8, w=6):
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=gen).to(device)
    erase = torch.tensor([[1, 1, 2, 2], [0, 0, 0, 0], [2, 3, 3, 2]], dtype=torch.int32).to(boxes_device)
    valid = torch.tensor([[0, 0, h, w], [1, 0, h - 2, w], [0, 1, h, w - 2]], dtype=torch.int32).to(boxes_device)
    lab = torch.zeros(b, dtype=torch.int64, device=device)
    return Batch(images, lab, lab, lab, lab, False, erase, valid)


def _step(batch):
    """What the trainer does with a batch on the data side: the model input."""
    return to_model_input(batch, channels_last=True, dtype=torch.float32)


def test_normalisation_constants_are_built_once_per_device_and_dtype():
    transforms._cached_norm_constants.cache_clear()
    batch = _batch(DEV, DEV)
    first = DeviceConstants()
    with first:
        _step(batch)
    assert first.built > 0  # the first step builds them (scale, shift rows and the fill colour)
    for dtype in (torch.float32, torch.bfloat16):
        for _ in range(2):
            again = DeviceConstants()
            with again:
                to_model_input(batch, dtype=dtype)
            if dtype == torch.float32:
                assert again.built == 0, "a steady-state step built device constants again (a blocking copy)"
    assert norm_constants(DEV, torch.float32, 6)[0] is norm_constants(DEV, torch.float32, 6)[0]
    assert norm_constants(DEV, torch.bfloat16)[1] is not norm_constants(DEV, torch.float32)[1]  # per dtype
    sc, sh = norm_constants(torch.device("cpu"), torch.float32, 2)
    want_sc = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD] * 2)
    want_sh = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)] * 2)
    assert torch.equal(sc, want_sc) and torch.equal(sh, want_sh)


def test_constants_are_plain_tensors_when_first_built_in_inference_mode():
    transforms._cached_norm_constants.cache_clear()
    with torch.inference_mode():
        sc, _ = norm_constants(torch.device("cpu"), torch.float64, 3)
    assert not sc.is_inference()


def test_steady_state_step_makes_no_host_to_device_copy():
    batch = _batch(DEV, DEV)
    _step(batch)  # warm-up: constants built
    traffic, consts = HostTraffic(), DeviceConstants()
    with consts, traffic:
        _step(batch)
    assert traffic.copies == [] and consts.built == 0


def test_host_boxes_are_sent_without_blocking():
    """Boxes still on the host (a loader that left them there) are sent with non_blocking=True."""
    batch = _batch(DEV, "cpu")
    _step(batch)
    traffic = HostTraffic()
    with traffic:
        _step(batch)
    assert len(traffic.copies) == 2 and all(nb for _, nb in traffic.copies), traffic.copies


def test_labels_and_host_to_device_do_not_block():
    records = [ImageRecord(f"{i}.jpg", i % 3, i % 2, i % 4) for i in range(6)]
    traffic = HostTraffic()
    with traffic:
        pids, camids, clothes = labels_on_device(records, np.array([4, 1, 5]), DEV)
        idx = host_to_device(torch.arange(3), DEV)
    assert pids.device == DEV and idx.device == DEV
    assert len(traffic.copies) == 2 and all(nb for _, nb in traffic.copies), traffic.copies
    pids, camids, clothes = labels_on_device(records, np.array([4, 1, 5]), torch.device("cpu"))
    assert pids.tolist() == [1, 1, 2] and camids.tolist() == [0, 1, 1] and clothes.tolist() == [0, 1, 1]
    t = torch.arange(4)
    assert host_to_device(t, "cpu") is t  # CPU: no copy, no pinning


def _borrowed(rows: int = 3) -> tuple[np.ndarray, torch.Tensor]:
    """A DALI-like output: a tensor viewing a buffer its owner refills at the next iteration."""
    buffer = np.arange(rows * 8, dtype=np.float32).reshape(rows, 8)
    return buffer, torch.from_numpy(buffer)


def test_borrowed_host_buffers_are_copied_before_they_leave():
    """DALI's CPU outputs (erase / valid boxes, indices) are valid for one iteration only: what the loader hands
    on owns its data, so refilling the buffer changes nothing already handed out."""
    buffer, view = _borrowed()
    out = transforms.borrowed_host_to_device(view, "cpu")
    buffer[:] = -1  # DALI reuses the buffer for the next batch
    assert torch.equal(out, torch.arange(24, dtype=torch.float32).reshape(3, 8))


def test_borrowed_buffers_reach_cuda_from_a_staged_pinned_copy(monkeypatch):
    """Where CUDA is available the non-blocking copy's source is a fresh pinned copy (torch's caching host
    allocator keeps it until the copy has run), never the borrowed view itself, even when that view is already
    pinned (``host_to_device`` would copy from it directly). The meta device stands in for CUDA, a clone for the
    pinned copy."""
    staged: list[torch.Tensor] = []

    def fake_pinned_copy(t):
        staged.append(t.clone())
        return staged[-1]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(transforms, "pinned_copy", fake_pinned_copy)
    buffer, view = _borrowed()
    traffic = HostTraffic()
    with traffic:
        out = transforms.borrowed_host_to_device(view, DEV)
    assert out.device == DEV and out.shape == view.shape
    assert len(staged) == 1 and staged[0].data_ptr() != view.data_ptr()
    assert traffic.copies and all(non_blocking for _, non_blocking in traffic.copies), traffic.copies
