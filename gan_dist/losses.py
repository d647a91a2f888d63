"""GAN losses on D's logits (non-saturating binary cross-entropy, as the seed Keras tutorial).

Always `binary_cross_entropy_with_logits` (log-sum-exp stable, and allowed under autocast), never BCE
on sigmoid outputs. Logits are upcast to float32 first, so bf16/fp16 autocast gives float32 losses.

Stats are returned as detached 0-dim float32 tensors on the logits' device, not Python numbers: reading
them is a host-device sync, so the caller does it once per log interval, e.g. with `stats_to_floats`
(one stack + one `.tolist()` for the whole dict), or reduces them across processes first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor,
                       label_smoothing: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """D's loss 0.5 * (BCE(real, 1 - label_smoothing) + BCE(fake, 0)), and detached stats.

    With target t, BCE(x, t) = t * softplus(-x) + (1 - t) * softplus(x), where softplus(-x) = -log(sigmoid(x))
    and softplus(x) = -log(1 - sigmoid(x)). One-sided smoothing: only the real target moves (to 1 - s).
    Stats: d_loss, d_loss_real, d_loss_fake; d_real = mean D(x), d_fake = mean D(G(z)) (probabilities);
    d_accuracy in [0, 1]: D predicts "real" iff logit > 0 (sigmoid > 0.5, Keras's threshold), and the
    accuracy is the mean of the real and fake halves' accuracies (as the tutorial's 0.5 * (acc_r + acc_f)).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    real = real_logits.float()
    fake = fake_logits.float()
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


def generator_loss(fake_logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Non-saturating G loss BCE(fake, 1) = mean softplus(-x) = -mean log D(G(z)), and detached stats.

    Goodfellow et al.'s heuristic: maximise log D(G(z)) rather than minimise log(1 - D(G(z))), whose
    gradient vanishes when D rejects the fakes confidently. Stats: g_loss, d_fake_for_g = mean D(G(z))
    as seen in the G phase.
    """
    fake = fake_logits.float()
    loss = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))  # == F.softplus(-fake).mean()
    with torch.no_grad():
        stats = {"g_loss": loss.detach(), "d_fake_for_g": torch.sigmoid(fake.detach()).mean()}
    return loss, stats


def stats_to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Python floats from a dict of 0-dim tensors with a single host-device sync."""
    if not stats:
        return {}
    values = torch.stack([value.detach().float() for value in stats.values()]).tolist()
    return dict(zip(stats.keys(), values, strict=True))
