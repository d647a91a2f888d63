"""G and D for a model config, an image shape (C, H, W) and a class count, through the architecture's
registry entry (gan_dist/registry/architectures.py names the module that builds it)."""

from __future__ import annotations

import importlib

from torch import nn

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.base import DiscriminatorBase, GeneratorBase
from gan_dist.registry.architectures import architecture, model_options, resolve_model

ImageShape = tuple[int, int, int]


def _image_shape(image_shape: ImageShape) -> ImageShape:
    shape = tuple(int(size) for size in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"image_shape must be (channels, height, width) with positive sizes, got {image_shape}")
    return shape  # type: ignore[return-value]


def build_generator(model: ModelConfig, image_shape: ImageShape, num_classes: int = 0) -> GeneratorBase:
    """G alone (sampling, export), for images (C, H, W) and a dataset of `num_classes` classes (0 = unlabeled;
    G is conditional only when model.conditioning != none). Freshly initialised on the CPU in float32."""
    resolved = resolve_model(model)
    module = importlib.import_module(architecture(model.name).module)
    return module.build_generator(resolved, model_options(model), _image_shape(image_shape), num_classes)


def build_discriminator(model: ModelConfig, image_shape: ImageShape, num_classes: int = 0) -> DiscriminatorBase:
    """D alone; see build_generator."""
    resolved = resolve_model(model)
    module = importlib.import_module(architecture(model.name).module)
    return module.build_discriminator(resolved, model_options(model), _image_shape(image_shape), num_classes)


def build_models(model: ModelConfig, image_shape: ImageShape,
                 num_classes: int = 0) -> tuple[GeneratorBase, DiscriminatorBase]:
    """(G, D), G first (the caller seeds: with spectral norm D's power-iteration vectors are random too, so
    every rank must seed identically before building)."""
    return build_generator(model, image_shape, num_classes), build_discriminator(model, image_shape, num_classes)


def build_g_regularizer(model: ModelConfig) -> nn.Module | None:
    """G's lazy regularizer, when the architecture has one (its module's `build_g_regularizer`: StyleGAN2's
    path-length penalty), else None."""
    module = importlib.import_module(architecture(model.name).module)
    builder = getattr(module, "build_g_regularizer", None)
    return builder(resolve_model(model), model_options(model)) if builder is not None else None
