"""When the loop does what, as a function of the step: one place to read the schedule."""

from __future__ import annotations

from dataclasses import dataclass

from gan_dist.config import Config


@dataclass(frozen=True)
class Cadence:
    """Intervals in G steps (0 = only at the end, -1 = never, as in the config)."""

    num_steps: int
    log_every: int
    sample_every: int
    eval_every: int
    checkpoint_every: int

    @classmethod
    def from_config(cls, config: Config) -> Cadence:
        return cls(num_steps=config.train.num_steps, log_every=config.log.log_every,
                   sample_every=config.log.sample_every, eval_every=config.eval.eval_every,
                   checkpoint_every=config.checkpoint.every)

    def log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.num_steps

    def sample(self, step: int) -> bool:
        """Step 1 (the tutorial's first grid), every sample_every, and the end (written by the trainer's `_finish`)."""
        return step == 1 or (self.sample_every > 0 and step % self.sample_every == 0)

    def evaluate(self, step: int) -> bool:
        """Every eval_every during training; the end's evaluation is part of `finish`."""
        return self.eval_every > 0 and step % self.eval_every == 0 and step != self.num_steps

    def evaluate_at_end(self) -> bool:
        return self.eval_every >= 0

    def checkpoint(self, step: int) -> bool:
        return self.checkpoint_every > 0 and step % self.checkpoint_every == 0 and step != self.num_steps
