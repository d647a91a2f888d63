"""Helpers shared by the model tests."""

import torch
from torch import nn


def output_shapes(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shape of each named submodule for one forward of x (forward hooks, removed after)."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
               for n in names]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return shapes
