"""Evaluation during and after training: flip-TTA feature extraction (sharded over ranks) and the fast evaluator.

Features are the seed's: model(x) + model(flip(x)), L2-normalised, in fp32 [N, 2048]. Each dataset is evaluated
under its protocols (README: "Evaluator"): LTCC / VC-Clothes general and clothes-changing, PRCC same-clothes and
clothes-changing (whole gallery), Celeb-reID and the rest the market protocol.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fastccreid.data.datasets import default_settings
from fastccreid.data.records import ImageRecord, ReIDDataset
from fastccreid.engine.amp import AmpConfig
from fastccreid.engine.distributed import DistContext, broadcast_object, gather_rows, shard_range
from fastccreid.metrics import EvalResult
from fastccreid.metrics import evaluate as fast_evaluate


@dataclass(frozen=True)
class EvalSetting:
    """One reported evaluation: its display name, the metrics protocol, and which query set it uses."""

    name: str
    protocol: str
    query: str  # "query", "query_same" or "query_diff"


@dataclass
class EvalConfig:
    """How features are extracted: input size, batch, precision, memory format, loader choice."""

    height: int
    width: int
    batch_size: int
    amp: AmpConfig
    channels_last: bool = True
    loader: str = "auto"
    num_workers: int = 0
    skip_bad_images: bool = False
    static_batch: bool = False  # pad the last batch to batch_size so a compiled model sees one shape
    progress: bool = True
    loader_output: str = "auto"  # "float" | "uint8" | "auto": see fastccreid.data.loaders.OUTPUT_CHOICES


@dataclass
class Features:
    """Extracted set: feats [N, D] float32 (L2-normalised), pids / camids / clothes [N] int64."""

    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    clothes: np.ndarray


def eval_settings(dataset: ReIDDataset) -> list[EvalSetting]:
    """The settings the seed reports for ``dataset`` (first = the one it picks 'best' checkpoints by); the rule
    lives in ``datasets.default_settings``, which ``fastccreid data check`` uses too (without importing torch)."""
    return [EvalSetting(*s) for s in default_settings(dataset)]


@torch.no_grad()
def extract_features(model: Callable[[torch.Tensor], torch.Tensor], records: list[ImageRecord], cfg: EvalConfig,
                     ctx: DistContext, desc: str = "features") -> Features:
    """Flip-TTA features of ``records`` in their order. Under DDP each rank takes a contiguous shard and the
    shards are gathered, so every rank returns the full set."""
    from fastccreid.data.loaders import build_eval_loader, to_model_input

    lo, hi = shard_range(len(records), ctx)
    shard = records[lo:hi]
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    if shard:
        loader = build_eval_loader(shard, height=cfg.height, width=cfg.width, batch_size=cfg.batch_size,
                                   device=ctx.device, loader=cfg.loader, num_workers=cfg.num_workers,
                                   skip_bad_images=cfg.skip_bad_images, output=cfg.loader_output)
        batches = loader
        if cfg.progress and ctx.is_main:
            from tqdm import tqdm

            batches = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)  # bars on a terminal only
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        for batch in batches:
            x = to_model_input(batch, channels_last=cfg.channels_last, dtype=torch.float32)
            n = x.shape[0]
            if cfg.static_batch and n < cfg.batch_size:
                # Zero rows do not affect the others in eval mode (BN uses running stats); they are dropped below.
                pad = x.new_zeros((cfg.batch_size - n, *x.shape[1:])).contiguous(memory_format=memory_format)
                x = torch.cat([x, pad]).contiguous(memory_format=memory_format)
            flipped = torch.flip(x, dims=[3]).contiguous(memory_format=memory_format)
            with cfg.amp.autocast():
                f = model(x).float() + model(flipped).float()  # sum in fp32
            feats.append(F.normalize(f[:n], p=2, dim=1))  # stays on the device: no per-batch sync
            labels.append(torch.stack([torch.as_tensor(batch.pids), torch.as_tensor(batch.camids),
                                       torch.as_tensor(batch.clothes_ids)], dim=1).to(torch.int64).cpu())
    local_f = torch.cat(feats) if feats else torch.zeros((0, 2048), dtype=torch.float32, device=ctx.device)
    local_l = torch.cat(labels) if labels else torch.zeros((0, 3), dtype=torch.int64)
    all_f = gather_rows(local_f, ctx)
    all_l = gather_rows(local_l, ctx).numpy()
    return Features(all_f, all_l[:, 0].copy(), all_l[:, 1].copy(), all_l[:, 2].copy())


def evaluate_model(model: Callable[[torch.Tensor], torch.Tensor], dataset: ReIDDataset, cfg: EvalConfig,
                   ctx: DistContext, *, rerank: bool = False, save_features_path: str = "",
                   log: Callable[[str], None] = print, features_out: dict[str, Features] | None = None
                   ) -> dict[str, EvalResult]:
    """Extract gallery and query features (sharded over ranks), evaluate every setting of the dataset once (rank 0:
    the others get its results), print one line per setting (rank 0), and optionally write the features in the
    ``eval-features`` format. Returns {setting: result} on every rank; ``features_out`` (when given) receives the
    features by set name ("gallery", "query", ...)."""
    settings = eval_settings(dataset)
    gallery = extract_features(model, dataset.gallery, cfg, ctx, desc="gallery")
    queries: dict[str, Features] = {}
    for s in settings:
        if s.query not in queries:
            queries[s.query] = extract_features(model, getattr(dataset, s.query), cfg, ctx, desc=s.query)
    if features_out is not None:
        features_out.update({"gallery": gallery, **queries})
    results: dict[str, EvalResult] = {}
    if ctx.is_main:  # evaluated once, on the device the features are on
        for s in settings:
            q = queries[s.query]
            results[s.name] = fast_evaluate(
                qf=q.feats, gf=gallery.feats, q_pids=q.pids, g_pids=gallery.pids, q_camids=q.camids,
                g_camids=gallery.camids, q_clothes=q.clothes, g_clothes=gallery.clothes, protocol=s.protocol,
                rerank=rerank,
            )
    results = broadcast_object(results, ctx)
    if ctx.is_main:
        for name, r in results.items():
            log(format_result(name, r, rerank))
        if save_features_path:
            for path in write_features(save_features_path, gallery, queries):
                log(f"wrote features {path}")
    return results


def format_result(name: str, r: EvalResult, rerank: bool = False) -> str:
    """The seed's line: mAP and R-1/5/10 in percent, prefixed by the setting's name."""
    prefix = "With Reranking: " if rerank else ""
    return (f"{prefix}{name:<17} mAP: {r.mAP:.2%}  R-1: {r.rank(1):.2%}  R-5: {r.rank(5):.2%}  "
            f"R-10: {r.rank(10):.2%}  (mINP {r.mINP:.2%}, {r.num_valid_queries} queries)")


def write_features(path: str, gallery: Features, queries: dict[str, Features]) -> list[str]:
    """``{base}_gallery.npz`` and ``{base}_{query set}.npz`` in the eval-features format; returns the paths."""
    from fastccreid.features_io import save_features

    base, ext = os.path.splitext(path)
    if ext not in (".npz", ".pt"):
        base, ext = path, ".npz"
    written = [save_features(f"{base}_gallery{ext}", gallery.feats, gallery.pids, gallery.camids, gallery.clothes)]
    for name, q in queries.items():
        written.append(save_features(f"{base}_{name}{ext}", q.feats, q.pids, q.camids, q.clothes))
    return written
