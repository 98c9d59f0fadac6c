"""``fastccreid bench pipeline``: training input throughput (decode + augment, output 384 x 192), images/s.

Both rows end at the same thing: a normalised float [32, 3, 384, 192] train batch on the model's device.
Fast row: ``build_train_loader(loader="dali")`` + ``to_model_input``, with ``num_threads`` = the worker count. On a
GPU, DALI decodes with ``device="mixed"`` and ships uint8 that ``to_model_input`` normalises there; on a CPU-only
machine DALI decodes in its threads while the consumer resizes (torch uint8) and normalises the previous batch.
``extra`` also has our torch fallback loader (``--loader torch``, same end point: ``torch_fallback_img_per_s``).
Fast-uint8 row: the same DALI pipeline handing out uint8 batches (``output="uint8"``): decode + augment end at a
uint8 [32, 384, 192, 3] batch on the model's device, and the normalisation (``to_model_input``, a few elementwise
passes) moves into the model's step, where a GPU does it in microseconds. ``extra`` gives that step's cost measured
here (``to_model_input_ms_per_batch``) and the throughput when this CPU's consumer thread also does it
(``with_to_model_input_img_per_s``), so the row is not read as free work.
Reference row: the seed's DataLoader (``fastccreid.reference.dataloader``: PIL + torchvision transform producing
normalised float per image in the workers, the seed's sampler) with the same worker count.
Each timed run is one full epoch of the synthetic training set, including the per-epoch worker / pipeline start-up
both designs pay; the paths alternate run by run so that load from other processes falls on each alike. Cases:
Celeb-reID-like 128 x 256 (W x H) JPEGs and LTCC-like PNGs of the same size.
"""

from __future__ import annotations

import os
import tempfile

import torch

from fastccreid.bench.common import (
    BenchRow,
    interleaved_medians,
    keep_partial,
    note_skip,
    peak_rss_bytes,
    time_median,
)

WORKERS = 2
OUT_H, OUT_W = 384, 192
CASES = {"celeb-jpeg-128x256": "celeb", "ltcc-png-128x256": "ltcc"}


def _epoch_fn(loader, finish):
    """One epoch of ``loader``, calling ``finish`` on each batch; returns the image count."""

    def run() -> int:
        n = 0
        for batch in loader:
            finish(batch)
            n += len(batch) if not isinstance(batch, list) else batch[0].shape[0]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return n
    return run


def _normalize_ms(loader, finish, reps: int = 7) -> float:
    """Median ms of ``finish`` (uint8 -> normalised float) on one of ``loader``'s batches."""
    loader.set_epoch(0)
    batch = next(iter(loader))

    def once() -> None:
        finish(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    return 1e3 * time_median(once, repeats=reps)


def run(quick: bool) -> list[BenchRow]:
    from fastccreid.data import build_dataset
    from fastccreid.data.dali import dali_status
    from fastccreid.data.loaders import build_train_loader, to_model_input
    from fastccreid.data.synth import make_synthetic
    from fastccreid.reference.dataloader import build_reference_loaders

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ids = 16 if quick else 40  # half are training identities; 2 outfits x 4 cameras x 4 images each
    repeats = 3 if quick else 5
    rows: list[BenchRow] = []
    dali_ok, dali_why = dali_status(device)
    if not dali_ok:  # the torch fallback and the seed's loader are still measured
        note_skip("pipeline", "the DALI rows (fast, fast-uint8)", dali_why)
    with tempfile.TemporaryDirectory(prefix="fastccreid-bench-pipeline-") as tmp:
        for case, layout in CASES.items():
            root = make_synthetic(layout, os.path.join(tmp, layout), ids=ids, seed=0, clothes=2, cams=4,
                                  images_per=4, size=(256, 128))
            ds = build_dataset(layout, root)
            common = dict(height=OUT_H, width=OUT_W, batch_size=32, num_instances=4, seed=0, device=device,
                          num_workers=WORKERS)
            fallback = build_train_loader(ds.train, loader="torch", **common)
            ref = build_reference_loaders(ds, height=OUT_H, width=OUT_W, train_batch=32, num_instances=4,
                                          num_workers=WORKERS, use_gpu=device.type == "cuda").train
            n_fast, n_ref = len(fallback) * 32, len(ref) * 32
            fns = {"reference": _epoch_fn(ref, lambda b: b[0].to(device)),
                   "torch": _epoch_fn(fallback, to_model_input)}
            if dali_ok:
                fast = build_train_loader(ds.train, loader="dali", **common)
                fast_u8 = build_train_loader(ds.train, loader="dali", output="uint8", **common)
                n_fast = len(fast) * 32
                fns.update({"fast": _epoch_fn(fast, to_model_input), "uint8": _epoch_fn(fast_u8, lambda b: b.images),
                            "uint8+normalize": _epoch_fn(fast_u8, to_model_input)})
            med = interleaved_medians(fns, repeats, device)
            extra = {"workers": WORKERS, "device": str(device), "train_images": len(ds.train),
                     "torch_fallback_img_per_s": n_fast / med["torch"]}
            if dali_ok:
                norm_ms = _normalize_ms(fast_u8, to_model_input)
                rows.append(BenchRow("pipeline", case, "fast", med["fast"], n_fast / med["fast"], peak_rss_bytes(),
                                     repeats, n_fast, extra))
                rows.append(BenchRow("pipeline", case, "fast-uint8", med["uint8"], n_fast / med["uint8"],
                                     peak_rss_bytes(), repeats, n_fast,
                                     {"workers": WORKERS, "device": str(device), "output": "uint8",
                                      "to_model_input_ms_per_batch": norm_ms,
                                      "with_to_model_input_img_per_s": n_fast / med["uint8+normalize"]}))
            else:
                rows.append(BenchRow("pipeline", case, "fast-torch", med["torch"], n_fast / med["torch"],
                                     peak_rss_bytes(), repeats, n_fast, {**extra, "loader": "torch",
                                                                         "dali": dali_why}))
            rows.append(BenchRow("pipeline", case, "reference", med["reference"], n_ref / med["reference"],
                                 peak_rss_bytes(), repeats, n_ref, {"workers": WORKERS, "device": str(device)}))
            keep_partial(rows)
    return rows
