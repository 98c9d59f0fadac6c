"""Batch-hard triplet mining and loss (Hermans et al. 2017) on the seed's euclidean distance, forward and backward.

Per anchor i: the hardest positive (largest distance over samples with the same label, the anchor itself included,
as the seed's mask does) and the hardest negative (smallest distance over other labels); ties go to the lowest index
(as torch.max / torch.min in the seed). Distances are ``sqrt(clamp(|a|^2 + |b|^2 - 2 a·b, 1e-12))`` in fp32 even for
fp16 / bf16 features (SPEC §7). The backward sends gradient only through the 2 chosen pairs of each anchor:
``d = |a - b|`` gives ``(a - b) / d`` on a and its opposite on b, zero where the clamp held the distance at its floor.
Mining is done without autograd over the [B, B] matrix, which is where the seed spends its time.

Anchors with no positive other than themselves (a label seen once in the batch) or with no negative (one label in the
batch) are left out of the loss's mean; the seed crashes or silently mixes rows there. If no anchor is valid the loss
is 0 (a zero gradient). Mining results for such anchors: no other positive -> ``pos_idx`` = the anchor itself and
``d_ap`` = its clamped self-distance (exactly 1e-6); no negative -> ``d_an`` = +inf and ``neg_idx`` = -1.

Ties: exact ties resolve to the lowest index, as the seed. One deliberate difference: the seed ranks the clamped
distances, so several candidates below the 1e-6 floor (near-duplicates of the anchor) tie there and the lowest index
wins; ours ranks the unclamped values. The chosen distance (the floor) and its gradient (zero) are the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastccreid.kernels._backend import resolve_backend
from fastccreid.kernels.pairwise_distance import SQ_FLOOR, check_features, gram


def check_labels(labels, n: int, device: torch.device) -> torch.Tensor:
    """Validate labels (1-D integers of length n: tensor, array or sequence); return them as int64 on ``device``."""
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"labels must be a 1-D tensor or array of integers, got {type(labels).__name__}") from exc
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integers (int64, int32, ...), got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.numel() != n:
        raise ValueError(f"labels must be 1-D with one entry per feature row ({n}), got shape {tuple(labels.shape)}")
    return labels.to(device=device, dtype=torch.int64)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def mine_torch(x: torch.Tensor, labels: torch.Tensor, check_finite: bool = False):
    """The vectorised CPU twin (no autograd). Returns d_ap, d_an [B] fp32, pos_idx, neg_idx [B] int64, n_same [B].

    One Gram matmul (its diagonal gives the squared norms, so a sample's distance to itself is exactly the floor).
    Rows are ranked by |b|^2 - 2 a·b, which differs from the squared distance by the row constant |a|^2, so the
    [B, B] work is a few in-place ops and only the 2B chosen distances are completed, clamped and square-rooted.
    ``check_finite``: raise ValueError when a squared norm is NaN / Inf (a NaN or Inf feature, or one whose square
    overflows), a check on [B] values instead of a pass over [B, D].
    """
    xf = x.detach().to(_compute_dtype(x))
    t = gram(xf)
    sq = t.diagonal().clone()
    if check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(sq).all()):
        raise ValueError("features contains NaN or Inf (or values whose squares overflow)")
    t = t.mul_(-2.0).add_(sq[None, :])
    same = labels[:, None] == labels[None, :]
    # argmax / argmin (first index on ties, as torch.max / min) and a gather: max(dim) with indices opens a
    # thread-parallel region even for tiny inputs, which costs a whole scheduler slice on a busy CPU
    pos_idx = torch.where(same, t, -math.inf).argmax(1)
    t_ap = t.gather(1, pos_idx[:, None]).squeeze(1)
    neg_idx = t.masked_fill_(same, math.inf).argmin(1)
    t_an = t.gather(1, neg_idx[:, None]).squeeze(1)
    neg_idx = torch.where(t_an == math.inf, torch.full_like(neg_idx, -1), neg_idx)
    d_ap = (t_ap + sq).clamp_(min=SQ_FLOOR).sqrt_()
    d_an = (t_an + sq).clamp_(min=SQ_FLOOR).sqrt_()
    return d_ap, d_an, pos_idx, neg_idx, same.sum(1)


def _mine_raw(x: torch.Tensor, labels: torch.Tensor, kernel: str, check_finite: bool):
    if kernel == "triton":
        from fastccreid.kernels._triplet_triton import batch_hard_mining_launch

        return batch_hard_mining_launch(x, labels)
    return mine_torch(x, labels, check_finite)


def _pair_coefficients(g: torch.Tensor | None, d: torch.Tensor, idx: torch.Tensor):
    """Scale g / d of (a - b) per anchor; zero at the clamp's floor (as autograd of clamp), and g / inf = 0 for a
    missing negative (idx -1, d = inf), whose index is then pointed at row 0 harmlessly."""
    if g is None:
        return torch.zeros_like(d), idx.clamp(min=0)
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    return torch.where(d > math.sqrt(SQ_FLOOR), g.to(d.dtype) / d, zero), idx.clamp(min=0)


def mining_backward(
    g_ap: torch.Tensor | None,
    g_an: torch.Tensor | None,
    x: torch.Tensor,
    d_ap: torch.Tensor,
    d_an: torch.Tensor,
    pos_idx: torch.Tensor,
    neg_idx: torch.Tensor,
) -> torch.Tensor:
    """Gradient [B, D] of sum(g_ap * d_ap + g_an * d_an) w.r.t. x, through the 2 chosen pairs of each anchor.

    A pair (i, j) with scale c adds c (x_i - x_j) to row i and c (x_j - x_i) to row j, so the gradient is W @ x for
    a sparse [B, B] W: the diagonal (one entry per row, summed over [B] first) and 4B off-diagonal entries. It runs
    as one ``embedding_bag`` (sum mode, per-sample weights: one gather-and-accumulate pass over x), because every
    elementwise pass over [B, D] costs about as much as this whole product on a CPU.
    """
    c_ap, j_ap = _pair_coefficients(g_ap, d_ap, pos_idx)
    c_an, j_an = _pair_coefficients(g_an, d_an, neg_idx)
    xf = x.detach().to(d_ap.dtype)
    b = x.shape[0]
    ar = torch.arange(b, device=x.device)
    diag = (c_ap + c_an).index_add(0, j_ap, c_ap).index_add(0, j_an, c_an)
    rows = torch.cat([ar, ar, ar, j_ap, j_an])
    cols = torch.cat([ar, j_ap, j_an, ar, ar])
    vals = torch.cat([diag, -c_ap, -c_an, -c_ap, -c_an])
    rows, order = torch.sort(rows, stable=True)
    offsets = torch.searchsorted(rows, ar)  # bag i = the entries of row i (no host sync, unlike bincount on CUDA)
    grad = F.embedding_bag(cols[order], xf, offsets, mode="sum", per_sample_weights=vals[order])
    return grad.to(x.dtype)


def _loss_and_slope(d_ap, d_an, n_same, margin: float | None):
    """Mean loss over valid anchors and d(loss)/d(d_ap) per anchor (= -d(loss)/d(d_an)); no autograd needed."""
    valid = (n_same > 1) & (d_an < math.inf)
    z = torch.where(valid, d_ap - d_an, -math.inf)  # where, not a product: d_an = inf and inf * 0 = NaN
    if margin is None:
        per_anchor, slope = F.softplus(z), torch.sigmoid(z)
    else:
        t = z + margin
        # MarginRankingLoss is clamp_min(t, 0), whose gradient passes at t == 0
        per_anchor, slope = t.clamp(min=0), (t >= 0).to(d_ap.dtype)
    n_valid = valid.sum().clamp(min=1).to(d_ap.dtype)
    return per_anchor.sum() / n_valid, slope / n_valid


class BatchHardMiningFunction(torch.autograd.Function):
    """Mining without autograd over [B, B] (kernel "torch" or "triton"), backward by ``mining_backward``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, labels: torch.Tensor, kernel: str, check_finite: bool):
        d_ap, d_an, pos_idx, neg_idx, n_same = _mine_raw(x, labels, kernel, check_finite)
        ctx.save_for_backward(x, d_ap, d_an, pos_idx, neg_idx)
        ctx.mark_non_differentiable(pos_idx, neg_idx, n_same)
        return d_ap, d_an, pos_idx, neg_idx, n_same

    @staticmethod
    def backward(ctx, g_ap, g_an, _g_pos, _g_neg, _g_same):
        x, d_ap, d_an, pos_idx, neg_idx = ctx.saved_tensors
        return mining_backward(g_ap, g_an, x, d_ap, d_an, pos_idx, neg_idx), None, None, None


