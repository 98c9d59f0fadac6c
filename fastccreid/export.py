"""``fastccreid export``: a checkpoint's evaluation-mode CSSC as an ONNX graph, for ONNX Runtime / TensorRT.

The graph is the model's test feature, as the seed's test path computes it before its flip TTA: input ``images``
float32 [B, 3, H, W] (RGB resized to H x W, scaled to [0, 1], ImageNet-normalised), output ``features`` float32
[B, 2048] (the fused branch, max-pooled; not yet normalised). The seed's feature of an image is
``normalize(f(x) + f(flip(x)))``: run the mirrored batch too (one batch of 2B works) and L2-normalise the sum.
Imports nothing heavy at module level (the CLI reads ``FORMATS`` / ``EXPORTERS`` from here).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from dataclasses import dataclass

FORMATS = ("onnx",)
EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True) (torch.export) or the TorchScript tracer
INPUT_NAME, OUTPUT_NAME = "images", "features"


@dataclass(frozen=True)
class ExportedModel:
    """What was written: the file, the input size, and the batch (None: dynamic)."""

    path: str
    height: int
    width: int
    batch: int | None


def export_onnx(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, height: int | None = None,
                width: int | None = None, opset: int | None = None, dynamic_batch: bool = False, batch: int = 1,
                exporter: str = "dynamo", check: bool = True) -> ExportedModel:
    """Export the checkpoint's evaluation model to ``out`` (written to a temporary file beside it, checked with
    ``onnx.checker`` when ``check``, then renamed). ``height``/``width`` None: the checkpoint's
    training size, else 384 x 192. ``dynamic_batch``: the batch dimension is symbolic ("batch"); otherwise the graph
    takes exactly ``batch`` images."""
    import torch

    from fastccreid.inference import load_cssc, resolve_size

    if exporter not in EXPORTERS:
        raise ValueError(f"--exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"--batch must be a positive integer, got {batch!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ValueError(f"--opset must be an ONNX opset number (e.g. 17, 18, 20), got {opset!r}")
    out = os.fspath(out)
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401  (torch's dynamo exporter needs it; say so before the slow export)
        except ImportError as exc:
            raise ValueError(f"--exporter dynamo needs onnxscript ({exc}); pip install 'fastccreid[onnx]', or pass "
                             f"--exporter torchscript") from None
    model, ck = load_cssc(checkpoint, "cpu")
    h, w = resolve_size(ck, height, width)
    # torch.export specialises a dimension whose example size is 1: trace a dynamic batch with 2 images.
    example = torch.zeros((max(batch, 2) if dynamic_batch else batch, 3, h, w), dtype=torch.float32)
    kw: dict = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if exporter == "dynamo":
        kw.update(dynamo=True, external_data=False)
        if dynamic_batch:
            kw["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    else:
        kw.update(dynamo=False)
        if dynamic_batch:
            kw["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
            torch.onnx.export(model, (example,), tmp, **kw)
        if check:
            import onnx

            onnx.checker.check_model(tmp)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return ExportedModel(out, h, w, None if dynamic_batch else batch)


def run_export(args) -> int:
    """``fastccreid export --resume CKPT --format onnx --out FILE``."""
    from fastccreid.models import PretrainedWeightsError

    try:
        if args.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
        res = export_onnx(args.resume, args.out, height=args.height, width=args.width, opset=args.opset,
                          dynamic_batch=args.dynamic_batch, batch=args.batch, exporter=args.exporter)
    except (ValueError, TypeError, FileNotFoundError, PretrainedWeightsError) as exc:
        print(f"fastccreid export: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {res.path} ({os.path.getsize(res.path) / 2**20:,.1f} MiB): input '{INPUT_NAME}' float32 "
          f"[{res.batch or 'batch'}, 3, {res.height}, {res.width}] ImageNet-normalised, output '{OUTPUT_NAME}' "
          f"[{res.batch or 'batch'}, 2048]")
    return 0
