"""Architectures (`model.name`), declared: defaults, the image sizes each builds for, its own options, and
what it supports (normalization choices, channels_last, torch.compile, CUDA graphs).

Each entry names the module that builds it: `gan_dist.models.<file>` defines
`build_generator(model, options, image_shape, num_classes)` and `build_discriminator(...)`
(gan_dist.models.build calls them). The trainer, the config and the CLI ask these facts; nothing tests
`model.name`. Adding an architecture: one model file plus one entry here (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan_dist.config import ConfigError, ModelConfig

MIN_BASE_SIZE = 4  # px: the conv models' smallest feature map (DCGAN's 4x4 project-and-reshape)


@dataclass(frozen=True)
class NoOptions:
    """An architecture without options of its own: model.options must be empty."""


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str  # model.name
    title: str  # the paper, for messages and the README
    module: str  # gan_dist.models.<file>: build_generator / build_discriminator
    g_width: int  # what model.g_width = None means (channels for conv models, hidden units for mlp)
    d_width: int
    d_dropout: float  # what model.d_dropout = None means
    # model.g_norm / model.d_norm choose the normalization (False: the architecture has its own, or none,
    # and the config's value is ignored and resolved to "none").
    uses_norm: bool
    # Convolutions over (C, H, W): train.channels_last applies. False: the image is flattened at once.
    convolutional: bool
    # Square images whose side `conv_stages` accepts (a multiple of 4, at least 16); False: any (C, H, W).
    conv_sizes: bool = True
    # model.spectral_norm: "optional" (the config decides for D) | "builtin" (always on, the paper's).
    spectral_norm: str = "optional"
    options: type = NoOptions  # dataclass of model.options, with the paper's defaults
    # Whether the step may run compiled (train.compile) and captured in a CUDA graph (train.cuda_graph).
    # False with the reason, which the refusal quotes.
    compile_ok: bool = True
    cuda_graph_ok: bool = True
    cuda_graph_refusal: str = ""


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec for spec in (
        # The seed Keras tutorial: G 128/64 channels, D 32/64/128/256 channels, dropout 0.25.
        ArchitectureSpec(name="keras_dcgan", title="the Keras DCGAN tutorial", module="gan_dist.models.keras_dcgan",
                         g_width=128, d_width=32, d_dropout=0.25, uses_norm=True, convolutional=True),
        # Radford et al. 2015: G 256/128 channels, D 64/128 channels at 28x28, no dropout.
        ArchitectureSpec(name="dcgan", title="DCGAN (Radford et al. 2015)", module="gan_dist.models.dcgan",
                         g_width=64, d_width=64, d_dropout=0.0, uses_norm=True, convolutional=True),
        # Goodfellow et al. 2014: hidden layers of 256/512/1024 units, dropout 0.3 in D.
        ArchitectureSpec(name="mlp", title="the MLP GAN (Goodfellow et al. 2014)", module="gan_dist.models.mlp",
                         g_width=256, d_width=256, d_dropout=0.3, uses_norm=False, convolutional=False,
                         conv_sizes=False),
    )
}


def architecture(name: str) -> ArchitectureSpec:
    """The entry for `name`; ConfigError naming model.name and the choices otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"key 'model.name': {name!r} is not one of {', '.join(ARCHITECTURES)}") from None


def conv_stages(image_size: int, family: str = "the conv models") -> tuple[int, int]:
    """(num_stages, base_size) of a conv model for square images of side `image_size`:
    image_size = base_size * 2**num_stages, num_stages being how often the side halves leaving an integer
    >= 4 px: 28 -> (2, 7), 32 -> (3, 4), 48 -> (3, 6), 64 -> (4, 4). At least two stages, so the side must be
    a multiple of 4 and at least 16; ConfigError naming data.image_size otherwise."""
    num_stages, base_size = 0, image_size
    while base_size % 2 == 0 and base_size // 2 >= MIN_BASE_SIZE:
        base_size //= 2
        num_stages += 1
    if num_stages < 2:
        raise ConfigError(f"key 'data.image_size': {family} needs a side that is a multiple of 4 and at least "
                          f"16 (two x2 stages from a base of at least {MIN_BASE_SIZE} px), got {image_size}; "
                          "choose another data.image_size, or model.name=mlp (any size)")
    return num_stages, base_size


def check_image_shape(name: str, image_shape: tuple[int, int, int]) -> None:
    """Refuse (ConfigError naming data.image_size / data.channels) a shape architecture `name` cannot build."""
    spec = architecture(name)
    channels, height, width = image_shape
    if channels < 1:
        raise ConfigError(f"key 'data.channels': images need at least one channel, got {channels}")
    if spec.conv_sizes:
        if height != width:
            raise ConfigError(f"key 'data.image_size': {name} builds for square images, got {height}x{width}")
        conv_stages(height, name)


def d_has_batchnorm(model: ModelConfig) -> bool:
    """Whether the D built for `model` has BatchNorm layers (which mix the samples of a batch)."""
    return architecture(model.name).uses_norm and model.d_norm == "batch"


def uses_channels_last(model: ModelConfig, requested: bool) -> bool:
    """Whether train.channels_last (`requested`) applies to model.name: convolutional architectures only."""
    return requested and architecture(model.name).convolutional


def resolve_model(model: ModelConfig) -> ModelConfig:
    """A copy of `model` with each None (g_width, d_width, d_dropout) replaced by the architecture's default,
    the norms of an architecture without norm choices resolved to "none", and model.options completed with
    the defaults (as a dict: `model_options` gives the typed object)."""
    spec = architecture(model.name)
    return dataclasses.replace(
        model,
        g_width=spec.g_width if model.g_width is None else model.g_width,
        d_width=spec.d_width if model.d_width is None else model.d_width,
        d_dropout=spec.d_dropout if model.d_dropout is None else model.d_dropout,
        g_norm=model.g_norm if spec.uses_norm else "none",
        d_norm=model.d_norm if spec.uses_norm else "none",
        options=dataclasses.asdict(model_options(model)),
    )


def model_options(model: ModelConfig) -> Any:
    """model.options as the architecture's typed options object (its defaults completed). An unknown key or a
    wrong type raises ConfigError naming model.options.<key>."""
    spec = architecture(model.name)
    schema = OmegaConf.structured(spec.options)
    OmegaConf.set_struct(schema, True)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.create(dict(model.options)))
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        known = ", ".join(field.name for field in dataclasses.fields(spec.options)) or "none"
        message = str(error).splitlines()[0]
        raise ConfigError(f"key 'model.options.{key}': {message} (model.name={model.name} has options: {known})"
                          ) from None
