"""Least squares GAN (Mao et al. 2017, a=0, b=c=1) on D's scores (B,), in float32."""

from __future__ import annotations

import torch
from torch import Tensor

from gan_dist.config import LossConfig

Stats = dict[str, Tensor]


def d_loss(real_scores: Tensor, fake_scores: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """0.5 * E[(D(x) - 1)^2] + 0.5 * E[D(G(z))^2]."""
    real, fake = real_scores.float(), fake_scores.float()
    loss_real = 0.5 * (real - 1.0).square().mean()
    loss_fake = 0.5 * fake.square().mean()
    total = loss_real + loss_fake
    with torch.no_grad():
        stats = {"d_loss": total.detach(), "d_loss_real": loss_real.detach(), "d_loss_fake": loss_fake.detach(),
                 "d_real": real.detach().mean(), "d_fake": fake.detach().mean()}
    return total, stats


def g_loss(fake_scores: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """0.5 * E[(D(G(z)) - 1)^2]."""
    fake = fake_scores.float()
    total = 0.5 * (fake - 1.0).square().mean()
    with torch.no_grad():
        stats = {"g_loss": total.detach(), "d_fake_for_g": fake.detach().mean()}
    return total, stats
