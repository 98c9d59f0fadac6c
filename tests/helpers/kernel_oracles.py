"""Float64 oracles of the distance and triplet ops, by their definitions (no matmul identity, a Python loop per
anchor), shared by the torch-path tests (tests/test_kernels_*.py) and the Triton tests (tests/triton/). They share
no code with ``fastccreid.kernels`` or ``fastccreid.reference``."""

from __future__ import annotations

import torch


def pairwise_oracle(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """[M, N] float64 euclidean / sqeuclidean / cosine distances from explicit differences; autograd-capable."""
    x64, y64 = x.double(), y.double()
    sq = ((x64[:, None, :] - y64[None, :, :]) ** 2).sum(-1)
    if metric == "sqeuclidean":
        return sq
    if metric == "euclidean":
        return sq.clamp(min=1e-12).sqrt()
    xn = x64 / x64.norm(dim=1, keepdim=True).clamp(min=1e-12)
    yn = y64 / y64.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return 1 - xn @ yn.t()


def triplet_loss_oracle(x: torch.Tensor, labels: torch.Tensor, margin: float | None) -> torch.Tensor:
    """Batch-hard triplet loss by its definition (a loop per anchor, autograd): the mean over anchors with a
    positive and a negative of max(d_ap) - min(d_an) + margin clamped at 0 (``margin=None``: softplus)."""
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1).clamp(min=1e-12).sqrt()
    lab = labels.tolist()
    terms = []
    for i, li in enumerate(lab):
        pos = [j for j, lj in enumerate(lab) if lj == li]
        neg = [j for j, lj in enumerate(lab) if lj != li]
        if len(pos) < 2 or not neg:
            continue
        z = d[i, pos].max() - d[i, neg].min()
        terms.append(torch.nn.functional.softplus(z) if margin is None else (z + margin).clamp(min=0))
    return torch.stack(terms).mean() if terms else x.sum() * 0
