"""The adversarial losses, on D's logits (B,), computed in float32 whatever the autocast dtype.

Each loss is a pair of pure functions (D side, G side) returning (loss, stats); stats are detached 0-dim
tensors (no host sync here). `real_logits` / `fake_logits` are D's raw outputs: "logits" for ns, plain
scores for lsgan, critic values for wgan_gp and hinge.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Stats = dict[str, Tensor]


def ns_d_loss(real_logits: Tensor, fake_logits: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Stats]:
    """Non-saturating GAN, D side (the seed): 0.5 * (BCE(real, 1 - s) + BCE(fake, 0)).

    With target t, BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), where softplus(-x) = -log(sigmoid(x))
    and softplus(x) = -log(1 - sigmoid(x)); binary_cross_entropy_with_logits is the stable, autocast-safe
    form (docs/design-notes.md). One-sided smoothing moves only the real target (to 1 - s).
    Stats: d_loss, d_loss_real, d_loss_fake; d_real = mean D(x), d_fake = mean D(G(z)) (probabilities);
    d_accuracy in [0, 1]: "real" iff logit > 0 (Keras's 0.5 threshold), the mean of the real and fake
    halves' accuracies (the tutorial's 0.5 * (acc_r + acc_f)).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing (loss.label_smoothing) must be in [0, 1), got {label_smoothing}")
    real, fake = real_logits.float(), fake_logits.float()
    loss_real = F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - label_smoothing))
    loss_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    loss = 0.5 * (loss_real + loss_fake)
    with torch.no_grad():
        real_d, fake_d = real.detach(), fake.detach()
        stats = {
            "d_loss": loss.detach(),
            "d_loss_real": loss_real.detach(),
            "d_loss_fake": loss_fake.detach(),
            "d_real": torch.sigmoid(real_d).mean(),
            "d_fake": torch.sigmoid(fake_d).mean(),
            "d_accuracy": 0.5 * ((real_d > 0).float().mean() + (fake_d <= 0).float().mean()),
        }
    return loss, stats


def ns_g_loss(fake_logits: Tensor) -> tuple[Tensor, Stats]:
    """Non-saturating G loss BCE(fake, 1) = mean softplus(-x) = -mean log D(G(z)).

    Goodfellow et al.'s heuristic: maximise log D(G(z)) rather than minimise log(1 - D(G(z))), whose
    gradient vanishes when D rejects the fakes confidently. Stats: g_loss, d_fake_for_g = mean D(G(z)).
    """
    fake = fake_logits.float()
    loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))  # == F.softplus(-fake).mean()
    with torch.no_grad():
        stats = {"g_loss": loss.detach(), "d_fake_for_g": torch.sigmoid(fake.detach()).mean()}
    return loss, stats


def lsgan_d_loss(real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, Stats]:
    """Least squares GAN (Mao et al. 2017, a=0, b=1): 0.5 * E[(D(x) - 1)^2] + 0.5 * E[D(G(z))^2]."""
    real, fake = real_scores.float(), fake_scores.float()
    loss_real = 0.5 * (real - 1.0).square().mean()
    loss_fake = 0.5 * fake.square().mean()
    loss = loss_real + loss_fake
    with torch.no_grad():
        stats = {"d_loss": loss.detach(), "d_loss_real": loss_real.detach(), "d_loss_fake": loss_fake.detach(),
                 "d_real": real.detach().mean(), "d_fake": fake.detach().mean()}
    return loss, stats


def lsgan_g_loss(fake_scores: Tensor) -> tuple[Tensor, Stats]:
    """Least squares G loss (c=1): 0.5 * E[(D(G(z)) - 1)^2]."""
    fake = fake_scores.float()
    loss = 0.5 * (fake - 1.0).square().mean()
    with torch.no_grad():
        stats = {"g_loss": loss.detach(), "d_fake_for_g": fake.detach().mean()}
    return loss, stats


def wasserstein_d_loss(real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, Stats]:
    """WGAN critic loss E[D(G(z))] - E[D(x)] (the gradient penalty is added by the objective).

    Stats: wasserstein = E[D(x)] - E[D(G(z))], the critic's estimate of the Wasserstein-1 distance."""
    real, fake = real_scores.float(), fake_scores.float()
    loss = fake.mean() - real.mean()
    with torch.no_grad():
        stats = {"d_loss": loss.detach(), "wasserstein": -loss.detach(),
                 "d_real": real.detach().mean(), "d_fake": fake.detach().mean()}
    return loss, stats


def wasserstein_g_loss(fake_scores: Tensor) -> tuple[Tensor, Stats]:
    """WGAN / hinge G loss: -E[D(G(z))]."""
    fake = fake_scores.float()
    loss = -fake.mean()
    with torch.no_grad():
        stats = {"g_loss": loss.detach(), "d_fake_for_g": fake.detach().mean()}
    return loss, stats


def hinge_d_loss(real_scores: Tensor, fake_scores: Tensor) -> tuple[Tensor, Stats]:
    """Hinge loss (Lim & Ye 2017; SNGAN, BigGAN): E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    real, fake = real_scores.float(), fake_scores.float()
    loss_real = F.relu(1.0 - real).mean()
    loss_fake = F.relu(1.0 + fake).mean()
    loss = loss_real + loss_fake
    with torch.no_grad():
        stats = {"d_loss": loss.detach(), "d_loss_real": loss_real.detach(), "d_loss_fake": loss_fake.detach(),
                 "d_real": real.detach().mean(), "d_fake": fake.detach().mean(),
                 "d_accuracy": 0.5 * ((real.detach() > 0).float().mean() + (fake.detach() <= 0).float().mean())}
    return loss, stats
