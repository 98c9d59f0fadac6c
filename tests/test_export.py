"""``fastccreid export --format onnx``: the ONNX graph passes ``onnx.checker`` and computes the evaluation-mode model's
features in ONNX Runtime (CPU) for two batch sizes as torch does in fp32 (the seed's flip-TTA, L2-normalised feature
within 1e-4); bad arguments are named."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from fastccreid.cli import main
from fastccreid.engine.checkpoint import save_checkpoint
from fastccreid.engine.config import TrainConfig
from fastccreid.models import CSSC

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'fastccreid[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'fastccreid[onnx]')")

H, W = 128, 32  # the smallest size CSSC takes: a quick export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = CSSC(4, pretrained=None).eval()  # random init: the export does not depend on the weights
    ck = save_checkpoint({"model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                          "fastccreid": {"format": 1, "config": TrainConfig(height=H, width=W).to_dict()}},
                         str(tmp / "ck.pth"))
    out = str(tmp / "model.onnx")
    assert main(["export", "--resume", ck, "--format", "onnx", "--out", out, "--dynamic-batch"]) == 0
    return {"tmp": tmp, "ck": ck, "model": model, "onnx": out}


def _run(path: str, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "images"
    return sess.run(["features"], {"images": x.numpy()})[0]


def _close_raw(got: np.ndarray, ref: np.ndarray) -> None:
    """Raw features: within 1e-4 of their scale. A random-init CSSC's features reach ~100 (BN running stats are
    the init's 0 / 1), where fp32 itself differs from fp64 by ~1e-4; relative to the scale, export bugs (a
    missing branch, train-mode BN, a wrong pooling) are off by O(1)."""
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


def _seed_feature(f: np.ndarray) -> np.ndarray:
    """[2B, D] outputs of (images, mirrored images) -> the seed's test feature normalize(f(x) + f(flip x)) [B, D]."""
    b = f.shape[0] // 2
    s = f[:b].astype(np.float64) + f[b:]
    return s / np.linalg.norm(s, axis=1, keepdims=True)


def test_onnx_runtime_matches_torch(exported):
    onnx.checker.check_model(exported["onnx"])
    model = exported["model"]
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 5):  # one graph, two batch sizes (neither is the traced example's 2)
        x = torch.randn(batch, 3, H, W, generator=gen)
        both = torch.cat([x, torch.flip(x, dims=[3])])
        with torch.no_grad():
            ref = model(both).numpy()
        got = _run(exported["onnx"], both)
        _close_raw(got, ref)
        # The feature that is compared (flip TTA, L2-normalised): within 1e-4, absolute.
        np.testing.assert_allclose(_seed_feature(got), _seed_feature(ref), atol=1e-4, rtol=0)


def test_static_batch_torchscript_exporter(exported):
    out = str(exported["tmp"] / "static.onnx")
    assert main(["export", "--resume", exported["ck"], "--format", "onnx", "--out", out, "--batch", "3",
                 "--exporter", "torchscript", "--opset", "17"]) == 0
    proto = onnx.load(out)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 3, H, W]  # fixed batch, the checkpoint's size
    x = torch.randn(3, 3, H, W, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = exported["model"](x).numpy()
    _close_raw(_run(out, x), ref)


def test_bad_arguments_are_named(exported, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", "--resume", exported["ck"], "--format", "tensorrt", "--out", str(tmp_path / "m")])
    assert re.search(r"--format: invalid choice: 'tensorrt' \(choose from '?onnx'?\)", capsys.readouterr().err)
    missing = str(tmp_path / "missing.pth")
    assert main(["export", "--resume", missing, "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert missing in err and "no such checkpoint" in err
    assert main(["export", "--resume", exported["ck"], "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--height", "64"]) == 2
    assert "at least 128x32" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing half-written
