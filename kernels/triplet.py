"""Batch-hard triplet mining and loss (Hermans et al. 2017) on the seed's euclidean distance, forward and backward.

Per anchor i: the hardest positive (largest distance over samples with the same label, the anchor itself included,
as the seed's mask does) and the hardest negative (smallest distance over other labels); ties go to the lowest index
(as torch.max / torch.min in the seed). Distances are ``sqrt(clamp(|a|^2 + |b|^2 - 2 a·b, 1e-12))`` in fp32 even for
fp16 / bf16 features (README, Differences from the official code). The backward sends gradient only through the 2
chosen pairs of each anchor: ``d = |a - b|`` gives ``(a - b) / d`` on a and its opposite on b, zero where the clamp
held the distance at its floor.
Mining is done without autograd over the [B, B] matrix, which is where the seed spends its time.

Kernels: Triton (CUDA, or CPU under TRITON_INTERPRET=1); the torch twin (``mine_torch`` / ``mining_backward``:
CUDA tensors with backend torch, and the Triton path's backward); and on CPU tensors the host twin (``mine_host``
/ ``mining_backward_host``), the same arithmetic with NumPy doing the arg-reductions and [B]-vector steps, and
for a P x K batch in identity runs the positive masks as K x K diagonal blocks (tested against the torch twin).

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

import numpy as np
import torch
import torch.nn.functional as F

from fastccreid.kernels import checks as _checks
from fastccreid.kernels._backend import resolve_backend
from fastccreid.kernels.checks import check_features, check_margin, check_triplet_inputs
from fastccreid.kernels.pairwise_distance import SQ_FLOOR, gram


def check_labels(labels, n: int, device: torch.device) -> torch.Tensor:
    """Validate labels (1-D integers of length n: tensor, array or sequence); return them as int64 on ``device``."""
    return _checks.check_labels(labels, "labels", n, device, per="feature row")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def mine_torch(x: torch.Tensor, labels: torch.Tensor, check_finite: bool = False):
    """The torch twin (no autograd). Returns d_ap, d_an [B] fp32, pos_idx, neg_idx [B] int64, n_same [B].

    One Gram matmul (its diagonal gives the squared norms, so a sample's distance to itself is exactly the floor).
    Rows are ranked by u = a·b - |b|^2 / 2 = -(|a - b|^2 - |a|^2) / 2: the row constant |a|^2 drops out and the
    halving is exact, so the ranking (ties included) is that of the squared distances, the [B, B] work is one
    in-place update, and only the 2B chosen distances are completed (|a|^2 - 2u, the same bits as |a|^2 + |b|^2 -
    2a·b), clamped and square-rooted. ``check_finite``: raise ValueError when a squared norm is NaN / Inf (a NaN or
    Inf feature, or one whose square overflows), a check on [B] values instead of a pass over [B, D].
    """
    xf = x.detach().to(_compute_dtype(x))
    u = gram(xf)
    sq = u.diagonal().clone()
    # amax propagates NaN: one [B] reduction and one host read instead of isfinite + all
    if check_finite and not torch.compiler.is_compiling() and not math.isfinite(float(sq.amax())):
        raise ValueError("features contains NaN or Inf (or values whose squares overflow)")
    u.sub_(sq * 0.5)
    same = labels[:, None] == labels[None, :]
    # argmin / argmax (first index on ties, as torch.max / min) and a gather: max(dim) with indices opens a
    # thread-parallel region even for tiny inputs, which costs a whole scheduler slice on a busy CPU
    pos_idx = torch.where(same, u, math.inf).argmin(1)  # farthest positive: smallest u
    u_ap = u.gather(1, pos_idx[:, None]).squeeze(1)
    neg_idx = u.masked_fill_(same, -math.inf).argmax(1)  # closest negative: largest u
    u_an = u.gather(1, neg_idx[:, None]).squeeze(1)
    neg_idx.masked_fill_(u_an == -math.inf, -1)  # no negative: every entry of the row was masked
    d = torch.stack([u_ap, u_an]).mul_(-2.0).add_(sq).clamp_(min=SQ_FLOOR).sqrt_()
    return d[0], d[1], pos_idx, neg_idx, same.sum(1)


def _mine_raw(x: torch.Tensor, labels: torch.Tensor, kernel: str, check_finite: bool):
    if kernel == "triton":
        from fastccreid.kernels._triplet_triton import batch_hard_mining_launch

        return batch_hard_mining_launch(x, labels)
    return mine_torch(x, labels, check_finite)


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

    A pair (i, j) with scale c = g / d adds c (x_i - x_j) to row i and c (x_j - x_i) to row j (c = 0 at the
    clamp's floor, as autograd of clamp; a missing negative has d = inf, so c = 0, and its index -1 is pointed at
    row 0 harmlessly). So the gradient is W @ x for a sparse symmetric [B, B] W: the diagonal (one entry per row,
    summed over [B] first) and 4B off-diagonal entries. It runs as one ``embedding_bag`` (sum mode, per-sample
    weights: one gather-and-accumulate pass over x), because every elementwise pass over [B, D] costs about as much
    as this whole product on a CPU. Every other op here works on [2B] or [5B] vectors.

    Deterministic on CUDA as on CPU: nothing here scatters floats with atomics (no ``index_add_`` /
    ``scatter_add_``); every sum is a bag of ``embedding_bag``, added in bag order by one thread.
    """
    b = x.shape[0]
    d = torch.stack([d_ap, d_an])  # [2, B]
    zero = torch.zeros((), dtype=d.dtype, device=d.device)
    g = torch.stack([zero.expand(b) if gi is None else gi.to(d.dtype) for gi in (g_ap, g_an)])
    c = torch.where(d > math.sqrt(SQ_FLOOR), g / d, zero).view(-1)  # [2B]: pair scales, positives then negatives
    j = torch.stack([pos_idx, neg_idx]).clamp_(min=0).view(-1)  # [2B]: the partner of each pair
    ar = torch.arange(b, device=x.device)
    # bag r holds every entry of W's row r: (r, r), its own two pairs and the pairs that chose r as partner; the
    # stable sort puts each row's own entries (in that order) before its incoming ones (in pair order), and a bag
    # starts where its row's keys start (searchsorted on the sorted keys: no count, no scatter, no host sync)
    keys, order = torch.sort(torch.cat([ar, ar, ar, j]), stable=True)
    offsets = torch.searchsorted(keys, ar)
    cols = torch.cat([ar, j, ar, ar])[order]
    # W's diagonal, diag[r] = c_ap[r] + c_an[r] + the scales of the pairs that chose r, summed over the same bags
    # (a (r, r) slot reads the appended zero): embedding_bag's sum adds a bag's entries in order, one thread per
    # (bag, feature) on CUDA (ATen EmbeddingBag.cu, EmbeddingBag_updateOutputKernel_sum_mean), so the diagonal has
    # the same bits run to run; index_add_ on CUDA adds fp32 with atomics, in whatever order they land. On CPU the
    # order is the host twin's (c_ap + c_an, then the incoming pairs in index order).
    slot = torch.cat([torch.full_like(ar, 2 * b), torch.arange(2 * b, device=x.device).repeat(2)])[order]
    diag = F.embedding_bag(slot, torch.cat([c, zero.view(1)])[:, None], offsets, mode="sum")[:, 0]
    nc = c.neg()
    vals = torch.cat([diag, nc, nc])[order]
    grad = F.embedding_bag(cols, x.detach().to(d.dtype), offsets, mode="sum", per_sample_weights=vals)
    return grad.to(x.dtype)


def _loss_and_slope(d_ap, d_an, n_same, margin: float | None):
    """Mean loss over valid anchors and d(loss)/d(d_ap) per anchor (= -d(loss)/d(d_an)); no autograd needed.

    z = d_ap - d_an is -inf for an anchor without a negative (d_an = inf) and is set to -inf for one without another
    positive, so both drop out of the sum and the slope; the mean divides by the valid count."""
    z = (d_ap - d_an).masked_fill_(n_same < 2, -math.inf)
    n_valid = (z > -math.inf).sum().clamp_(min=1).to(d_ap.dtype)
    if margin is None:
        per_anchor, slope = F.softplus(z), torch.sigmoid(z)
    else:
        t = z.add_(margin)
        # MarginRankingLoss is clamp_min(t, 0), whose gradient passes at t == 0
        per_anchor, slope = t.clamp(min=0), (t >= 0).to(d_ap.dtype)
    return per_anchor.sum() / n_valid, slope.div_(n_valid)


# The host twin: on CPU tensors the [B, B] masks and the matmul stay in torch, while the arg-reductions and the
# [B]-vector bookkeeping run in NumPy on shared (uncopied) arrays: NumPy's SIMD argmin / argmax and its per-call
# overhead on [B] vectors are several times smaller than torch's (README, Performance). Same arithmetic as the torch
# twin (the tests compare them), in the compute dtype (NumPy 2 keeps float32 with Python scalars).


def _run_length(labels: np.ndarray) -> int:
    """K when the labels are P >= 2 runs of K >= 2 equal values with P distinct labels (a P x K batch in the
    identity sampler's order), else 0."""
    b = labels.shape[0]
    k = int(np.argmax(labels != labels[0]))  # 0 when every label is equal
    if k < 2 or b % k:
        return 0
    runs = labels.reshape(b // k, k)
    if not (runs == runs[:, :1]).all() or np.unique(runs[:, 0]).size != runs.shape[0]:
        return 0
    return k


def mine_host(x: torch.Tensor, labels: torch.Tensor, check_finite: bool = False):
    """``mine_torch`` for CPU tensors; returns NumPy arrays d_ap, d_an, pos_idx, neg_idx, n_same."""
    u = gram(x.detach().to(_compute_dtype(x)))
    un = u.numpy()
    sq = np.diagonal(un).copy()
    if check_finite and not math.isfinite(sq.max()):
        raise ValueError("features contains NaN or Inf (or values whose squares overflow)")
    un -= sq * 0.5  # u = a·b - |b|^2 / 2, as mine_torch
    b = un.shape[0]
    rows = np.arange(b)
    k = _run_length(labels.numpy())
    if k:
        # P x K batch in identity runs (the sampler's order): the positives are the K x K diagonal blocks, so the
        # masks are a gather and a scatter of P*K*K entries instead of [B, B] comparisons
        p = b // k
        blocks = un.reshape(p, k, p, k)
        diag = np.arange(p)
        pos_blocks = blocks[diag, :, diag, :]  # [P, K, K]: row r of block g = anchor g*k + r over its positives
        local = pos_blocks.argmin(2)  # first index on ties, as the columns ascend
        u_ap = np.take_along_axis(pos_blocks, local[:, :, None], 2).ravel()
        pos_idx = (local + (diag * k)[:, None]).ravel()
        blocks[diag, :, diag, :] = -math.inf
        n_same = np.full(b, k)
    else:
        same = labels[:, None] == labels[None, :]
        pos_idx = torch.where(same, u, math.inf).numpy().argmin(1)  # farthest positive: smallest u
        u_ap = un[rows, pos_idx]
        u.masked_fill_(same, -math.inf)
        n_same = same.sum(1).numpy()
    neg_idx = un.argmax(1)  # closest negative: largest u
    u_an = un[rows, neg_idx]
    neg_idx[u_an == -math.inf] = -1
    d = np.maximum(np.stack([sq - 2.0 * u_ap, sq - 2.0 * u_an]), SQ_FLOOR)
    torch.from_numpy(d).sqrt_()  # torch's sqrt, as the seed's (NumPy's can differ in the last bit)
    return d[0], d[1], pos_idx, neg_idx, n_same


def _loss_and_slope_host(d_ap: np.ndarray, d_an: np.ndarray, n_same: np.ndarray, margin: float | None):
    """``_loss_and_slope`` on NumPy arrays: (0-d loss array, slope [B]), in the dtype of the distances."""
    z = d_ap - d_an
    z[n_same < 2] = -math.inf
    n_valid = max(int(np.count_nonzero(z > -math.inf)), 1)
    if margin is None:
        with np.errstate(over="ignore"):
            per_anchor = np.logaddexp(z, 0.0).astype(z.dtype)
            slope = (1.0 / (1.0 + np.exp(-z))).astype(z.dtype)
    else:
        t = z + margin
        per_anchor, slope = np.maximum(t, 0.0), (t >= 0).astype(z.dtype)
    n_valid = z.dtype.type(n_valid)
    return np.asarray(per_anchor.sum() / n_valid), slope / n_valid


def mining_backward_host(g_ap, g_an, x: torch.Tensor, d_ap, d_an, pos_idx, neg_idx) -> torch.Tensor:
    """``mining_backward`` for CPU tensors; g_*, d_* and the indices are [B] NumPy arrays (g_* may be None)."""
    b = x.shape[0]
    d = np.stack([d_ap, d_an])
    g = np.stack([np.zeros_like(d_ap) if gi is None else gi.astype(d.dtype, copy=False) for gi in (g_ap, g_an)])
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(d > math.sqrt(SQ_FLOOR), g / d, 0.0).astype(d.dtype, copy=False).ravel()
    j = np.maximum(np.concatenate([pos_idx, neg_idx]), 0)
    ar = np.arange(b)
    diag = c[:b] + c[b:]
    np.add.at(diag, j, c)  # in index order, as torch's index_add_ on CPU
    nc = -c
    incoming = np.bincount(j, minlength=b)
    offsets = np.cumsum(incoming) - incoming + 3 * ar
    order = np.concatenate([ar, ar, ar, j]).argsort(kind="stable")
    cols = np.concatenate([ar, j, ar, ar])[order]
    vals = np.concatenate([diag, nc, nc])[order]
    grad = F.embedding_bag(torch.from_numpy(cols), x.detach().to(_compute_dtype(x)), torch.from_numpy(offsets),
                           mode="sum", per_sample_weights=torch.from_numpy(vals))
    return grad.to(x.dtype)


class BatchHardMiningFunction(torch.autograd.Function):
    """Mining without autograd over [B, B] (kernel "host", "torch" or "triton"), backward through the chosen pairs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, labels: torch.Tensor, kernel: str, check_finite: bool):
        if kernel == "host":
            arrays = mine_host(x, labels, check_finite)
            ctx.host = arrays[:4]
            ctx.save_for_backward(x)
            d_ap, d_an, pos_idx, neg_idx, n_same = (torch.from_numpy(a) for a in arrays)
        else:
            d_ap, d_an, pos_idx, neg_idx, n_same = _mine_raw(x, labels, kernel, check_finite)
            ctx.host = None
            ctx.save_for_backward(x, d_ap, d_an, pos_idx, neg_idx)
        ctx.mark_non_differentiable(pos_idx, neg_idx, n_same)
        return d_ap, d_an, pos_idx, neg_idx, n_same

    @staticmethod
    def backward(ctx, g_ap, g_an, _g_pos, _g_neg, _g_same):
        if ctx.host is not None:
            (x,) = ctx.saved_tensors
            g_ap, g_an = (None if g is None else g.numpy() for g in (g_ap, g_an))
            return mining_backward_host(g_ap, g_an, x, *ctx.host), None, None, None
        x, d_ap, d_an, pos_idx, neg_idx = ctx.saved_tensors
        return mining_backward(g_ap, g_an, x, d_ap, d_an, pos_idx, neg_idx), None, None, None


class BatchHardTripletLossFunction(torch.autograd.Function):
    """Mining and loss in one node: the backward goes straight from the scalar to the chosen pairs (few small ops)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, labels: torch.Tensor, margin: float | None, kernel: str, check_finite: bool):
        if kernel == "host":
            d_ap, d_an, pos_idx, neg_idx, n_same = mine_host(x, labels, check_finite)
            loss, slope = _loss_and_slope_host(d_ap, d_an, n_same, margin)
            ctx.host = (slope, d_ap, d_an, pos_idx, neg_idx)
            ctx.save_for_backward(x)
            return torch.from_numpy(loss)
        d_ap, d_an, pos_idx, neg_idx, n_same = _mine_raw(x, labels, kernel, check_finite)
        loss, slope = _loss_and_slope(d_ap, d_an, n_same, margin)
        ctx.host = None
        ctx.save_for_backward(x, d_ap, d_an, pos_idx, neg_idx, slope)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.host is not None:
            (x,) = ctx.saved_tensors
            slope, d_ap, d_an, pos_idx, neg_idx = ctx.host
            g = slope * grad.item()
            return mining_backward_host(g, -g, x, d_ap, d_an, pos_idx, neg_idx), None, None, None, None
        x, d_ap, d_an, pos_idx, neg_idx, slope = ctx.saved_tensors
        g = slope * grad
        return mining_backward(g, -g, x, d_ap, d_an, pos_idx, neg_idx), None, None, None, None


def _prepare(features, labels, backend: str, validate: bool) -> tuple[torch.Tensor, str]:
    """Check inputs; return int64 labels and the kernel: "triton", "torch", or "host" (the torch backend on CPU
    tensors outside torch.compile tracing). fp64 features take the torch / host path."""
    labels = check_triplet_inputs(features, labels)
    chosen = resolve_backend(backend, features)
    kernel = "triton" if chosen == "triton" and features.dtype != torch.float64 else "torch"
    if kernel == "torch" and features.device.type == "cpu" and not torch.compiler.is_compiling():
        kernel = "host"
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
    margin = check_margin(margin)
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
