"""The learning-rate schedule (optim.lr_decay_start), applied by the loop before each step: constant, then
linear decay to 0 at the last step. Python floats written into the param groups: no host sync."""

from __future__ import annotations

from typing import Any


class LinearDecay:
    """lr(step) = configured lr x factor(step): 1 until start_fraction x num_steps, then linearly to 0."""

    def __init__(self, optimizers: list[Any], start_fraction: float, num_steps: int) -> None:
        self.optimizers = optimizers
        self.base_lrs = [[group["lr"] for group in optimizer.param_groups] for optimizer in optimizers]
        self.start = start_fraction * num_steps
        self.num_steps = num_steps
        self.constant = start_fraction >= 1.0

    def factor(self, step: int) -> float:
        if self.constant or step < self.start:
            return 1.0
        return max(0.0, (self.num_steps - step) / max(self.num_steps - self.start, 1.0))

    def apply(self, step: int) -> None:
        """Set every param group's lr for the step about to run (nothing to do when constant)."""
        if self.constant:
            return
        factor = self.factor(step)
        for optimizer, base_lrs in zip(self.optimizers, self.base_lrs, strict=True):
            for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * factor
