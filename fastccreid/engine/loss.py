"""The CSSC training loss (README: "Training"), computed in fp32 whatever the autocast precision.

loss = sum over the 5 logits of label-smoothed cross-entropy (eps 0.1) + [epoch > tri_start_epoch] sum over the
5 features of the batch-hard triplet loss (euclidean, margin 0.3; margin None = soft margin).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastccreid.engine.distributed import DistContext, gather_batch, gather_labels


@dataclass
class LossParts:
    """total (for backward), and the detached id / triplet sums for logging (triplet 0 before tri_start_epoch)."""

    total: torch.Tensor
    id_loss: torch.Tensor
    tri_loss: torch.Tensor


def at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 (autocast outputs) upcast to fp32; fp32 and fp64 kept as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def label_smooth_ce(logits: torch.Tensor, targets: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """The seed's CrossEntropyLabelSmooth: mean over the batch of -sum_k ((1-eps) 1[k=y] + eps/K) log p_k.

    Identical to ``F.cross_entropy(label_smoothing=eps)`` (PyTorch spreads eps uniformly over all K classes, the
    target included), which is one fused op; the logits [B, K] are upcast to fp32 first.
    """
    return F.cross_entropy(at_least_fp32(logits), targets, label_smoothing=epsilon)


def cssc_loss(features: list[torch.Tensor], logits: list[torch.Tensor], pids: torch.Tensor, *, use_triplet: bool,
              margin: float | None = 0.3, epsilon: float = 0.1, backend: str = "auto",
              ctx: DistContext | None = None) -> LossParts:
    """The seed's train step loss from the model's 5 features [b, 2048] and 5 logits [b, K]; all in fp32.

    Under DDP (``ctx`` distributed) the cross-entropy stays per rank (DDP's gradient mean of equal-sized shards is
    the global batch mean) while the triplet loss mines over the global P x K batch: the 5 features are gathered
    as one [5, b, D] fp32 block per rank, so every rank computes what one process computes on the whole batch (as
    the seed's DataParallel does) and gradients flow back to each rank's own rows."""
    # One cross-entropy over the stacked logits [5B, K]: its batch mean times 5 equals the sum of the 5 means.
    stacked = torch.cat([at_least_fp32(y) for y in logits])
    id_loss = len(logits) * label_smooth_ce(stacked, pids.repeat(len(logits)), epsilon)
    if use_triplet:
        from fastccreid.kernels import batch_hard_triplet_loss

        stacked_f = torch.stack([at_least_fp32(f) for f in features])  # [5, b, D]
        labels = pids
        if ctx is not None and ctx.distributed:
            stacked_f = gather_batch(stacked_f.transpose(0, 1), ctx).transpose(0, 1).contiguous()  # [5, W*b, D]
            labels = gather_labels(pids, ctx)
        # validate=False: no per-call finiteness sync; a NaN reaches the loss, where the trainer stops on it.
        tri_loss = sum(batch_hard_triplet_loss(f, labels, margin=margin, backend=backend, validate=False)
                       for f in stacked_f)
        total = id_loss + tri_loss
    else:
        tri_loss = torch.zeros((), device=id_loss.device)
        total = id_loss
    return LossParts(total=total, id_loss=id_loss.detach(), tri_loss=tri_loss.detach())
