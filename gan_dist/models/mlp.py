"""The MLP GAN of Goodfellow et al. (2014), as commonly reproduced on MNIST.

G: z -> w -> 2w -> 4w -> 784 (LeakyReLU(0.2) hidden, tanh out); D: 784 -> 4w -> 2w -> w -> 1
(LeakyReLU(0.2) and dropout in hidden layers), w = width (256 by default: 256/512/1024 units).
No BatchNorm anywhere, on purpose: with dropout 0 a step is a deterministic function of the batch,
which the DDP-equivalence test (2 processes x B == 1 process x 2B) relies on.
Weights keep PyTorch's default Linear init.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SHAPE = (1, 28, 28)
IMAGE_NUMEL = 28 * 28  # 784 pixels
LEAKY_SLOPE = 0.2


class MLPGenerator(nn.Module):
    """z (B, latent_dim) -> images (B, 1, 28, 28) in [-1, 1]."""

    def __init__(self, latent_dim: int, width: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.fc1 = nn.Linear(latent_dim, width)
        self.fc2 = nn.Linear(width, width * 2)
        self.fc3 = nn.Linear(width * 2, width * 4)
        self.fc_out = nn.Linear(width * 4, IMAGE_NUMEL)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.fc1(z), LEAKY_SLOPE)  # (B, 256)
        x = F.leaky_relu(self.fc2(x), LEAKY_SLOPE)  # (B, 512)
        x = F.leaky_relu(self.fc3(x), LEAKY_SLOPE)  # (B, 1024)
        x = torch.tanh(self.fc_out(x))  # (B, 784)
        return x.view(-1, *IMAGE_SHAPE)  # (B, 1, 28, 28)


class MLPDiscriminator(nn.Module):
    """images (B, 1, 28, 28) -> logits (B,)."""

    def __init__(self, width: int, dropout: float = 0.3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(IMAGE_NUMEL, width * 4)
        self.fc2 = nn.Linear(width * 4, width * 2)
        self.fc3 = nn.Linear(width * 2, width)
        self.fc_out = nn.Linear(width, 1)
        # Identity at p=0: no RNG draw, so the model is deterministic (see module docstring).
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, 784); copies if x is channels_last
        x = self.drop(F.leaky_relu(self.fc1(x), LEAKY_SLOPE))  # (B, 1024)
        x = self.drop(F.leaky_relu(self.fc2(x), LEAKY_SLOPE))  # (B, 512)
        x = self.drop(F.leaky_relu(self.fc3(x), LEAKY_SLOPE))  # (B, 256)
        return self.fc_out(x).squeeze(1)  # (B,) logits
