"""Hinge loss (Lim & Ye 2017; SNGAN, BigGAN) on D's scores (B,), in float32; G's side is WGAN's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dist.config import LossConfig
from gan_dist.objectives.wgan_gp import g_loss

Stats = dict[str, Tensor]
__all__ = ["d_loss", "g_loss"]


def d_loss(real_scores: Tensor, fake_scores: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]."""
    real, fake = real_scores.float(), fake_scores.float()
    loss_real = F.relu(1.0 - real).mean()
    loss_fake = F.relu(1.0 + fake).mean()
    total = loss_real + loss_fake
    with torch.no_grad():
        stats = {"d_loss": total.detach(), "d_loss_real": loss_real.detach(), "d_loss_fake": loss_fake.detach(),
                 "d_real": real.detach().mean(), "d_fake": fake.detach().mean(),
                 "d_accuracy": 0.5 * ((real.detach() > 0).float().mean() + (fake.detach() <= 0).float().mean())}
    return total, stats
