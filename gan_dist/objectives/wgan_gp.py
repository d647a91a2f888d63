"""WGAN-GP (Gulrajani et al. 2017) on the critic's scores (B,), in float32: the Wasserstein losses here;
the gradient penalty on real/fake interpolates is added by gan_dist.objectives.objective (the registry
entry's `gradient_penalty`)."""

from __future__ import annotations

import torch
from torch import Tensor

from gan_dist.config import LossConfig

Stats = dict[str, Tensor]


def d_loss(real_scores: Tensor, fake_scores: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """Critic loss E[D(G(z))] - E[D(x)]. Stats: wasserstein = E[D(x)] - E[D(G(z))], the critic's estimate of
    the Wasserstein-1 distance."""
    real, fake = real_scores.float(), fake_scores.float()
    total = fake.mean() - real.mean()
    with torch.no_grad():
        stats = {"d_loss": total.detach(), "wasserstein": -total.detach(),
                 "d_real": real.detach().mean(), "d_fake": fake.detach().mean()}
    return total, stats


def g_loss(fake_scores: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """-E[D(G(z))]."""
    fake = fake_scores.float()
    total = -fake.mean()
    with torch.no_grad():
        stats = {"g_loss": total.detach(), "d_fake_for_g": fake.detach().mean()}
    return total, stats
