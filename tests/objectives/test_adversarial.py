"""The adversarial losses on logits against hand-computed values; label smoothing; accuracy; dtypes."""

from __future__ import annotations

import math

import pytest
import torch

from gan_dist.config import LossConfig
from gan_dist.objectives import hinge, lsgan, ns, wgan_gp

DEFAULT = LossConfig()


def ns_d_loss(real, fake, label_smoothing=0.0):
    return ns.d_loss(real, fake, LossConfig(label_smoothing=label_smoothing))


def ns_g_loss(fake):
    return ns.g_loss(fake, DEFAULT)


def lsgan_d_loss(real, fake):
    return lsgan.d_loss(real, fake, DEFAULT)


def lsgan_g_loss(fake):
    return lsgan.g_loss(fake, DEFAULT)


def wasserstein_d_loss(real, fake):
    return wgan_gp.d_loss(real, fake, DEFAULT)


def wasserstein_g_loss(fake):
    return wgan_gp.g_loss(fake, DEFAULT)


def hinge_d_loss(real, fake):
    return hinge.d_loss(real, fake, DEFAULT)

LOG2 = math.log(2.0)
discriminator_loss, generator_loss = ns_d_loss, ns_g_loss


def stats_to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: value.item() for key, value in stats.items()}


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_zero_logits_give_log2_and_half() -> None:
    zeros = torch.zeros(4)
    loss, stats = discriminator_loss(zeros, zeros)
    values = stats_to_floats(stats)
    assert loss.item() == pytest.approx(LOG2)
    for key in ("d_loss", "d_loss_real", "d_loss_fake"):
        assert values[key] == pytest.approx(LOG2)
    assert values["d_real"] == pytest.approx(0.5) and values["d_fake"] == pytest.approx(0.5)
    # logit 0 means sigmoid 0.5, which is "fake" (Keras: real iff > 0.5): reals all wrong, fakes all right
    assert values["d_accuracy"] == pytest.approx(0.5)
    g_loss, g_stats = generator_loss(zeros)
    assert g_loss.item() == pytest.approx(LOG2)
    assert stats_to_floats(g_stats) == pytest.approx({"g_loss": LOG2, "d_fake_for_g": 0.5})


def test_discriminator_loss_against_hand_computed_values() -> None:
    real, fake = [2.0, -1.0], [-3.0, 0.5]
    loss, stats = discriminator_loss(torch.tensor(real), torch.tensor(fake))
    loss_real = (softplus(-2.0) + softplus(1.0)) / 2  # -log sigmoid(x) for targets 1
    loss_fake = (softplus(-3.0) + softplus(0.5)) / 2  # -log(1 - sigmoid(x)) for targets 0
    values = stats_to_floats(stats)
    assert loss.item() == pytest.approx(0.5 * (loss_real + loss_fake), rel=1e-6)
    assert values["d_loss_real"] == pytest.approx(loss_real, rel=1e-6)
    assert values["d_loss_fake"] == pytest.approx(loss_fake, rel=1e-6)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert values["d_real"] == pytest.approx((sigmoid(2.0) + sigmoid(-1.0)) / 2, rel=1e-6)
    assert values["d_fake"] == pytest.approx((sigmoid(-3.0) + sigmoid(0.5)) / 2, rel=1e-6)
    assert values["d_accuracy"] == pytest.approx(0.5)  # one right in each half


@pytest.mark.parametrize(("real", "fake", "accuracy"), [
    ([1.0, 2.0, 3.0, 4.0], [-1.0, -1.0, 5.0, -1.0], (1.0 + 0.75) / 2),
    ([-1.0, -2.0], [1.0, 2.0], 0.0),
    ([0.1, 9.0], [-0.1, -9.0], 1.0),
    ([1.0, -1.0, 1.0, -1.0], [-1.0, -1.0], (0.5 + 1.0) / 2),  # halves of different sizes: mean of the two
])
def test_accuracy(real: list[float], fake: list[float], accuracy: float) -> None:
    _, stats = discriminator_loss(torch.tensor(real), torch.tensor(fake))
    assert stats["d_accuracy"].item() == pytest.approx(accuracy)


def test_one_sided_label_smoothing() -> None:
    x = torch.tensor([2.0, -1.0, 0.3])
    fake = torch.tensor([-0.5, 1.5])
    _, plain = discriminator_loss(x, fake)
    _, smoothed = discriminator_loss(x, fake, label_smoothing=0.1)
    expected_real = sum(0.9 * softplus(-v) + 0.1 * softplus(v) for v in x.tolist()) / 3
    assert smoothed["d_loss_real"].item() == pytest.approx(expected_real, rel=1e-6)
    assert smoothed["d_loss_fake"].item() == pytest.approx(plain["d_loss_fake"].item())  # fakes keep target 0
    assert smoothed["d_accuracy"].item() == plain["d_accuracy"].item()  # accuracy uses hard labels
    # The smoothed real loss is minimal where D(x) = 0.9: zero gradient at logit(0.9).
    at_optimum = torch.tensor([math.log(0.9 / 0.1)], requires_grad=True)
    loss, _ = discriminator_loss(at_optimum, torch.zeros(1), label_smoothing=0.1)
    loss.backward()
    assert at_optimum.grad.abs().item() < 1e-6
    with pytest.raises(ValueError, match="label_smoothing"):
        discriminator_loss(x, fake, label_smoothing=1.0)


