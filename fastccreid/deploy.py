"""The exported feature and its proof: ``EvalFeature`` (the graph ``fastccreid export`` writes by default) and
``verify_onnx`` (``fastccreid export --verify``).

``EvalFeature`` is the seed's evaluation feature as one module: images float32 [B, 3, H, W] (RGB resized to H x W,
scaled to [0, 1], ImageNet-normalised) -> ``normalize(f(x) + f(flip(x)))`` [B, 2048] float32, the flip done inside
(one forward of the batch and its mirror, 2B images). What ONNX Runtime returns for it is what ``FeatureExtractor`` /
``fastccreid eval`` compute (within 1e-4), so a deployment re-implements neither the flip nor the normalisation.

``verify_onnx`` checks the exported file on a dataset's test sets: the same loader batches go through ONNX Runtime
and through torch (``FeatureExtractor.features``), both feature sets are evaluated under every setting the dataset
reports, and the mAP / R-1 of each, their difference and the largest feature difference are reported; the check
fails when an mAP differs by more than the tolerance (default 0.1 points): a preprocessing or export mismatch
(fast-reid#465's "all features alike") shows up as a number, not as a silent deployment.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GRAPH_KIND_KEY = "fastccreid.output"  # ONNX metadata: "feature" (EvalFeature) or "raw" (the model's output)
GRAPH_KINDS = ("feature", "raw")
DEFAULT_TOLERANCE = 0.1  # mAP points


class EvalFeature(torch.nn.Module):
    """``normalize(model(x) + model(flip(x)))``: [B, 3, H, W] ImageNet-normalised float -> [B, D] unit rows, the
    mirror (left-right) computed inside, the sum in fp32. ``model`` must be in eval mode (BN running statistics)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        f = self.model(torch.cat([images, torch.flip(images, dims=[3])], dim=0)).float()
        return F.normalize(f[:b] + f[b:], p=2, dim=1)


@dataclass
class VerifyReport:
    """Torch vs ONNX Runtime on one dataset: per setting {"torch": {mAP, rank1}, "onnx": {...}, "delta_mAP"
    (points)}, the largest |feature difference|, the images compared, the tolerance (mAP points) and the verdict."""

    settings: dict[str, dict[str, Any]]
    max_abs_diff: float
    images: int
    tolerance: float
    graph: str
    passed: bool
    providers: list[str] = field(default_factory=list)

    def table(self) -> str:
        head = (f"{'setting':<18}{'torch mAP':>10}{'onnx mAP':>10}{'Δ mAP':>9}{'torch R-1':>11}{'onnx R-1':>10}"
                f"{'Δ R-1':>8}")
        lines = [head, "-" * len(head)]
        for name, s in self.settings.items():
            t, o = s["torch"], s["onnx"]
            lines.append(f"{name:<18}{100 * t['mAP']:>10.2f}{100 * o['mAP']:>10.2f}{s['delta_mAP']:>+9.3f}"
                         f"{100 * t['rank1']:>11.2f}{100 * o['rank1']:>10.2f}{s['delta_rank1']:>+8.2f}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"largest |feature difference| {self.max_abs_diff:.3g} over {self.images} images ({self.graph} "
                     f"graph, {', '.join(self.providers)}); tolerance {self.tolerance:g} mAP points: {verdict}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "max_abs_diff": self.max_abs_diff, "images": self.images,
                "tolerance_mAP_points": self.tolerance, "graph": self.graph, "passed": self.passed,
                "providers": self.providers}


def graph_kind(path: str) -> str | None:
    """The ``fastccreid.output`` metadata of an ONNX file ("feature" / "raw"), None when it has none."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    for p in proto.metadata_props:
        if p.key == GRAPH_KIND_KEY:
            return p.value
    return None


def _run_graph(sess, name: str, x: np.ndarray, fixed_batch: int | None) -> np.ndarray:
    """The session's output for ``x`` [N, ...]: whole, or in chunks of a fixed batch (the last one zero-padded)."""
    if fixed_batch is None or fixed_batch == x.shape[0]:
        return sess.run(None, {name: x})[0]
    outs = []
    for lo in range(0, x.shape[0], fixed_batch):
        chunk = x[lo:lo + fixed_batch]
        n = chunk.shape[0]
        if n < fixed_batch:
            chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(sess.run(None, {name: chunk})[0][:n])
    return np.concatenate(outs)


def onnx_features(sess, x: np.ndarray, kind: str) -> np.ndarray:
    """The evaluation feature [B, D] from an ONNX session for normalised images ``x`` [B, 3, H, W]: the graph's
    output itself ("feature"), or (``kind="raw"``) the normalised sum of its outputs for the batch and its mirror."""
    (inp,) = sess.get_inputs()
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    if kind == "feature":
        return _run_graph(sess, inp.name, x, fixed)
    both = _run_graph(sess, inp.name, np.concatenate([x, x[..., ::-1]]).astype(np.float32), fixed)
    b = x.shape[0]
    s = both[:b].astype(np.float32) + both[b:]
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)


