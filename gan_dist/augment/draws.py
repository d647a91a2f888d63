"""Where an augmentation's random numbers come from: an object passed in, never torch's global RNG.

Every random quantity of an augmentation is drawn per sample, as a row of a (batch_size, *shape) tensor of
uniforms or normals; integer choices (flips, 90-degree turns, translations, cutout positions) are derived
from uniforms by floor(u * n). So a draw is a pure function of the generator's state and the global batch:

- resume is exact: checkpoint the generator's state (`torch.Generator.get_state()`, a uint8 tensor), set
  it back, and the next augmentation draws what it would have drawn;
- 1 process with batch 2B sees the same augmentation of every sample as 2 processes with batch B each,
  when every rank draws for the global batch from an identically seeded generator and keeps its own rows
  (`GeneratorDraws`), as the trainer's NoiseSource does for z (docs/design-notes.md, "No host sync inside
  a step");
- nothing is read back to the host: the draws stay on the generator's device.

The augmentations draw a fixed number of values per sample at each call, whatever their probability p,
so the stream stays aligned across ranks and across a resume that changes p.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Draws(Protocol):
    """A source of per-sample random numbers, float32 on the images' device."""

    def uniform(self, batch_size: int, *shape: int) -> Tensor:
        """U[0, 1), shape (batch_size, *shape)."""
        ...

    def normal(self, batch_size: int, *shape: int) -> Tensor:
        """N(0, 1), shape (batch_size, *shape)."""
        ...


class GeneratorDraws:
    """Draws from one torch.Generator, identical on every rank: each draw is made for the global batch
    (batch_size * world_size rows) and rank r keeps rows [r * batch_size, (r + 1) * batch_size).

    The tensors are on the generator's device (put the generator where the images are). The extra rows
    cost little: an augmentation draws a few dozen numbers per sample. Checkpoint `generator.get_state()`
    for an exact resume.
    """

    def __init__(self, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"GeneratorDraws needs 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.generator, self.rank, self.world_size = generator, rank, world_size

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def _rows(self, draw: Tensor, batch_size: int) -> Tensor:
        return draw[self.rank * batch_size:(self.rank + 1) * batch_size]

    def uniform(self, batch_size: int, *shape: int) -> Tensor:
        """U[0, 1) (batch_size, *shape): this rank's rows of a draw for the global batch."""
        size = (batch_size * self.world_size, *shape)
        draw = torch.rand(size, generator=self.generator, device=self.device, dtype=torch.float32)
        return self._rows(draw, batch_size)

    def normal(self, batch_size: int, *shape: int) -> Tensor:
        """N(0, 1) (batch_size, *shape): this rank's rows of a draw for the global batch."""
        size = (batch_size * self.world_size, *shape)
        draw = torch.randn(size, generator=self.generator, device=self.device, dtype=torch.float32)
        return self._rows(draw, batch_size)


def uniform_integers(u: Tensor, n: int) -> Tensor:
    """floor(u * n) for u in [0, 1): integers 0 .. n - 1 as float32, uniform when u is.

    Clamped to n - 1, a guard only: for float32 u < 1 and integer n < 2^24, u * n rounds below n.
    """
    return torch.floor(u * n).clamp(max=n - 1)