def test_generator_loss_is_non_saturating_softplus() -> None:
    x = torch.tensor([-100.0, -3.0, 0.0, 2.0, 40.0], requires_grad=True)
    loss, stats = generator_loss(x)
    torch.testing.assert_close(loss, torch.nn.functional.softplus(-x).mean())
    assert loss.item() == pytest.approx((100.0 + softplus(3.0) + LOG2 + softplus(-2.0) + softplus(-40.0)) / 5,
                                        rel=1e-6)
    loss.backward()
    # d/dx softplus(-x) / n = -(1 - sigmoid(x)) / n: close to -1/n for confidently rejected fakes, not 0
    torch.testing.assert_close(x.grad, -(1 - torch.sigmoid(x.detach())) / 5)
    assert x.grad[0].item() == pytest.approx(-0.2)
    assert stats["d_fake_for_g"].item() == pytest.approx(torch.sigmoid(x.detach()).mean().item())


def test_extreme_logits_stay_finite() -> None:
    big = torch.tensor([1e4, -1e4])
    d_loss, _ = discriminator_loss(big, -big)
    g_loss, _ = generator_loss(big)
    assert d_loss.isfinite() and g_loss.isfinite()
    assert d_loss.item() == pytest.approx(0.5 * (1e4 / 2 + 1e4 / 2))  # one confident mistake in each half


def test_losses_are_float32_under_bf16_autocast_and_from_half_logits() -> None:
    layer = torch.nn.Linear(8, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real_logits = layer(torch.randn(16, 8)).squeeze(1)
        fake_logits = layer(torch.randn(16, 8)).squeeze(1)
        assert real_logits.dtype == torch.bfloat16
        d_loss, d_stats = discriminator_loss(real_logits, fake_logits, label_smoothing=0.1)
        g_loss, g_stats = generator_loss(fake_logits)
    assert d_loss.dtype == torch.float32 and g_loss.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in [*d_stats.values(), *g_stats.values()])
    (d_loss + g_loss).backward()
    assert layer.weight.grad is not None and layer.weight.grad.isfinite().all()
    half_loss, _ = generator_loss(torch.zeros(3, dtype=torch.float16))
    assert half_loss.dtype == torch.float32


def test_stats_are_detached_scalars() -> None:
    real = torch.randn(5, requires_grad=True)
    fake = torch.randn(5, requires_grad=True)
    loss, stats = discriminator_loss(real, fake)
    assert loss.requires_grad and loss.ndim == 0
    assert set(stats) == {"d_loss", "d_loss_real", "d_loss_fake", "d_real", "d_fake", "d_accuracy"}
    assert all(v.ndim == 0 and not v.requires_grad for v in stats.values())
    assert set(generator_loss(fake)[1]) == {"g_loss", "d_fake_for_g"}


def test_lsgan_against_hand_computed_values() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-1.0, 0.25])
    loss, stats = lsgan_d_loss(real, fake)
    expected_real = 0.5 * ((2.0 - 1) ** 2 + (0.5 - 1) ** 2) / 2  # 0.5 E[(D(x) - 1)^2]
    expected_fake = 0.5 * ((-1.0) ** 2 + 0.25**2) / 2  # 0.5 E[D(G(z))^2]
    assert loss.item() == pytest.approx(expected_real + expected_fake)
    assert stats["d_loss_real"].item() == pytest.approx(expected_real)
    g_loss, _ = lsgan_g_loss(fake)
    assert g_loss.item() == pytest.approx(0.5 * ((-1.0 - 1) ** 2 + (0.25 - 1) ** 2) / 2)
    optimum, _ = lsgan_d_loss(torch.ones(3), torch.zeros(3))  # D(x) = b = 1, D(G(z)) = a = 0
    assert optimum.item() == 0.0


def test_wasserstein_and_hinge_against_hand_computed_values() -> None:
    real, fake = torch.tensor([3.0, 0.5, -0.5]), torch.tensor([-2.0, 0.0, 1.5])
    loss, stats = wasserstein_d_loss(real, fake)
    assert loss.item() == pytest.approx((-2.0 + 0.0 + 1.5) / 3 - (3.0 + 0.5 - 0.5) / 3)
    assert stats["wasserstein"].item() == pytest.approx(-loss.item())
    g_loss, _ = wasserstein_g_loss(fake)
    assert g_loss.item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    # hinge: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]
    h_loss, h_stats = hinge_d_loss(real, fake)
    expected_real = (0.0 + 0.5 + 1.5) / 3
    expected_fake = (0.0 + 1.0 + 2.5) / 3
    assert h_loss.item() == pytest.approx(expected_real + expected_fake)
    assert h_stats["d_loss_real"].item() == pytest.approx(expected_real)
    assert hinge_d_loss(torch.full((2,), 5.0), torch.full((2,), -5.0))[0].item() == 0.0  # outside the margins
