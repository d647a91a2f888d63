"""The original minimax GAN (Goodfellow et al. 2014, eq. 1): D maximises log D(x) + log(1 - D(G(z))), G
minimises log(1 - D(G(z))) itself, whose gradient vanishes while D rejects the fakes confidently (why the
paper trains G with the non-saturating heuristic, `ns`, in practice). On D's logits (B,), in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dist.config import LossConfig
from gan_dist.objectives import ns

Stats = dict[str, Tensor]


def d_loss(real_logits: Tensor, fake_logits: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """D's side is the same as ns's: 0.5 * (BCE(real, 1) + BCE(fake, 0))."""
    return ns.d_loss(real_logits, fake_logits, loss)


def g_loss(fake_logits: Tensor, loss: LossConfig) -> tuple[Tensor, Stats]:
    """E[log(1 - D(G(z)))] = -E[softplus(x)] (log(1 - sigmoid(x)) = -softplus(x)), minimised by G."""
    fake = fake_logits.float()
    total = -F.softplus(fake).mean()
    with torch.no_grad():
        stats = {"g_loss": total.detach(), "d_fake_for_g": torch.sigmoid(fake.detach()).mean()}
    return total, stats
