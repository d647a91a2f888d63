"""DCGAN of Radford, Metz & Chintala (2015), adapted from 64x64 to MNIST's 28x28.

The paper's guidelines, kept: fractionally-strided (transposed) convolutions in G and strided
convolutions in D, no pooling, no hidden fully connected layers; BatchNorm in both except on G's output
and D's input layer; ReLU in G with tanh on the output; LeakyReLU(0.2) in D; weights drawn from
N(0, 0.02). Adapted: two x2 stages (7 -> 14 -> 28) instead of four (4 -> ... -> 64). G's first layer is
the paper's "project and reshape", written as a 7x7 transposed conv on z seen as a 1x1 image (the same
map as a Linear to 4w x 7 x 7); D's last layer is a 7x7 conv to one logit (a Linear on the flattened map).
Convolutions followed by BN have no bias (BN's beta replaces it); with batch_norm=False they get one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 28  # MNIST, pixels per side
INIT_STD = 0.02  # Radford et al.: all weights from N(0, 0.02)
LEAKY_SLOPE = 0.2


def _batch_norm(channels: int, enabled: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if enabled else nn.Identity()


def _dropout(p: float) -> nn.Module:
    # Identity at p=0 (the default here; Radford et al. use no dropout): no RNG draw.
    return nn.Dropout(p) if p > 0 else nn.Identity()


def dcgan_init_(module: nn.Module) -> None:
    """Conv weights ~ N(0, 0.02), BN weight ~ N(1, 0.02), all biases 0 (as the PyTorch DCGAN example)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (B, latent_dim) -> images (B, 1, 28, 28) in [-1, 1]; channels 4w -> 2w -> 1 (w = width)."""

    def __init__(self, latent_dim: int, width: int, batch_norm: bool = True) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        base = IMAGE_SIZE // 4  # 7
        self.project = nn.ConvTranspose2d(latent_dim, width * 4, base, bias=not batch_norm)
        self.bn0 = _batch_norm(width * 4, batch_norm)
        # kernel 4, stride 2, padding 1 doubles the size exactly: (n - 1) * 2 - 2 + 4 = 2n
        self.up1 = nn.ConvTranspose2d(width * 4, width * 2, 4, stride=2, padding=1, bias=not batch_norm)
        self.bn1 = _batch_norm(width * 2, batch_norm)
        self.up2 = nn.ConvTranspose2d(width * 2, 1, 4, stride=2, padding=1)  # output layer: no BN
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = z.view(z.shape[0], self.latent_dim, 1, 1)  # (B, 100, 1, 1)
        x = F.relu(self.bn0(self.project(x)))  # (B, 256, 7, 7)
        x = F.relu(self.bn1(self.up1(x)))  # (B, 128, 14, 14)
        return torch.tanh(self.up2(x))  # (B, 1, 28, 28)


class DCGANDiscriminator(nn.Module):
    """images (B, 1, 28, 28) -> logits (B,); channels w -> 2w, 4x4 stride-2 convs (w = width)."""

    def __init__(self, width: int, dropout: float = 0.0, batch_norm: bool = True) -> None:
        super().__init__()
        # kernel 4, stride 2, padding 1 halves the size exactly: (n + 2 - 4) // 2 + 1 = n / 2
        self.conv1 = nn.Conv2d(1, width, 4, stride=2, padding=1)  # input layer: no BN
        self.drop1 = _dropout(dropout)
        self.conv2 = nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=not batch_norm)
        self.bn2 = _batch_norm(width * 2, batch_norm)
        self.drop2 = _dropout(dropout)
        self.head = nn.Conv2d(width * 2, 1, IMAGE_SIZE // 4)  # 7x7 "valid" conv: one logit per image
        dcgan_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(F.leaky_relu(self.conv1(x), LEAKY_SLOPE))  # (B, 64, 14, 14)
        x = self.drop2(F.leaky_relu(self.bn2(self.conv2(x)), LEAKY_SLOPE))  # (B, 128, 7, 7)
        return self.head(x).flatten()  # (B, 1, 1, 1) -> (B,) logits
