"""Non-saturating GAN (Goodfellow et al. 2014), the seed's objective, on D's logits (B,), in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dist.config import LossConfig

Stats = dict[str, Tensor]


def d_loss(real_logits: Tensor, fake_logits: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """D side: 0.5 * (BCE(real, 1 - s) + BCE(fake, 0)), s = loss.label_smoothing (one-sided).

    With target t, BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), where softplus(-x) = -log(sigmoid(x))
    and softplus(x) = -log(1 - sigmoid(x)); binary_cross_entropy_with_logits is the stable, autocast-safe
    form (docs/design-notes.md). Stats: d_loss, d_loss_real, d_loss_fake; d_real = mean D(x), d_fake =
    mean D(G(z)) (probabilities); d_accuracy in [0, 1]: "real" iff logit > 0 (Keras's 0.5 threshold), the
    mean of the real and fake halves' accuracies (the tutorial's 0.5 * (acc_r + acc_f)).
    """
    smoothing = loss.label_smoothing
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"loss.label_smoothing must be in [0, 1), got {smoothing}")
    real, fake = real_logits.float(), fake_logits.float()
    loss_real = F.binary_cross_entropy_with_logits(real, torch.full_like(real, 1.0 - smoothing))
    loss_fake = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    total = 0.5 * (loss_real + loss_fake)
    with torch.no_grad():
        real_d, fake_d = real.detach(), fake.detach()
        stats = {
            "d_loss": total.detach(),
            "d_loss_real": loss_real.detach(),
            "d_loss_fake": loss_fake.detach(),
            "d_real": torch.sigmoid(real_d).mean(),
            "d_fake": torch.sigmoid(fake_d).mean(),
            "d_accuracy": 0.5 * ((real_d > 0).float().mean() + (fake_d <= 0).float().mean()),
        }
    return total, stats


def g_loss(fake_logits: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """G side: BCE(fake, 1) = mean softplus(-x) = -mean log D(G(z)).

    Goodfellow et al.'s heuristic: maximise log D(G(z)) rather than minimise log(1 - D(G(z))), whose
    gradient vanishes when D rejects the fakes confidently. Stats: g_loss, d_fake_for_g = mean D(G(z)).
    """
    fake = fake_logits.float()
    total = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))  # == F.softplus(-fake).mean()
    with torch.no_grad():
        stats = {"g_loss": total.detach(), "d_fake_for_g": torch.sigmoid(fake.detach()).mean()}
    return total, stats


def describe(values: dict[str, float]) -> str:
    """The seed Keras tutorial's console line."""
    return (f"[D loss: {values['d_loss']:.4f}, acc.: {100 * values['d_accuracy']:.2f}%] "
            f"[G loss: {values['g_loss']:.4f}] D(x) {values['d_real']:.3f} D(G(z)) {values['d_fake']:.3f}")
