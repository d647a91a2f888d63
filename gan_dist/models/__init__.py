"""Model registry: `model.name` -> (G, D) builders for a dataset's image shape and classes, and each
architecture's defaults in one table.

    G(z (B, latent_dim), labels (B,) int64 | None = None) -> images (B, C, H, W) in [-1, 1]
    D(images (B, C, H, W), labels (B,) int64 | None = None) -> logits (B,)        (conditioning none |
                                                                                   concat | projection)
                                                   -> (logits (B,), class_logits (B, K))         (acgan)
    G.latent_dim, G.num_classes (0 = unconditional), G.image_shape (C, H, W), G.conditioning
    D.num_classes, D.conditioning, D.image_shape, D.feature_dim (F); D.features(x, labels) -> (B, F)

D returns logits (no sigmoid: the objectives work on logits). A conditional model (model.conditioning
!= none) requires labels; an unconditional one ignores them. Models are plain nn.Modules: no devices,
precision, DDP or logging in here. Conditioning is described in gan_dist/models/base.py.

How each architecture adapts to the image shape (C, H, W) (H = W for the conv models; at 28x28x1 and
conditioning none every model is exactly the seed's, layer names, init and numerics included):

    conv models: H = b * 2**n, n = how often H halves leaving an integer >= 4 px (28: n 2, b 7;
    32: n 3, b 4; 64: n 4, b 4); H must be a multiple of 4 and >= 16, else ConfigError (data.image_size).
    keras_dcgan  G: Dense -> w x b x b, n x (nearest x2, 3x3 conv, BN, ReLU) with w, w/2, ..., w/2**(n-1)
                 channels, 3x3 conv -> C, tanh (needs w >= 2**(n-1)).
                 D: 3x3 stride-2 blocks (w, 2w, 4w, ...) until the map is <= 4 px (28, 32: 3 blocks;
                 64: 4), the tutorial's bottom/right zero pad after an odd stride-2 output (28: 7 -> 8),
                 one stride-1 block doubling the channels, Dense(1) on the flattened map.
    dcgan        G: project z to 2**n w x b x b, n x2 transposed convs halving the channels (last -> C).
                 D: n stride-2 convs with w, 2w, ..., 2**(n-1) w channels, then a b x b conv to 1 logit.
    mlp          any (C, H, W): only G's output layer and D's input layer (C*H*W units) change.

Normalization: model.g_norm (batch | none) in G, model.d_norm (batch | layer = GroupNorm(1, C) | none)
in D, where the architecture has it (the layers named bn*); mlp has none (resolved to "none").
model.spectral_norm wraps every conv, linear and embedding weight of D (see base.apply_spectral_norm).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from gan_dist.config import ModelConfig
from gan_dist.models.base import DiscriminatorBase, GeneratorBase
from gan_dist.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_dist.models.keras_dcgan import KerasDCGANDiscriminator, KerasDCGANGenerator
from gan_dist.models.mlp import MLPDiscriminator, MLPGenerator

IMAGE_SHAPE = (1, 28, 28)  # (channels, height, width) of MNIST: the default shape of every builder

ImageShape = tuple[int, int, int]


@dataclass(frozen=True)
class Architecture:
    """How to build one architecture, and what `None` in ModelConfig means for it."""

    # Called with a resolved config, the image shape (C, H, W) and the dataset's number of classes.
    generator: Callable[[ModelConfig, ImageShape, int], GeneratorBase]
    discriminator: Callable[[ModelConfig, ImageShape, int], DiscriminatorBase]
    g_width: int
    d_width: int
    d_dropout: float
    uses_norm: bool  # False: model.g_norm / model.d_norm are ignored (mlp has no normalization at all)
    # Convolutions over (C, H, W): the channels_last (NHWC) memory layout applies (train.channels_last).
    # False: the image is flattened at once, NHWC would only add copies.
    convolutional: bool


ARCHITECTURES: dict[str, Architecture] = {
    # The seed Keras tutorial: G 128/64 channels, D 32/64/128/256 channels, dropout 0.25.
    "keras_dcgan": Architecture(
        generator=lambda m, shape, k: KerasDCGANGenerator(m.latent_dim, m.g_width, shape, k, m.conditioning,
                                                          norm=m.g_norm),
        discriminator=lambda m, shape, k: KerasDCGANDiscriminator(m.d_width, m.d_dropout, shape, k, m.conditioning,
                                                                  norm=m.d_norm, spectral_norm=m.spectral_norm),
        g_width=128, d_width=32, d_dropout=0.25, uses_norm=True, convolutional=True,
    ),
    # Radford et al. 2015: G 256/128 channels, D 64/128 channels at 28x28, no dropout.
    "dcgan": Architecture(
        generator=lambda m, shape, k: DCGANGenerator(m.latent_dim, m.g_width, shape, k, m.conditioning,
                                                     norm=m.g_norm),
        discriminator=lambda m, shape, k: DCGANDiscriminator(m.d_width, m.d_dropout, shape, k, m.conditioning,
                                                             norm=m.d_norm, spectral_norm=m.spectral_norm),
        g_width=64, d_width=64, d_dropout=0.0, uses_norm=True, convolutional=True,
    ),
    # Goodfellow et al. 2014: hidden layers of 256/512/1024 units, dropout 0.3 in D.
    "mlp": Architecture(
        generator=lambda m, shape, k: MLPGenerator(m.latent_dim, m.g_width, shape, k, m.conditioning),
        discriminator=lambda m, shape, k: MLPDiscriminator(m.d_width, m.d_dropout, shape, k, m.conditioning,
                                                           spectral_norm=m.spectral_norm),
        g_width=256, d_width=256, d_dropout=0.3, uses_norm=False, convolutional=False,
    ),
}


def architecture(name: str) -> Architecture:
    """The registry entry for `name`; ValueError naming model.name and the choices otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"model.name: unknown architecture {name!r}; choose one of "
                         f"{', '.join(ARCHITECTURES)}") from None


