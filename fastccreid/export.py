"""``fastccreid export``: a checkpoint's evaluation-mode CSSC as an ONNX graph, for ONNX Runtime / TensorRT.

By default the graph is the evaluation feature itself (``fastccreid.deploy.EvalFeature``): input ``images`` float32
[B, 3, H, W] (RGB resized to H x W, scaled to [0, 1], ImageNet-normalised), output ``features`` float32 [B, 2048] =
``normalize(f(x) + f(flip(x)))``, the flip inside the graph: what ``FeatureExtractor`` and ``eval`` compute.
``raw=True`` (``--raw``) writes the older graph, the model's output before flip TTA and normalisation (run the
mirrored batch too and L2-normalise the sum). The ONNX metadata ``fastccreid.output`` says which ("feature" /
"raw"). ``--verify`` then proves the file on a dataset (``fastccreid.deploy.verify_onnx``). Imports nothing heavy
at module level (the CLI reads ``FORMATS`` / ``EXPORTERS`` from here).
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
    raw: bool = False


def export_onnx(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, height: int | None = None,
                width: int | None = None, opset: int | None = None, dynamic_batch: bool = False, batch: int = 1,
                exporter: str = "dynamo", check: bool = True, raw: bool = False) -> ExportedModel:
    """Export the checkpoint's evaluation model to ``out`` (written to a temporary file beside it, checked with
    ``onnx.checker`` when ``check``, then renamed). ``height``/``width`` None: the checkpoint's
    training size, else 384 x 192. ``dynamic_batch``: the batch dimension is symbolic ("batch"); otherwise the graph
    takes exactly ``batch`` images. ``raw``: the model's output (before flip TTA and normalisation) instead of the
    evaluation feature."""
    import torch

    from fastccreid.deploy import GRAPH_KIND_KEY, EvalFeature
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
    graph = model if raw else EvalFeature(model).eval()
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
            torch.onnx.export(graph, (example,), tmp, **kw)
        import onnx

        proto = onnx.load(tmp)
        meta = {GRAPH_KIND_KEY: "raw" if raw else "feature", "fastccreid.input":
                f"float32 [B, 3, {h}, {w}] RGB in [0, 1] normalised with mean (0.485, 0.456, 0.406), std "
                f"(0.229, 0.224, 0.225)", "fastccreid.checkpoint": os.path.basename(os.fspath(checkpoint))}
        for k, v in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.save(proto, tmp)
        if check:
            onnx.checker.check_model(tmp)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return ExportedModel(out, h, w, None if dynamic_batch else batch, raw)


def run_export(args) -> int:
    """``fastccreid export --resume CKPT --format onnx --out FILE [--raw] [--verify --dataset ...]``: exit 0, 1 when
    ``--verify`` finds an mAP off by more than ``--tolerance`` points, 2 on a usage error."""
    from fastccreid.models import PretrainedWeightsError

    verify = bool(getattr(args, "verify", False) or getattr(args, "verify_only", False))
    try:
        if args.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
        dataset_path = ""
        if verify:
            dataset_path = verify_dataset(args)
        if getattr(args, "verify_only", False):
            if not os.path.isfile(args.out):
                raise FileNotFoundError(f"--verify-only: --out {args.out} is not an ONNX file to verify (drop "
                                        f"--verify-only to export it first)")
        else:
            res = export_onnx(args.resume, args.out, height=args.height, width=args.width, opset=args.opset,
                              dynamic_batch=args.dynamic_batch, batch=args.batch, exporter=args.exporter,
                              raw=bool(getattr(args, "raw", False)))
            what = ("the model's output before flip TTA and normalisation (--raw)" if res.raw else
                    "the evaluation feature normalize(f(x) + f(flip x)), flip inside the graph")
            print(f"wrote {res.path} ({os.path.getsize(res.path) / 2**20:,.1f} MiB): input '{INPUT_NAME}' float32 "
                  f"[{res.batch or 'batch'}, 3, {res.height}, {res.width}] ImageNet-normalised, output "
                  f"'{OUTPUT_NAME}' [{res.batch or 'batch'}, 2048]: {what}", flush=True)
        if not verify:
            return 0
        from fastccreid.deploy import verify_onnx

        report = verify_onnx(args.out, args.resume, args.dataset, dataset_path, raw=bool(getattr(args, "raw", False)),
                             tolerance=args.tolerance, batch_size=args.test_batch,
                             device="cpu" if args.use_cpu else None, loader=args.loader,
                             num_workers=args.num_workers, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, TypeError, FileNotFoundError, PretrainedWeightsError) as exc:
        print(f"fastccreid export: error: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    if getattr(args, "verify_json", ""):
        from fastccreid.engine.runrecord import atomic_write_json

        print(f"wrote {atomic_write_json(report.as_dict(), args.verify_json)}")
    return 0 if report.passed else 1


def verify_dataset(args) -> str:
    """The dataset file / folder ``--verify`` evaluates on (``--dataset`` with ``--dataset_root`` /
    ``--dataset_filename``, as ``train``); ValueError when --dataset is missing or the data does not parse."""
    from fastccreid.data import build_dataset
    from fastccreid.data.datasets import DATASET_CHOICES
    from fastccreid.engine.config import TrainConfig

    if not getattr(args, "dataset", None):
        raise ValueError(f"--verify needs the evaluation data: --dataset NAME (one of {', '.join(DATASET_CHOICES)}) "
                         f"with --dataset_root / --dataset_filename as for train (manifest: --dataset_root FILE)")
    tol = args.tolerance
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise ValueError(f"--tolerance must be a number of mAP points >= 0, got {tol!r}")
    path = TrainConfig(dataset=args.dataset, dataset_root=args.dataset_root,
                       dataset_filename=args.dataset_filename).dataset_path
    build_dataset(args.dataset, path)  # a bad path or manifest fails now, before the (slow) export
    return path
