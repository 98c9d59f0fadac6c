"""BatchNorm over the global batch when N processes train: the statistics one process takes over all B images.

Per-rank BN (what DDP gives by default, and what DataParallel users elsewhere get) normalises each rank's B/N images
by their own mean and variance, so the forward, the gradients and the running statistics change with the number of
processes. ``GlobalBatchNorm`` (gloo, CPU or CUDA tensors) gathers each rank's per-channel (count, mean, M2) with one
differentiable all-gather per layer and merges them (Chan et al.'s parallel variance: no E[x^2] - E[x]^2
cancellation), so every rank normalises with the global statistics and the backward carries the gradient through
them. On NCCL, ``torch.nn.SyncBatchNorm`` does the same with its fused CUDA kernels. Both keep the module's
parameter and buffer names, so checkpoints load strict in either form.
"""

from __future__ import annotations

import torch
from torch import nn

from fastccreid.engine.distributed import DistContext, gather_batch

BN_CHOICES = ("global", "per_rank")


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm (1d / 2d / 3d alike: the channel dim is 1) whose training-mode statistics are taken over every
    rank's rows. Input ``[b, C, ...]`` on each rank (b may differ between ranks); eval mode and one process are the
    plain ``F.batch_norm``. Running statistics move with the global mean and the global unbiased variance, as one
    process's BN on the whole batch."""

    def __init__(self, num_features: int, ctx: DistContext, **kw) -> None:
        super().__init__(num_features, **kw)
        self.ctx = ctx

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [B, C, ...] input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self._check_input_dim(x)
        if not (self.training and self.ctx.distributed):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = (1, -1, *([1] * (x.dim() - 2)))
        xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # statistics in >= fp32, as F.batch_norm
        count = xs.numel() // xs.shape[1]
        var_local, mean = torch.var_mean(xs, dims, correction=0)  # [C] each, one fused pass
        m2 = var_local * count  # squared deviations about this rank's mean
        local = torch.cat([torch.full((1,), float(count), dtype=xs.dtype, device=xs.device), mean, m2])
        rows = gather_batch(local.unsqueeze(0), self.ctx)  # [W, 1 + 2C], differentiable
        c = self.num_features
        counts, means, m2s = rows[:, :1], rows[:, 1:c + 1], rows[:, c + 1:]
        total = counts.sum()
        g_mean = (counts * means).sum(0) / total
        g_m2 = (m2s + counts * (means - g_mean).square()).sum(0)
        var = g_m2 / total  # biased: what normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = g_m2 / (total - 1).clamp(min=1)
                self.running_mean.mul_(1 - factor).add_(g_mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach().to(self.running_var.dtype), alpha=factor)
        # y = x * scale + shift with per-channel [C] scale / shift: one multiply-add over the big tensor (and a
        # cheap backward) instead of four elementwise passes
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
        shift = -g_mean * scale
        if self.affine:
            shift = shift + self.bias
        return torch.addcmul(shift.view(shape), xs, scale.view(shape)).to(x.dtype)


def convert_batchnorm(module: nn.Module, mode: str, ctx: DistContext) -> nn.Module:
    """``module`` with every BatchNorm taking its statistics as ``mode`` says: "per_rank" leaves it as it is;
    "global" (the default when more than one process trains) swaps each BN for ``torch.nn.SyncBatchNorm`` on NCCL
    and for ``GlobalBatchNorm`` on gloo. One process: returned unchanged. Parameters and buffers are moved over,
    not copied, under the same names; the model is changed in place (the trainer's own model, built for this)."""
    if mode not in BN_CHOICES:
        raise ValueError(f"--bn must be one of {', '.join(BN_CHOICES)}; got {mode!r}")
    if mode == "per_rank" or not ctx.distributed:
        return module
    if ctx.backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module, ctx)


def _to_global(module: nn.Module, ctx: DistContext) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, ctx, eps=module.eps, momentum=module.momentum,
                              affine=module.affine, track_running_stats=module.track_running_stats,
                              device=None, dtype=None)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias  # the same Parameters (requires_grad kept)
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _to_global(child, ctx)
        if converted is not child:
            setattr(module, name, converted)
    return module
