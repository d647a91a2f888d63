"""Model registry: `model.name` -> (G, D) builders, and each architecture's defaults in one table.

Every G maps z (B, latent_dim) -> images (B, 1, 28, 28) in [-1, 1] and has `.latent_dim`;
every D maps images (B, 1, 28, 28) -> logits (B,) (no sigmoid: losses.py works on logits).
Models are plain nn.Modules: no devices, precision, DDP or logging in here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from gan_dist.config import ModelConfig
from gan_dist.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_dist.models.keras_dcgan import KerasDCGANDiscriminator, KerasDCGANGenerator
from gan_dist.models.mlp import MLPDiscriminator, MLPGenerator

IMAGE_SHAPE = (1, 28, 28)  # (channels, height, width) of every G output and D input


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture, and what `None` in ModelConfig means for it."""

    generator: Callable[[ModelConfig], nn.Module]  # called with a resolved config
    discriminator: Callable[[ModelConfig], nn.Module]
    g_width: int
    d_width: int
    d_dropout: float
    uses_batch_norm: bool  # False: `model.batch_norm` is ignored (mlp has no BN at all)


ARCHITECTURES: dict[str, Architecture] = {
    # The seed Keras tutorial: G 128/64 channels, D 32/64/128/256 channels, dropout 0.25.
    "keras_dcgan": Architecture(
        generator=lambda m: KerasDCGANGenerator(m.latent_dim, m.g_width, batch_norm=m.batch_norm),
        discriminator=lambda m: KerasDCGANDiscriminator(m.d_width, m.d_dropout, batch_norm=m.batch_norm),
        g_width=128, d_width=32, d_dropout=0.25, uses_batch_norm=True,
    ),
    # Radford et al. 2015: G 256/128 channels, D 64/128 channels, no dropout.
    "dcgan": Architecture(
        generator=lambda m: DCGANGenerator(m.latent_dim, m.g_width, batch_norm=m.batch_norm),
        discriminator=lambda m: DCGANDiscriminator(m.d_width, m.d_dropout, batch_norm=m.batch_norm),
        g_width=64, d_width=64, d_dropout=0.0, uses_batch_norm=True,
    ),
    # Goodfellow et al. 2014: hidden layers of 256/512/1024 units, dropout 0.3 in D.
    "mlp": Architecture(
        generator=lambda m: MLPGenerator(m.latent_dim, m.g_width),
        discriminator=lambda m: MLPDiscriminator(m.d_width, m.d_dropout),
        g_width=256, d_width=256, d_dropout=0.3, uses_batch_norm=False,
    ),
}


def architecture(name: str) -> Architecture:
    """The registry entry for `name`; ValueError naming model.name and the choices otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"model.name: unknown architecture {name!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}") from None


def resolve_model_config(model: ModelConfig) -> ModelConfig:
    """A copy of `model` with each None (g_width, d_width, d_dropout) replaced by the architecture's default.

    mlp has no BatchNorm, so its resolved `batch_norm` is False whatever the config says.
    """
    arch = architecture(model.name)
    return dataclasses.replace(
        model,
        g_width=arch.g_width if model.g_width is None else model.g_width,
        d_width=arch.d_width if model.d_width is None else model.d_width,
        d_dropout=arch.d_dropout if model.d_dropout is None else model.d_dropout,
        batch_norm=model.batch_norm and arch.uses_batch_norm,
    )


def build_generator(model: ModelConfig) -> nn.Module:
    """G alone (for sampling and export)."""
    resolved = resolve_model_config(model)
    return architecture(resolved.name).generator(resolved)


def build_discriminator(model: ModelConfig) -> nn.Module:
    resolved = resolve_model_config(model)
    return architecture(resolved.name).discriminator(resolved)


def build_models(model: ModelConfig) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `model`, freshly initialised on the CPU in float32 (the caller seeds and moves them)."""
    return build_generator(model), build_discriminator(model)


__all__ = [
    "ARCHITECTURES",
    "IMAGE_SHAPE",
    "Architecture",
    "architecture",
    "build_discriminator",
    "build_generator",
    "build_models",
    "resolve_model_config",
]
