"""The seed's per-epoch learning-rate schedule (FIRe-CCReID ``scheduler/warm_up_multi_step_lr.py``, from
fast-reid): warm-up factor times ``gamma ** (number of milestones <= epoch)``.

``main.py`` builds it with ``milestones=[30, 60], gamma=0.1, warmup_factor=0.1`` (``--warm_up_factor``),
``last_epoch=start_epoch - 1``, and leaves ``warmup_iters`` (10) and ``warmup_method`` ("linear") at the class
defaults (its ``--warm_up_epochs`` / ``--warm_up_method`` flags are parsed but never passed). ``train`` calls
``step()`` once at the end of every epoch, so epoch e (0-based) runs at factor(e). The seed's class default
``warmup_factor`` is 0.01; here it is the 0.1 the seed always passes.
"""

from __future__ import annotations

from bisect import bisect_right

import torch


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """lr(e) = base_lr * w(e) * gamma ** bisect_right(milestones, e); w(e) = warmup_factor * (1 - e / warmup_iters)
    + e / warmup_iters for e < warmup_iters ("linear"), warmup_factor ("constant"), else 1."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, warmup_factor: float = 0.1, warmup_iters: int = 10,
                 warmup_method: str = "linear", last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be a list of increasing integers, got {milestones}")
        if warmup_method not in ("constant", "linear"):  # the seed's check (its get_lr also has an unreachable "exp")
            raise ValueError(f"warmup_method must be 'constant' or 'linear', got {warmup_method!r}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """The multiplier of base_lr at ``last_epoch == epoch``."""
        warmup_factor = 1.0
        if epoch < self.warmup_iters:
            if self.warmup_method == "constant":
                warmup_factor = self.warmup_factor
            else:
                alpha = epoch / self.warmup_iters
                warmup_factor = self.warmup_factor * (1 - alpha) + alpha
        return warmup_factor * self.gamma ** bisect_right(self.milestones, epoch)

    def get_lr(self):
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]
