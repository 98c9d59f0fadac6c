"""The training run's per-epoch learning-rate schedule: warm-up, then step decay at milestones.

The seed's schedule (fast-reid's ``WarmupMultiStepLR``, kept as the oracle in ``fastccreid.reference.scheduler``):
epoch e (0-based) trains at ``base_lr * warm(e) * gamma ** (milestones passed by e)``; ``step()`` is called once at
the end of every epoch, and a resumed run passes ``last_epoch = start_epoch - 1``. Same constructor keywords and
attribute names as the reference, so a scheduler ``state_dict`` saved by either loads into the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastccreid.engine.config import WARM_UP_METHODS

WARMUP_METHODS = WARM_UP_METHODS  # one definition (the --warm_up_method choices)


class WarmupMultiStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Multiplier of each group's base lr at epoch e:

    warm(e) = warmup_factor                                  (e < warmup_iters, "constant")
              warmup_factor * (1 - e / warmup_iters) + e / warmup_iters   (e < warmup_iters, "linear")
              1                                              (e >= warmup_iters)
    times gamma ** #{m in milestones : m <= e}.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int], gamma: float = 0.1,
                 warmup_factor: float = 0.1, warmup_iters: int = 10, warmup_method: str = "linear",
                 last_epoch: int = -1) -> None:
        steps = list(milestones)
        if any(b < a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"milestones must be a list of increasing integers, got {milestones}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(f"warmup_method must be one of {', '.join(WARMUP_METHODS)}, got {warmup_method!r}")
        self.milestones = milestones
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def _warmup(self, epoch: int) -> float:
        if epoch >= self.warmup_iters:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        progress = epoch / self.warmup_iters
        return self.warmup_factor * (1 - progress) + progress

    def factor(self, epoch: int) -> float:
        """The multiplier of the base lr for epoch ``epoch`` (the value at ``last_epoch == epoch``)."""
        passed = sum(1 for m in self.milestones if m <= epoch)
        return self._warmup(epoch) * self.gamma ** passed

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
