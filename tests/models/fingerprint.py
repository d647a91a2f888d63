"""State-dict and forward fingerprints: pin a model's exact initialisation and numerics in a few numbers."""

from __future__ import annotations

import torch
from torch import nn


def tensor_fingerprint(t: torch.Tensor) -> tuple[float, float]:
    """(sum |t|, sum t * ramp) in float64: the ramp makes a permutation or a shifted slice visible."""
    flat = t.detach().double().flatten()
    ramp = torch.linspace(-1.0, 1.0, flat.numel(), dtype=torch.float64)
    return round(flat.abs().sum().item(), 9), round((flat * ramp).sum().item(), 9)


def state_fingerprint(module: nn.Module) -> dict[str, tuple[tuple[int, ...], float, float]]:
    """name -> (shape, sum |t|, sum t * ramp) for every state_dict entry, in state_dict order."""
    return {name: (tuple(t.shape), *tensor_fingerprint(t)) for name, t in module.state_dict().items()}
