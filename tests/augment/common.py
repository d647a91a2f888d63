"""Test helpers: draws chosen by the test, a draw counter, the host-sync detector, a tiny D."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode


class ScriptedDraws:
    """Returns the tensors it was given (checking the asked shape), as a Draws would."""

    def __init__(self, uniforms: Tensor | None = None, normals: Tensor | None = None) -> None:
        self.uniforms, self.normals = uniforms, normals

    def uniform(self, batch_size: int, *shape: int) -> Tensor:
        assert self.uniforms is not None and self.uniforms.shape == (batch_size, *shape)
        return self.uniforms

    def normal(self, batch_size: int, *shape: int) -> Tensor:
        assert self.normals is not None and self.normals.shape == (batch_size, *shape)
        return self.normals


class CountingDraws:
    """Wraps a Draws and records every call as (kind, batch_size, shape)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []

    def uniform(self, batch_size: int, *shape: int) -> Tensor:
        self.calls.append(("uniform", batch_size, shape))
        return self.inner.uniform(batch_size, *shape)

    def normal(self, batch_size: int, *shape: int) -> Tensor:
        self.calls.append(("normal", batch_size, shape))
        return self.inner.normal(batch_size, *shape)


class NoHostSync(TorchDispatchMode):
    """Fails on any op that reads a tensor's value on the host (.item(), bool(tensor), .tolist(), ...),
    as tests/train/test_step.py's detector does."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default):
            raise AssertionError(f"host sync: {func}")
        return func(*args, **(kwargs or {}))


def tiny_discriminator(channels: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A smooth (softplus) conv D: its input gradient depends on the input, so R1's second-order term is
    not zero."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.Softplus(),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Softplus(),
                         nn.Flatten(), nn.LazyLinear(1)).to(dtype)


def r1_step(D: nn.Module, augment, images: Tensor, draws) -> tuple[Tensor, Tensor]:
    """R1 as the objectives take it: d D(augment(x)).sum() / dx with create_graph, then backward of the
    penalty. Returns (the input gradient, the penalty)."""
    x = images.detach().requires_grad_(True)
    logits = D(augment(x, draws))
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    (penalty + logits.mean()).backward()
    return grad, penalty
