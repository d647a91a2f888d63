"""The minimax objective (loss.name=minimax): G's loss is log(1 - D(G(z))), whose gradient vanishes when D
rejects the fakes, unlike ns's; D's side is ns's."""

from __future__ import annotations

import math

import torch

from gan_dist.config import LossConfig
from gan_dist.objectives import minimax, ns
from gan_dist.objectives.objective import build_objective


def test_minimax_g_loss_is_log_one_minus_d_and_saturates():
    logits = torch.tensor([-8.0, 0.0, 3.0], requires_grad=True)
    loss, stats = minimax.g_loss(logits, LossConfig(name="minimax"))
    expected = sum(math.log(1 - 1 / (1 + math.exp(-x))) for x in (-8.0, 0.0, 3.0)) / 3
    assert loss.item() == torch.tensor(expected).item() and stats["g_loss"].item() == loss.item()
    (grad,) = torch.autograd.grad(loss, logits)
    ns_loss, _ = ns.g_loss(logits, LossConfig())
    (ns_grad,) = torch.autograd.grad(ns_loss, logits)
    # A confidently rejected fake (logit -8): minimax's gradient ~ sigmoid(-8)/3, ns's ~ 1/3.
    assert abs(grad[0].item()) < 1e-3 < abs(ns_grad[0].item())


def test_minimax_is_a_registered_objective_with_ns_d_side():
    objective = build_objective(LossConfig(name="minimax", label_smoothing=0.1))
    real, fake = torch.randn(5), torch.randn(5)
    loss, _ = objective._d_loss(real, fake)
    expected, _ = ns.d_loss(real, fake, LossConfig(label_smoothing=0.1))
    assert torch.equal(loss, expected)
