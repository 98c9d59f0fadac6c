"""``fastccreid export --format onnx``: the ONNX graph passes ``onnx.checker``; the default graph's output is the
evaluation feature itself (``FeatureExtractor``'s, within 1e-4, at batch 1 and 6); ``--raw`` (the older graph)
computes the evaluation-mode model's output in ONNX Runtime (CPU) for two batch sizes as torch does in fp32 (the
seed's flip-TTA, L2-normalised feature within 1e-4); ``--verify`` passes a good export (default and raw) and fails
(exit 1) a graph built with the wrong normalisation constants; bad arguments are named."""

from __future__ import annotations

import contextlib
import io
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
    assert main(["export", "--resume", ck, "--format", "onnx", "--out", out, "--dynamic-batch", "--raw"]) == 0
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
                 "--exporter", "torchscript", "--opset", "17", "--raw"]) == 0
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


# ---------------------------------------------------------------------------------------- the feature graph, --verify
def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def feature_graph(exported):
    """The default export (the evaluation feature) of the same checkpoint, exported and verified in one command on
    a tiny synthetic LTCC."""
    from helpers.train_cases import make_tiny_ltcc

    root = make_tiny_ltcc(str(exported["tmp"] / "ltcc"))
    out = str(exported["tmp"] / "feature.onnx")
    verify = ["--dataset", "ltcc", "--dataset_root", root, "--dataset_filename", "", "--use_cpu", "--test_batch", "16"]
    code, stdout, stderr = _cli(["export", "--resume", exported["ck"], "--format", "onnx", "--out", out,
                                 "--dynamic-batch", "--verify", *verify])
    return {**exported, "feature": out, "root": root, "verify": verify, "code": code, "stdout": stdout,
            "stderr": stderr}


def test_default_graph_is_the_feature_extractor_feature(feature_graph):
    from fastccreid.inference import FeatureExtractor

    proto = onnx.load(feature_graph["feature"])
    assert {p.key: p.value for p in proto.metadata_props}["fastccreid.output"] == "feature"
    fx = FeatureExtractor(feature_graph["ck"], device="cpu")
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 6):
        x = torch.randn(batch, 3, H, W, generator=gen)  # ImageNet-normalised images
        got = _run(feature_graph["feature"], x)
        ref = fx.features(x).numpy()
        assert got.shape == (batch, 2048)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised in the graph
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
        # the flip is inside: the mirrored image has the same feature (the TTA sum is symmetric)
        np.testing.assert_allclose(_run(feature_graph["feature"], torch.flip(x, dims=[3])), got, atol=1e-4, rtol=0)


def _table_map(stdout: str) -> dict[str, tuple[float, float]]:
    rows = re.findall(r"^(general|clothes-changing)\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)", stdout, re.M)
    return {name: (float(t), float(o)) for name, t, o, _ in rows}


def test_verify_passes_a_good_export(feature_graph):
    assert feature_graph["code"] == 0, feature_graph["stderr"][-3000:]
    out = feature_graph["stdout"]
    assert "PASS" in out and "tolerance 0.1 mAP points" in out
    maps = _table_map(out)
    assert set(maps) == {"general", "clothes-changing"}
    assert all(abs(t - o) <= 0.1 for t, o in maps.values())
    diff = float(re.search(r"largest \|feature difference\| (\S+)", out).group(1))
    assert diff < 1e-4
    # the raw graph (flip and normalisation applied outside it) passes too
    code, out, err = _cli(["export", "--resume", feature_graph["ck"], "--format", "onnx", "--out",
                           feature_graph["onnx"], "--verify-only", *feature_graph["verify"]])
    assert code == 0, err[-3000:]
    raw = _table_map(out)
    assert "(raw graph" in out and {k: t for k, (t, _) in raw.items()} == {k: t for k, (t, _) in maps.items()}
    assert all(abs(t - o) <= 0.1 for t, o in raw.values())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice
def test_verify_fails_a_graph_with_the_wrong_normalisation(feature_graph, tmp_path):
    """A graph that re-normalises its input with mean 0.5 / std 0.5 instead of ImageNet's (fast-reid#465's kind of
    preprocessing mismatch): --verify-only exits 1 and says FAIL."""
    from fastccreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from fastccreid.deploy import EvalFeature

    class WrongConstants(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.feature = EvalFeature(model)
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, images):
            rgb = images * self.std + self.mean  # back to [0, 1], then the wrong constants
            return self.feature((rgb - 0.5) / 0.5)

    bad = str(tmp_path / "bad.onnx")
    torch.onnx.export(WrongConstants(feature_graph["model"]).eval(), (torch.zeros(2, 3, H, W),), bad, dynamo=False,
                      input_names=["images"], output_names=["features"],
                      dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
    code, out, err = _cli(["export", "--resume", feature_graph["ck"], "--format", "onnx", "--out", bad,
                           "--verify-only", *feature_graph["verify"]])
    assert code == 1, err[-3000:]
    assert "FAIL" in out
    maps = _table_map(out)
    assert max(abs(t - o) for t, o in maps.values()) > 0.1


def test_verify_usage_errors_are_named(feature_graph, tmp_path):
    code, _, err = _cli(["export", "--resume", feature_graph["ck"], "--format", "onnx", "--out",
                         feature_graph["feature"], "--verify-only"])
    assert code == 2 and "--verify needs the evaluation data: --dataset NAME (one of" in err
    code, _, err = _cli(["export", "--resume", feature_graph["ck"], "--format", "onnx", "--out",
                         str(tmp_path / "none.onnx"), "--verify-only", *feature_graph["verify"]])
    assert code == 2 and "none.onnx is not an ONNX file to verify" in err
    code, _, err = _cli(["export", "--resume", feature_graph["ck"], "--format", "onnx", "--out",
                         feature_graph["feature"], "--verify-only", *feature_graph["verify"], "--tolerance", "-1"])
    assert code == 2 and "--tolerance must be a number of mAP points >= 0" in err