def verify_onnx(onnx_path: str, checkpoint: str, dataset: str, dataset_path: str, *, raw: bool | None = None,
                tolerance: float = DEFAULT_TOLERANCE, batch_size: int = 64, device: str | None = None,
                loader: str = "torch", num_workers: int = 0, providers: Sequence[str] | None = None,
                log=print) -> VerifyReport:
    """Evaluate the query / gallery features of ``dataset`` through ONNX Runtime and through torch (the
    checkpoint's ``FeatureExtractor``, fp32) on the same batches; see the module docstring. ``raw``: the graph's
    kind when its metadata does not say (None: "feature"). ``tolerance``: the largest |mAP difference| in points
    that passes."""
    import onnxruntime as ort

    from fastccreid.data import build_dataset
    from fastccreid.data.loaders import build_eval_loader, to_model_input
    from fastccreid.engine.evaluate import eval_settings
    from fastccreid.inference import FeatureExtractor
    from fastccreid.metrics import evaluate as fast_evaluate

    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"--tolerance must be a number of mAP points >= 0, got {tolerance!r}")
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(f"--out {onnx_path}: no such ONNX file to verify")
    kind = graph_kind(onnx_path) or ("raw" if raw else "feature")
    if kind not in GRAPH_KINDS:
        raise ValueError(f"{onnx_path}: unknown {GRAPH_KIND_KEY} metadata {kind!r} (expected one of "
                         f"{', '.join(GRAPH_KINDS)})")
    available = ort.get_available_providers()
    use = list(providers) if providers else [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                                             if p in available and (device != "cpu" or p.startswith("CPU"))]
    sess = ort.InferenceSession(onnx_path, providers=use)
    (inp,) = sess.get_inputs()
    dims = list(inp.shape)
    h = dims[2] if isinstance(dims[2], int) else None
    w = dims[3] if isinstance(dims[3], int) else None
    fx = FeatureExtractor(checkpoint, device=device, batch_size=batch_size, height=h, width=w)
    ds = build_dataset(dataset, dataset_path)
    settings = eval_settings(ds)
    sets = ["gallery"] + list(dict.fromkeys(s.query for s in settings))
    feats: dict[str, dict[str, Any]] = {}
    max_diff, images = 0.0, 0
    for name in sets:
        records = getattr(ds, name)
        batches = build_eval_loader(records, height=fx.height, width=fx.width, batch_size=batch_size,
                                    device=fx.device, loader=loader, num_workers=num_workers)
        t_parts, o_parts, labels = [], [], []
        for batch in batches:
            x = to_model_input(batch, channels_last=False, dtype=torch.float32)
            t = fx.features(x).cpu().numpy()
            o = onnx_features(sess, np.ascontiguousarray(x.cpu().numpy()), kind)
            max_diff = max(max_diff, float(np.abs(t - o).max()))
            t_parts.append(t)
            o_parts.append(o)
            labels.append(np.stack([np.asarray(torch.as_tensor(v).cpu()) for v in
                                    (batch.pids, batch.camids, batch.clothes_ids)], axis=1))
        lab = np.concatenate(labels).astype(np.int64)
        feats[name] = {"torch": np.concatenate(t_parts), "onnx": np.concatenate(o_parts), "pids": lab[:, 0],
                       "camids": lab[:, 1], "clothes": lab[:, 2]}
        images += len(lab)
        log(f"=> {name}: {len(lab)} images through torch and ONNX Runtime")
    g = feats["gallery"]
    out: dict[str, dict[str, Any]] = {}
    for s in settings:
        q = feats[s.query]
        res = {}
        for side in ("torch", "onnx"):
            r = fast_evaluate(qf=q[side], gf=g[side], q_pids=q["pids"], g_pids=g["pids"], q_camids=q["camids"],
                              g_camids=g["camids"], q_clothes=q["clothes"], g_clothes=g["clothes"],
                              protocol=s.protocol)
            res[side] = {"mAP": float(r.mAP), "rank1": r.rank(1), "mINP": float(r.mINP)}
        res["delta_mAP"] = 100 * (res["onnx"]["mAP"] - res["torch"]["mAP"])
        res["delta_rank1"] = 100 * (res["onnx"]["rank1"] - res["torch"]["rank1"])
        out[s.name] = res
    passed = all(abs(v["delta_mAP"]) <= tolerance + 1e-9 for v in out.values())
    return VerifyReport(out, max_diff, images, float(tolerance), kind, passed, list(sess.get_providers()))