def uses_channels_last(model: ModelConfig, requested: bool) -> bool:
    """Whether train.channels_last (`requested`) applies to model.name: convolutional architectures only."""
    return requested and architecture(model.name).convolutional


def d_has_batchnorm(model: ModelConfig) -> bool:
    """Whether the D built for `model` has BatchNorm layers (which mix the samples of a batch)."""
    return architecture(model.name).uses_norm and model.d_norm == "batch"


def resolve_model_config(model: ModelConfig) -> ModelConfig:
    """A copy of `model` with each None (g_width, d_width, d_dropout) replaced by the architecture's default.

    mlp has no normalization, so its resolved g_norm and d_norm are "none" whatever the config says.
    """
    arch = architecture(model.name)
    return dataclasses.replace(
        model,
        g_width=arch.g_width if model.g_width is None else model.g_width,
        d_width=arch.d_width if model.d_width is None else model.d_width,
        d_dropout=arch.d_dropout if model.d_dropout is None else model.d_dropout,
        g_norm=model.g_norm if arch.uses_norm else "none",
        d_norm=model.d_norm if arch.uses_norm else "none",
    )


def _image_shape(image_shape: ImageShape) -> ImageShape:
    shape = tuple(int(size) for size in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (channels, height, width) with positive sizes, got {image_shape}")
    return shape


def build_generator(model: ModelConfig, image_shape: ImageShape = IMAGE_SHAPE, num_classes: int = 0) -> GeneratorBase:
    """G alone (for sampling and export), for images (C, H, W) and a dataset of `num_classes` classes
    (0 = unlabeled; G is conditional only when model.conditioning != none)."""
    resolved = resolve_model_config(model)
    return architecture(resolved.name).generator(resolved, _image_shape(image_shape), num_classes)


def build_discriminator(model: ModelConfig, image_shape: ImageShape = IMAGE_SHAPE,
                        num_classes: int = 0) -> DiscriminatorBase:
    """D alone; see build_generator."""
    resolved = resolve_model_config(model)
    return architecture(resolved.name).discriminator(resolved, _image_shape(image_shape), num_classes)


def build_models(model: ModelConfig, image_shape: ImageShape = IMAGE_SHAPE,
                 num_classes: int = 0) -> tuple[GeneratorBase, DiscriminatorBase]:
    """(G, D) for `model`, freshly initialised on the CPU in float32, G first (the caller seeds: with
    spectral norm D's power-iteration vectors are random too, so every rank must seed identically)."""
    return (build_generator(model, image_shape, num_classes),
            build_discriminator(model, image_shape, num_classes))


__all__ = [
    "ARCHITECTURES",
    "IMAGE_SHAPE",
    "Architecture",
    "DiscriminatorBase",
    "GeneratorBase",
    "architecture",
    "build_discriminator",
    "build_generator",
    "build_models",
    "d_has_batchnorm",
    "resolve_model_config",
    "uses_channels_last",
]
