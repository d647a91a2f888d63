"""Objectives: the gradient penalty and R1 against analytic values, ACGAN's class loss, lazy R1, stats."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import ConfigError, LossConfig
from gan_dist.objectives.objective import DPhaseInputs, build_objective, gradient_penalty, input_gradients
from gan_dist.registry.objectives import OBJECTIVES


class LinearCritic(nn.Module):
    """D(x) = <w, x> + b: its input gradient is w for every x, so ||grad|| = ||w|| everywhere."""

    def __init__(self, w: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(bias))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return (x.flatten(1) * self.w.flatten()).sum(1) + self.b  # (B,)


class QuadraticCritic(nn.Module):
    """D(x) = 0.5 * a * ||x||^2: input gradient a * x, so ||grad||^2 = a^2 ||x||^2 per sample."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return 0.5 * self.a * x.flatten(1).square().sum(1)


def _inputs(real: torch.Tensor, fake: torch.Tensor, **kwargs) -> DPhaseInputs:
    return DPhaseInputs(real=real, real_labels=None, fake=fake, fake_labels=None, **kwargs)


def test_gradient_penalty_of_a_linear_critic_is_analytic() -> None:
    """(||w|| - 1)^2 for any interpolate, and its gradient w.r.t. w is 2 (||w|| - 1) w / ||w||."""
    torch.manual_seed(0)
    w = torch.randn(1, 4, 4) * 0.7
    critic = LinearCritic(w, bias=0.3)
    real, fake = torch.randn(6, 1, 4, 4), torch.randn(6, 1, 4, 4)
    objective = build_objective(LossConfig(name="wgan_gp", gp_weight=10.0))
    loss, stats = objective.d_phase(critic, _inputs(real, fake, mix=torch.rand(6)))
    norm = w.norm().item()
    assert stats["gradient_penalty"].item() == pytest.approx((norm - 1.0) ** 2, rel=1e-5)
    wasserstein = (critic(real).mean() - critic(fake).mean()).item()
    assert stats["wasserstein"].item() == pytest.approx(wasserstein, rel=1e-5)
    assert loss.item() == pytest.approx(-wasserstein + 10.0 * (norm - 1.0) ** 2, rel=1e-5)
    loss.backward()
    # d/dw [mean D(fake) - mean D(real)] = mean(fake) - mean(real); d/dw 10 (||w|| - 1)^2 = 20 (||w|| - 1) w / ||w||
    expected = (fake.mean(0) - real.mean(0)) + 20.0 * (norm - 1.0) * w / norm
    torch.testing.assert_close(critic.w.grad, expected, rtol=1e-4, atol=1e-5)


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic() -> None:
    w = torch.zeros(1, 2, 2)
    w[0, 0, 0] = 1.0
    x = torch.randn(3, 1, 2, 2).requires_grad_(True)
    grads = input_gradients(LinearCritic(w)(x), x)
    assert gradient_penalty(grads).item() == pytest.approx(0.0, abs=1e-10)


def test_fp16_penalties_run_in_float32_and_stay_finite() -> None:
    """Under fp16 autocast the step hands penalties a float32 D (PenaltyD): d D(x)/dx of a D whose output grows
    with x overflows in half precision at GradScaler's first scale (65536), which once put an inf in the
    statistics and stopped healthy runs as 'diverged'. The float32 path gives the exact penalty."""
    from gan_dist.train.step import PenaltyD

    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.Linear(64, 1))
    with torch.no_grad():
        critic[1].weight.mul_(40.0)  # large input gradients: ~1e3 per sample
    real, fake = torch.randn(4, 1, 4, 4), torch.randn(4, 1, 4, 4)
    D = lambda x, labels=None: critic(x).squeeze(1)  # noqa: E731
    objective = build_objective(LossConfig(name="wgan_gp", r1_gamma=1.0))
    reference_loss, reference = objective.d_phase(D, _inputs(real, fake, mix=torch.full((4,), 0.5)))
    # The old recipe's input gradient of the loss-scaled fp16 output overflows:
    x = real.detach().half().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.float16):
        scaled = copy.deepcopy(critic).half()(x).float().sum() * 65536.0
    (grads,) = torch.autograd.grad(scaled, x)
    assert not torch.isfinite(grads).all()
    with torch.autocast("cpu", dtype=torch.float16):
        loss, stats = objective.d_phase(D, _inputs(real, fake, mix=torch.full((4,), 0.5)),
                                        D_penalty=PenaltyD(critic_module(critic), None, None, full_precision=True))
    for key in ("gradient_penalty", "r1_penalty"):
        assert torch.isfinite(stats[key]) and stats[key].item() == pytest.approx(reference[key].item(), rel=1e-5)


def critic_module(critic: nn.Module) -> nn.Module:
    """`critic` as a D module: (x, labels) -> scores (B,)."""

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.critic = critic

        def forward(self, x, labels=None):
            return self.critic(x).squeeze(1)

    return Wrapped()


