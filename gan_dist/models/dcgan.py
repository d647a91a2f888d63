"""DCGAN of Radford, Metz & Chintala (2015), at the dataset's size (the paper's 64x64; MNIST's 28x28).

The paper's guidelines, kept: fractionally-strided (transposed) convolutions in G and strided
convolutions in D, no pooling, no hidden fully connected layers; BatchNorm in both except on G's output
and D's input layer; ReLU in G with tanh on the output; LeakyReLU(0.2) in D; weights drawn from
N(0, 0.02). G's first layer is the paper's "project and reshape", written as a b x b transposed conv on z
seen as a 1x1 image (the same map as a Linear to 2**n w x b x b); D's last layer is a b x b conv to one
logit (a Linear on the flattened map).

Sizes: H = b * 2**n with (n, b) from `base.conv_stages` (28: 2 stages from 7x7, 32: 3 from 4x4, 64: 4
from 4x4). G: project to 2**n w channels at b x b, then n 4x4 stride-2 transposed convs halving the
channels (the last one to C). D mirrors it: n 4x4 stride-2 convs with w, 2w, ..., 2**(n-1) w channels,
then the b x b head. At 64x64 with w = 64 (G) this is the paper's 1024 -> 512 -> 256 -> 128 -> 3 generator.
Convolutions followed by a norm (batch, or layer = GroupNorm(1, C) in D) have no bias (the norm's beta
replaces it); with norm "none" they get one.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import ModelConfig
from gan_dist.models.base import (
    DiscriminatorBase,
    GeneratorBase,
    apply_spectral_norm,
    conv_stages,
    dropout_layer,
    norm_2d,
)

INIT_STD = 0.02  # Radford et al.: all weights from N(0, 0.02)
LEAKY_SLOPE = 0.2
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)


def dcgan_init_(module: nn.Module) -> None:
    """Conv, linear and embedding weights ~ N(0, 0.02), norm weights ~ N(1, 0.02), all biases 0
    (as the PyTorch DCGAN example)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
        elif isinstance(m, NORM_TYPES):
            nn.init.normal_(m.weight, 1.0, INIT_STD)
            nn.init.zeros_(m.bias)


class DCGANGenerator(GeneratorBase):
    """z (B, latent_dim) [, labels (B,)] -> images (B, C, H, W) in [-1, 1].

    At 28x28x1: channels 4w (7x7) -> 2w (14x14) -> 1 (28x28), w = width. Layers: project, bn0,
    up{i}/bn{i} for i < num_stages, up{num_stages} (the output layer: bias, no norm).
    """

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int],
                 num_classes: int = 0, conditioning: str = "none", norm: str = "batch") -> None:
        super().__init__(latent_dim, image_shape, num_classes, conditioning)
        self.num_stages, self.base_size = conv_stages(self.image_shape, "dcgan")
        bias = norm == "none"
        channels = width << self.num_stages  # 4w at 28x28, 16w at 64x64
        self.project = nn.ConvTranspose2d(self.input_dim, channels, self.base_size, bias=bias)
        self.bn0 = norm_2d(norm, channels)
        for i in range(1, self.num_stages):
            # kernel 4, stride 2, padding 1 doubles the size exactly: (n - 1) * 2 - 2 + 4 = 2n
            setattr(self, f"up{i}", nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1, bias=bias))
            setattr(self, f"bn{i}", norm_2d(norm, channels // 2))
            channels //= 2
        last = nn.ConvTranspose2d(channels, self.image_shape[0], 4, stride=2, padding=1)  # output layer: no norm
        setattr(self, f"up{self.num_stages}", last)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = self.latent_input(z, labels)  # (B, latent_dim [+ K])
        x = x.reshape(x.shape[0], self.input_dim, 1, 1)  # (B, 100, 1, 1)
        x = F.relu(self.bn0(self.project(x)))  # (B, 256, 7, 7)
        for i in range(1, self.num_stages):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"up{i}")(x)))  # (B, 128, 14, 14): size x2, channels / 2
        return torch.tanh(getattr(self, f"up{self.num_stages}")(x))  # (B, C, H, W)


class DCGANDiscriminator(DiscriminatorBase):
    """images (B, C, H, W) [, labels (B,)] -> logits (B,) (acgan: and class logits (B, K)).

    At 28x28x1: channels w (14x14) -> 2w (7x7), 4x4 stride-2 convs (w = width), then a 7x7 "valid" conv
    to one logit. Layers: conv{i}, bn{i} (i >= 2), drop{i} for i = 1..num_stages, head.
    """

    def __init__(self, width: int, dropout: float, image_shape: tuple[int, int, int],
                 num_classes: int = 0, conditioning: str = "none", norm: str = "batch",
                 spectral_norm: bool = False) -> None:
        super().__init__(image_shape, num_classes, conditioning)
        self.num_stages, self.base_size = conv_stages(self.image_shape, "dcgan")
        channels = self.input_channels
        for i in range(1, self.num_stages + 1):
            out_channels = width << (i - 1)  # w, 2w, 4w, ...
            # kernel 4, stride 2, padding 1 halves the size exactly: (n + 2 - 4) // 2 + 1 = n / 2
            normed = i > 1  # input layer: no norm
            setattr(self, f"conv{i}", nn.Conv2d(channels, out_channels, 4, stride=2, padding=1,
                                                bias=not normed or norm == "none"))
            if normed:
                setattr(self, f"bn{i}", norm_2d(norm, out_channels))
            setattr(self, f"drop{i}", dropout_layer(dropout))
            channels = out_channels
        self.last_channels = channels
        self.head = nn.Conv2d(channels, 1, self.base_size)  # b x b "valid" conv: one logit per image
        self.add_conditioning_heads(channels * self.base_size**2)
        dcgan_init_(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"conv{i}")(x)  # (B, 64, 14, 14), (B, 128, 7, 7): size / 2, channels x 2
            if i > 1:
                x = getattr(self, f"bn{i}")(x)
            x = getattr(self, f"drop{i}")(F.leaky_relu(x, LEAKY_SLOPE))
        return x.flatten(1)  # (B, 128*7*7)

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        x = h.view(h.shape[0], self.last_channels, self.base_size, self.base_size)  # (B, 128, 7, 7)
        return self.head(x).flatten()  # (B, 1, 1, 1) -> (B,) logits


def build_generator(model: ModelConfig, options: Any, image_shape: tuple[int, int, int],
                    num_classes: int) -> GeneratorBase:
    """G for a resolved model config (gan_dist.models.build); dcgan has no model.options."""
    return DCGANGenerator(model.latent_dim, model.g_width, image_shape, num_classes, model.conditioning,
                          norm=model.g_norm)


def build_discriminator(model: ModelConfig, options: Any, image_shape: tuple[int, int, int],
                        num_classes: int) -> DiscriminatorBase:
    """D for a resolved model config (gan_dist.models.build)."""
    return DCGANDiscriminator(model.d_width, model.d_dropout, image_shape, num_classes, model.conditioning,
                              norm=model.d_norm, spectral_norm=model.spectral_norm)
