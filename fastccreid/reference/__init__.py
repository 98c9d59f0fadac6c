"""The seed's own algorithms, re-implemented as they are (eager fp32 torch, numpy argsort + per-query Python loop,
PIL + torchvision transforms, torch DataLoader): the oracle for parity tests and the baseline for benchmarks.

Deliberately slow: do not optimise anything here. Losses, evaluation, re-ranking, scheduler and sampler are
imported eagerly; the pieces that need torchvision / PIL (transforms, data loading, train step) load on first
attribute access, so ``import fastccreid.reference.evaluation`` stays light.
"""

from __future__ import annotations

import importlib

from fastccreid.reference.evaluation import evaluate, evaluate_ltcc, evaluate_prcc_all_gallery, get_distmat
from fastccreid.reference.losses import CrossEntropyLabelSmooth, TripletLoss, euclidean_dist, hard_example_mining
from fastccreid.reference.reranking import re_ranking
from fastccreid.reference.sampler import RandomIdentitySampler
from fastccreid.reference.scheduler import WarmupMultiStepLR

_LAZY = {
    "RandomErasing": "transforms",
    "build_train_transform": "transforms",
    "build_test_transform": "transforms",
    "ImageDataset": "dataloader",
    "ReferenceLoaders": "dataloader",
    "build_reference_loaders": "dataloader",
    "read_image": "dataloader",
    "reference_train_step": "train_step",
    "reference_extract_features": "train_step",
    "reference_distance": "train_step",
}

__all__ = [
    "CrossEntropyLabelSmooth",
    "RandomIdentitySampler",
    "TripletLoss",
    "WarmupMultiStepLR",
    "euclidean_dist",
    "evaluate",
    "evaluate_ltcc",
    "evaluate_prcc_all_gallery",
    "get_distmat",
    "hard_example_mining",
    "re_ranking",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"fastccreid.reference.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'fastccreid.reference' has no attribute {name!r}")