class BatchHardTripletLossFunction(torch.autograd.Function):
    """Mining and loss in one node: the backward goes straight from the scalar to the chosen pairs (few small ops)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, labels: torch.Tensor, margin: float | None, kernel: str, check_finite: bool):
        d_ap, d_an, pos_idx, neg_idx, n_same = _mine_raw(x, labels, kernel, check_finite)
        loss, slope = _loss_and_slope(d_ap, d_an, n_same, margin)
        ctx.save_for_backward(x, d_ap, d_an, pos_idx, neg_idx, slope)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, d_ap, d_an, pos_idx, neg_idx, slope = ctx.saved_tensors
        g = slope * grad
        return mining_backward(g, -g, x, d_ap, d_an, pos_idx, neg_idx), None, None, None, None


def _prepare(features, labels, backend: str, validate: bool) -> tuple[torch.Tensor, str]:
    """Check inputs; return int64 labels and the kernel ("triton" or "torch"). fp64 features take the torch path."""
    check_features(features, "features", finite=False)
    labels = check_labels(labels, features.shape[0], features.device)
    chosen = resolve_backend(backend, features)
    kernel = "triton" if chosen == "triton" and features.dtype != torch.float64 else "torch"
    if validate and kernel == "triton":
        check_features(features, "features", finite=True)  # the torch kernel checks its [B] norms instead
    return labels, kernel


def batch_hard_mining(features, labels, backend: str = "auto", *, validate: bool = True):
    """Hardest positive and negative per anchor: (d_ap [B], d_an [B] fp32, pos_idx [B], neg_idx [B] int64).

    features [B, D] (fp32 / fp16 / bf16; fp64 computes in fp64), labels [B] integers in any order and counts.
    d_ap and d_an are differentiable w.r.t. features. ``validate=False`` skips the NaN/Inf check (a device sync).
    """
    labels, kernel = _prepare(features, labels, backend, validate)
    if kernel == "triton" and features.is_cuda:
        from fastccreid.kernels._triplet_triton import batch_hard_mining_op

        d_ap, d_an, pos_idx, neg_idx, _ = batch_hard_mining_op(features, labels)
    else:
        d_ap, d_an, pos_idx, neg_idx, _ = BatchHardMiningFunction.apply(features, labels, kernel, validate)
    return d_ap, d_an, pos_idx, neg_idx


def batch_hard_triplet_loss(features, labels, margin: float | None = 0.3, backend: str = "auto", *,
                            validate: bool = True) -> torch.Tensor:
    """Scalar batch-hard triplet loss, as the seed's TripletLoss on P x K batches.

    margin float: mean(max(d_ap - d_an + margin, 0)) (MarginRankingLoss, y = 1); margin None: soft margin
    mean(log(1 + exp(d_ap - d_an))) (SoftMarginLoss, y = 1). The mean runs over valid anchors only (another sample
    of the same label and at least one of another label); 0 with a zero gradient when there is none.
    """
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
            raise ValueError(f"margin must be a finite float or None (soft margin), got {margin!r}")
        margin = float(margin)
    labels, kernel = _prepare(features, labels, backend, validate)
    if kernel == "triton" and features.is_cuda:
        # the registered op keeps the Triton kernel visible to torch.compile; the loss is a few [B] ops around it
        from fastccreid.kernels._triplet_triton import batch_hard_mining_op

        d_ap, d_an, _, _, n_same = batch_hard_mining_op(features, labels)
        valid = (n_same > 1) & (d_an < math.inf)
        z = d_ap - d_an
        per_anchor = F.softplus(z) if margin is None else (z + margin).clamp(min=0)
        per_anchor = torch.where(valid, per_anchor, torch.zeros((), dtype=z.dtype, device=z.device))
        return per_anchor.sum() / valid.sum().clamp(min=1).to(z.dtype)
    return BatchHardTripletLossFunction.apply(features, labels, margin, kernel, validate)


__all__ = ["batch_hard_mining", "batch_hard_triplet_loss", "check_labels", "mine_torch", "mining_backward"]
