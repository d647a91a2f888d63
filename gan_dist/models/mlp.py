"""The MLP GAN of Goodfellow et al. (2014), as commonly reproduced on MNIST.

G: z -> w -> 2w -> 4w -> C*H*W (LeakyReLU(0.2) hidden, tanh out); D: C*H*W -> 4w -> 2w -> w -> 1
(LeakyReLU(0.2) and dropout in hidden layers), w = width (256 by default: 256/512/1024 units).
Any image shape: only the input layer of D and the output layer of G depend on C*H*W.
No normalization anywhere, on purpose (model.g_norm / model.d_norm are ignored): with dropout 0 a step is a
deterministic function of the batch, which the DDP-equivalence test (2 processes x B == 1 process x 2B)
relies on. Weights keep PyTorch's default Linear init (the projection embedding gets the same
U(-1/sqrt(F), 1/sqrt(F)) as a Linear reading F features).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import ModelConfig
from gan_dist.models.base import DiscriminatorBase, GeneratorBase, apply_spectral_norm, dropout_layer, one_hot

LEAKY_SLOPE = 0.2


def _check_shape(image_shape: tuple[int, int, int]) -> None:
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(f"mlp: image_shape must be (C, H, W) with positive sizes, got {image_shape}")


class MLPGenerator(GeneratorBase):
    """z (B, latent_dim) [, labels (B,)] -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int],
                 num_classes: int = 0, conditioning: str = "none") -> None:
        _check_shape(image_shape)
        super().__init__(latent_dim, image_shape, num_classes, conditioning)
        self.fc1 = nn.Linear(self.input_dim, width)
        self.fc2 = nn.Linear(width, width * 2)
        self.fc3 = nn.Linear(width * 2, width * 4)
        self.fc_out = nn.Linear(width * 4, math.prod(self.image_shape))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = F.leaky_relu(self.fc1(self.latent_input(z, labels)), LEAKY_SLOPE)  # (B, 256)
        x = F.leaky_relu(self.fc2(x), LEAKY_SLOPE)  # (B, 512)
        x = F.leaky_relu(self.fc3(x), LEAKY_SLOPE)  # (B, 1024)
        x = torch.tanh(self.fc_out(x))  # (B, C*H*W)
        return x.view(-1, *self.image_shape)  # (B, C, H, W)


class MLPDiscriminator(DiscriminatorBase):
    """images (B, C, H, W) [, labels (B,)] -> logits (B,) (acgan: and class logits (B, K)).

    The features h are the last hidden layer's output (B, w); concat appends the one-hot label to the
    flattened image, so fc1 reads C*H*W + K inputs.
    """

    def __init__(self, width: int, dropout: float, image_shape: tuple[int, int, int],
                 num_classes: int = 0, conditioning: str = "none", spectral_norm: bool = False) -> None:
        _check_shape(image_shape)
        super().__init__(image_shape, num_classes, conditioning)
        label_inputs = self.num_classes if conditioning == "concat" else 0
        self.fc1 = nn.Linear(math.prod(self.image_shape) + label_inputs, width * 4)
        self.fc2 = nn.Linear(width * 4, width * 2)
        self.fc3 = nn.Linear(width * 2, width)
        self.fc_out = nn.Linear(width, 1)
        # Identity at p=0: no RNG draw, so the model is deterministic (see module docstring).
        self.drop = dropout_layer(dropout)
        self.add_conditioning_heads(width)
        if conditioning == "projection":
            bound = 1.0 / math.sqrt(width)  # as a Linear(width, K)
            nn.init.uniform_(self.embed.weight, -bound, bound)
        if spectral_norm:
            apply_spectral_norm(self)

    def label_input(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """concat: (B, C, H, W) -> (B, C*H*W + K), the one-hot label after the flattened image."""
        return torch.cat([x.flatten(1), one_hot(labels, self.num_classes, x.dtype)], dim=1)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, 784); copies if x is channels_last
        x = self.drop(F.leaky_relu(self.fc1(x), LEAKY_SLOPE))  # (B, 1024)
        x = self.drop(F.leaky_relu(self.fc2(x), LEAKY_SLOPE))  # (B, 512)
        return self.drop(F.leaky_relu(self.fc3(x), LEAKY_SLOPE))  # (B, 256)

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc_out(h).squeeze(1)  # (B,) logits


def build_generator(model: ModelConfig, options: Any, image_shape: tuple[int, int, int],
                    num_classes: int) -> GeneratorBase:
    """G for a resolved model config (gan_dist.models.build); mlp has no model.options."""
    return MLPGenerator(model.latent_dim, model.g_width, image_shape, num_classes, model.conditioning)


def build_discriminator(model: ModelConfig, options: Any, image_shape: tuple[int, int, int],
                        num_classes: int) -> DiscriminatorBase:
    """D for a resolved model config (gan_dist.models.build)."""
    return MLPDiscriminator(model.d_width, model.d_dropout, image_shape, num_classes, model.conditioning,
                            spectral_norm=model.spectral_norm)
