"""``fastccreid bench extract``: feature extraction from image files at 384 x 192, images/s, same files every row.

Every row ends at the seed's test features [N, 2048] (decode, resize, normalise, ``f(x) + f(flip(x))``,
L2-normalise) of the same synthetic LTCC-like PNGs (128 x 256, W x H), with a random-init CSSC (the cost does not
depend on the weights) saved as a checkpoint and loaded by each path.
Reference row: the seed's path: its test DataLoader (PIL + torchvision transform per image,
``fastccreid.reference.dataloader``) and the model in fp32, NCHW, eager.
Fast row: ``FeatureExtractor(amp=True, channels_last, loader="auto")``: bf16 autocast where the device computes
it natively (``fastccreid.engine.amp``: CUDA from Ampere, CPUs with AVX-512-BF16 / AMX; fp32 elsewhere),
channels_last, DALI when usable. ``extra`` also has the same path in fp32 (``fp32_img_per_s``, full mode).
onnxruntime row: the model exported by ``fastccreid.export`` (TorchScript exporter, dynamic batch) run by ONNX
Runtime (CUDA provider when present, else CPU) on each batch and its mirror in one call, fed by our PIL loader.
Each timed run covers the whole set; the paths alternate run by run so load from other processes falls on each
alike. Quick mode: 8 images, batch 8, one timed run, no fp32 variant.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastccreid.bench.common import BenchRow, interleaved_medians, keep_partial, note_skip, peak_rss_bytes

OUT_H, OUT_W = 384, 192
WORKERS = 2
CASE = f"cssc-{OUT_H}x{OUT_W}"


def _reference_fn(model: torch.nn.Module, loader, device: torch.device) -> Callable[[], int]:
    """The seed's test loop: fp32 NCHW eager, f(x) + f(flip(x)), normalised."""

    @torch.no_grad()
    def run() -> int:
        n = 0
        for imgs, *_ in loader:
            x = imgs.to(device)
            f = model(x) + model(torch.flip(x, dims=[3]))
            F.normalize(f, p=2, dim=1).cpu()
            n += x.shape[0]
        return n

    return run


def _onnx_fn(session, loader, input_name: str) -> Callable[[], int]:
    """Our PIL eval loader (float batches) -> one ONNX Runtime call of the default export, whose graph is the
    evaluation feature (the flip and the L2 normalisation inside it)."""

    def run() -> int:
        n = 0
        for batch in loader:
            x = np.ascontiguousarray(batch.images.float().contiguous().numpy())  # [B, 3, H, W] normalised
            session.run(None, {input_name: x})  # [B, 2048] unit rows
            n += len(x)
        return n

    return run


def run(quick: bool) -> list[BenchRow]:
    from fastccreid.data import build_dataset
    from fastccreid.data.loaders import build_eval_loader, choose_loader
    from fastccreid.data.synth import make_synthetic
    from fastccreid.engine.amp import resolve_amp
    from fastccreid.engine.checkpoint import save_checkpoint
    from fastccreid.inference import FeatureExtractor, load_cssc
    from fastccreid.models import CSSC
    from fastccreid.reference.dataloader import build_reference_loaders

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_images, batch = (8, 8) if quick else (64, 32)
    repeats = 1 if quick else 3
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="fastccreid-bench-extract-") as tmp:
        # ids=8: 4 test identities x 2 outfits x 4 cameras x 2 images = 64 test images (query + gallery).
        root = make_synthetic("ltcc", os.path.join(tmp, "ltcc"), ids=8, seed=0, clothes=2, cams=4, images_per=2,
                              size=(256, 128))
        ds = build_dataset("ltcc", root)
        records = (ds.query + ds.gallery)[:n_images]
        ds.gallery, ds.query = records, records[:1]
        torch.manual_seed(0)
        ck = save_checkpoint({"model_state_dict": CSSC(10, pretrained=None).state_dict()},
                             os.path.join(tmp, "ck.pth"))
        paths = [r.path for r in records]

        ref_model, _ = load_cssc(ck, device)
        ref_loader = build_reference_loaders(ds, height=OUT_H, width=OUT_W, test_batch=batch,
                                             num_workers=WORKERS, use_gpu=device.type == "cuda").gallery
        fast = FeatureExtractor(ck, device=device, batch_size=batch, height=OUT_H, width=OUT_W, amp=True,
                                loader="auto", num_workers=WORKERS)
        fast32 = copy.copy(fast)  # the same model in fp32
        fast32.amp = resolve_amp("off", device)
        fns: dict[str, Callable[[], int]] = {
            "reference": _reference_fn(ref_model, ref_loader, device),
            "fast": lambda: len(fast(paths)),
        }
        if not quick:
            fns["fast-fp32"] = lambda: len(fast32(paths))
        onnx_note = ""
        try:
            import onnxruntime as ort

            from fastccreid.export import export_onnx

            onnx_path = export_onnx(ck, os.path.join(tmp, "cssc.onnx"), height=OUT_H, width=OUT_W,
                                    dynamic_batch=True, exporter="torchscript", check=False).path
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                         if p in ort.get_available_providers()]
            session = ort.InferenceSession(onnx_path, providers=providers)
            ort_loader = build_eval_loader(records, height=OUT_H, width=OUT_W, batch_size=batch,
                                           device="cpu", loader="torch", num_workers=WORKERS, output="float")
            fns["onnxruntime"] = _onnx_fn(session, ort_loader, session.get_inputs()[0].name)
            onnx_note = f"onnxruntime {ort.__version__}, {session.get_providers()[0]}"
        except ImportError as exc:  # optional: the [onnx] extra
            onnx_note = f"skipped: {exc}"
        med = interleaved_medians(fns, repeats, device)
        common = {"device": str(device), "batch": batch, "workers": WORKERS, "images": n_images}
        backend = choose_loader("auto", device)[0]
        rows.append(BenchRow("extract", CASE, "reference", med["reference"], n_images / med["reference"],
                             peak_rss_bytes(), repeats, n_images, {**common, "precision": "fp32", "layout": "NCHW",
                                                                   "loader": "seed (PIL + torchvision)"}))
        rows.append(BenchRow("extract", CASE, "fast", med["fast"], n_images / med["fast"], peak_rss_bytes(),
                             repeats, n_images, {**common, "precision": fast.amp.name, "layout": "channels_last",
                                                 "loader": backend,
                                                 "fp32_img_per_s": n_images / med["fast-fp32"] if not quick else None}))
        if "onnxruntime" in med:
            rows.append(BenchRow("extract", CASE, "onnxruntime", med["onnxruntime"], n_images / med["onnxruntime"],
                                 peak_rss_bytes(), repeats, n_images, {**common, "runtime": onnx_note,
                                                                       "precision": "fp32"}))
        else:
            note_skip("extract", "the onnxruntime row", onnx_note)
    keep_partial(rows)
    return rows