def test_r1_penalty_of_a_quadratic_critic_is_analytic_and_lazy() -> None:
    """R1 = gamma / 2 * E||a x||^2, applied every r1_every D steps and scaled by r1_every."""
    real, fake = torch.randn(5, 1, 3, 3), torch.randn(5, 1, 3, 3)
    a, gamma = 1.5, 4.0
    expected_r1 = (a**2 * real.flatten(1).square().sum(1)).mean().item()
    objective = build_objective(LossConfig(name="hinge", r1_gamma=gamma, r1_every=4))
    critic = QuadraticCritic(a)
    base, _ = build_objective(LossConfig(name="hinge")).d_phase(critic, _inputs(real, fake))
    for d_step_index in range(8):
        loss, stats = objective.d_phase(critic, _inputs(real, fake, d_step_index=d_step_index))
        if d_step_index % 4 == 0:
            assert stats["r1_penalty"].item() == pytest.approx(expected_r1, rel=1e-5)
            assert loss.item() == pytest.approx(base.item() + 0.5 * gamma * 4 * expected_r1, rel=1e-5)
        else:
            assert "r1_penalty" not in stats
            assert loss.item() == pytest.approx(base.item(), rel=1e-6)


def test_r1_backpropagates_second_order_terms_into_the_critic() -> None:
    """d/da [gamma/2 * a^2 E||x||^2] = gamma * a * E||x||^2: needs the double backward."""
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    critic = QuadraticCritic(0.5)
    objective = build_objective(LossConfig(name="wgan_gp", r1_gamma=2.0))
    loss_without, _ = build_objective(LossConfig(name="wgan_gp")).d_phase(
        critic, _inputs(real, fake, mix=torch.full((4,), 0.5)))
    (grad_without,) = torch.autograd.grad(loss_without, critic.a)
    loss, _ = objective.d_phase(critic, _inputs(real, fake, mix=torch.full((4,), 0.5)))
    (grad,) = torch.autograd.grad(loss, critic.a)
    expected_extra = 2.0 * 0.5 * real.flatten(1).square().sum(1).mean()
    assert (grad - grad_without).item() == pytest.approx(expected_extra.item(), rel=1e-5)


class TinyACGAND(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(4, 8)
        self.adversarial = nn.Linear(8, 1)
        self.classes = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.features(x.flatten(1)))
        return self.adversarial(h).squeeze(1), self.classes(h)


def test_acgan_adds_the_class_loss_in_both_phases() -> None:
    torch.manual_seed(0)
    D = TinyACGAND()
    real, fake = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    real_labels, fake_labels = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([2, 2, 1, 1, 0, 0])
    objective = build_objective(LossConfig(name="ns", acgan_weight=0.5))
    loss, stats = objective.d_phase(D, DPhaseInputs(real, real_labels, fake, fake_labels))
    (real_logits, real_classes), (fake_logits, fake_classes) = D(real), D(fake)
    adversarial = 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones(6))
                         + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros(6)))
    class_loss = 0.5 * (F.cross_entropy(real_classes, real_labels) + F.cross_entropy(fake_classes, fake_labels))
    assert loss.item() == pytest.approx((adversarial + 0.5 * class_loss).item(), rel=1e-6)
    assert stats["d_class_loss"].item() == pytest.approx(class_loss.item(), rel=1e-6)
    g_loss, g_stats = objective.g_phase(D, fake, fake_labels)
    expected_g = F.softplus(-fake_logits).mean() + 0.5 * F.cross_entropy(fake_classes, fake_labels)
    assert g_loss.item() == pytest.approx(expected_g.item(), rel=1e-6)
    accuracy = (fake_classes.argmax(1) == fake_labels).float().mean().item()
    assert g_stats["g_class_accuracy"].item() == pytest.approx(accuracy)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_reports_d_and_g_loss_and_describes_them(name: str) -> None:
    torch.manual_seed(1)
    critic = LinearCritic(torch.randn(1, 2, 2))
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    objective = build_objective(LossConfig(name=name))
    _, d_stats = objective.d_phase(critic, _inputs(real, fake, mix=torch.rand(4)))
    _, g_stats = objective.g_phase(critic, fake, None)
    values = {key: value.item() for key, value in {**d_stats, **g_stats}.items()}
    assert {"d_loss", "g_loss"} <= set(values)
    assert all(math.isfinite(v) for v in values.values())
    line = objective.describe(values)
    assert f"[D loss: {values['d_loss']:.4f}" in line and f"[G loss: {values['g_loss']:.4f}]" in line
    assert objective.penalizes_gradients == (name == "wgan_gp")


def test_unknown_objective_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="loss.name"):
        build_objective(LossConfig(name="wgan"))
