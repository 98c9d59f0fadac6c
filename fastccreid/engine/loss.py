"""The CSSC training loss (SPEC §2), computed in fp32 whatever the autocast precision.

loss = sum over the 5 logits of label-smoothed cross-entropy (eps 0.1) + [epoch > tri_start_epoch] sum over the
5 features of the batch-hard triplet loss (euclidean, margin 0.3; margin None = soft margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossParts:
    """total (for backward), and the detached id / triplet sums for logging (triplet 0 before tri_start_epoch)."""

    total: torch.Tensor
    id_loss: torch.Tensor
    tri_loss: torch.Tensor


def label_smooth_ce(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """The seed's CrossEntropyLabelSmooth: mean over the batch of -sum_k ((1-eps) 1[k=y] + eps/K) log p_k.

    Identical to ``F.cross_entropy(label_smoothing=eps)`` (PyTorch spreads eps uniformly over all K classes, the
    target included), which is one fused op; the logits [B, K] are upcast to fp32 first.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=epsilon)


def cssc_loss(features: list[torch.Tensor], logits: list[torch.Tensor], pids: torch.Tensor, *, use_triplet: bool,
              margin: float | None = 0.3, epsilon: float = 0.1, backend: str = "auto") -> LossParts:
    """The seed's train step loss from the model's 5 features [B, 2048] and 5 logits [B, K]; all in fp32."""
    # One cross-entropy over the stacked logits [5B, K]: its batch mean times 5 equals the sum of the 5 means.
    stacked = torch.cat([y.float() for y in logits])
    id_loss = len(logits) * label_smooth_ce(stacked, pids.repeat(len(logits)), epsilon)
    if use_triplet:
        from fastccreid.kernels import batch_hard_triplet_loss

        # validate=False: no per-call finiteness sync; a NaN reaches the loss, where the trainer stops on it.
        tri_loss = sum(batch_hard_triplet_loss(f.float(), pids, margin=margin, backend=backend, validate=False)
                       for f in features)
        total = id_loss + tri_loss
    else:
        tri_loss = torch.zeros((), device=id_loss.device)
        total = id_loss
    return LossParts(total=total, id_loss=id_loss.detach(), tri_loss=tri_loss.detach())
