"""Architectures (`model.name`), declared: defaults, the image sizes each builds for, its own options, and
what it supports (normalization choices, channels_last, torch.compile, CUDA graphs).

Each entry names the module that builds it: `gan_dist.models.<file>` defines
`build_generator(model, options, image_shape, num_classes)` and `build_discriminator(...)`
(gan_dist.models.build calls them). The trainer, the config and the CLI ask these facts; nothing tests
`model.name`. Adding an architecture: one model file plus one entry here (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan_dist.config import ConfigError, ModelConfig

MIN_BASE_SIZE = 4  # px: the conv models' smallest feature map (DCGAN's 4x4 project-and-reshape)


@dataclass(frozen=True)
class NoOptions:
    """An architecture without options of its own: model.options must be empty."""


NOISE_MODES = ("random", "const", "none")  # StyleGAN2Options.noise_mode


@dataclass
class StyleGAN2Options:
    """The YAML section `model.options` for model.name=stylegan2, with the paper's (config F) defaults.

    z's size is model.latent_dim (the reference's z_dim is 512; gan_dist's default 100), channel_max is
    model.g_width / model.d_width (default 512). R1 is the objective's (loss.r1_gamma, loss.r1_every; config F:
    gamma 10 at 256 px, every 16 D steps); Adam (0.002, betas (0, 0.99), eps 1e-8) is optim.*.
    """

    # Size of the intermediate latent w (and of the class embedding).
    w_dim: int = 512
    # Fully connected layers of the mapping network z -> w, and their learning-rate multiplier.
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    # Channels at resolution r: min(channel_base // r, channel_max) (32768: config F; 16384: paper256).
    channel_base: int = 32768
    # Probability that a training-mode G forward mixes two w's at a random layer (0 = no style mixing).
    mixing_prob: float = 0.9
    # Noise inputs: random (fresh per forward) | const (a fixed map per layer, a buffer) | none (built without
    # noise inputs: no noise_strength parameters, so none sits unused under DDP). G(..., noise_mode=...) overrides
    # random / const per call (sampling with const noise).
    noise_mode: str = "random"
    # Decay of G's moving average of w (the truncation centre), updated by every training-mode forward.
    w_avg_beta: float = 0.995
    # Clamp conv outputs to [-x, x] (the reference uses 256 with fp16); None = no clamp.
    conv_clamp: float | None = None
    # Modulated conv as one grouped conv (True) or by scaling activations (False); None = the reference's
    # rule: scaled activations in training mode, grouped in eval mode.
    fused_modconv: bool | None = None
    # Minibatch stddev in D: group size (the per-process batch must be a multiple of min(group, batch)) and
    # number of stddev channels (0 = no mbstd layer).
    mbstd_group: int = 4
    mbstd_channels: int = 1
    # Path-length regularization of G (PathLengthPenalty): weight, batch divisor, decay of the running mean
    # length, and lazy interval (applied every pl_every G steps, scaled by pl_every; 0 weight = off).
    pl_weight: float = 2.0
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    pl_every: int = 4


def check_stylegan2_options(options: StyleGAN2Options) -> None:
    """ConfigError naming model.options.<key> for a value the networks cannot use."""

    def require(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ConfigError(f"key 'model.options.{key}': {why}")

    o = options
    require(o.w_dim >= 1, "w_dim", f"must be >= 1, got {o.w_dim}")
    require(o.mapping_layers >= 1, "mapping_layers", f"must be >= 1, got {o.mapping_layers}")
    require(o.mapping_lr_multiplier > 0, "mapping_lr_multiplier", f"must be > 0, got {o.mapping_lr_multiplier}")
    require(o.channel_base >= 1, "channel_base", f"must be >= 1, got {o.channel_base}")
    require(0.0 <= o.mixing_prob <= 1.0, "mixing_prob", f"must be in [0, 1], got {o.mixing_prob}")
    require(o.noise_mode in NOISE_MODES, "noise_mode", f"{o.noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
    require(0.0 <= o.w_avg_beta <= 1.0, "w_avg_beta", f"must be in [0, 1], got {o.w_avg_beta}")
    require(o.conv_clamp is None or o.conv_clamp > 0, "conv_clamp", f"must be > 0 or null, got {o.conv_clamp}")
    require(o.mbstd_group >= 1, "mbstd_group", f"must be >= 1, got {o.mbstd_group}")
    require(o.mbstd_channels >= 0, "mbstd_channels", f"must be >= 0, got {o.mbstd_channels}")
    require(o.pl_weight >= 0, "pl_weight", f"must be >= 0, got {o.pl_weight}")
    require(o.pl_batch_shrink >= 1, "pl_batch_shrink", f"must be >= 1, got {o.pl_batch_shrink}")
    require(0.0 <= o.pl_decay <= 1.0, "pl_decay", f"must be in [0, 1], got {o.pl_decay}")
    require(o.pl_every >= 1, "pl_every", f"must be >= 1, got {o.pl_every}")


@dataclass
class ResNetSNGANOptions:
    """model.options of resnet_sngan (the reference code's values)."""

    # Epsilon of G's BatchNorms (chainer's BatchNormalization default, which sngan_projection uses).
    bn_eps: float = 2e-5


@dataclass
class BigGANOptions:
    """model.options of biggan (the paper's ImageNet values unless said)."""

    # Width of the class embedding shared by every conditional BN of G (G_shared, shared_dim).
    shared_dim: int = 128
    # One shared class embedding (the paper); false: each BN has its own class embeddings for its gain and
    # bias (BigGAN-PyTorch without --G_shared, as in its CIFAR-10 script; needs hier=false when conditional).
    shared_embedding: bool = True
    # Hierarchical latent (skip-z): z is split into num_stages + 1 chunks, the first feeds the Linear, one
    # joins the class embedding at each block's BNs.
    hier: bool = True
    # Resolutions (px) of the self-attention blocks, after the G block (and the first D block) with that
    # output size (the paper: 64 at 128 px). Values above the image size are ignored. None or [] = none.
    attention: tuple[int, ...] | None = (64,)
    # Modified orthogonal regularization of G (the paper: 1e-4; 0 = off; G.regularization_loss()).
    ortho_reg: float = 1e-4
    # The same for D (BigGAN-PyTorch's D_ortho, default 0; D.regularization_loss()).
    d_ortho_reg: float = 0.0
    # Weight init: ortho (the paper) | N02 (N(0, 0.02), the CIFAR script) | xavier (G_init / D_init).
    init: str = "ortho"
    # Epsilon of G's BatchNorms (BN_eps).
    bn_eps: float = 1e-5


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str  # model.name
    title: str  # the paper, for messages and the README
    module: str  # gan_dist.models.<file>: build_generator / build_discriminator
    # What model.g_width / d_width = None mean (channels for conv models, hidden units for mlp); None: the
    # builder's own rule for the image size (resnet_sngan: the paper's width of each size).
    g_width: int | None
    d_width: int | None
    d_dropout: float  # what model.d_dropout = None means
    # model.g_norm / model.d_norm choose G's / D's normalization (False: the architecture has its own, or
    # none, and the config's value is ignored and resolved to "none").
    g_uses_norm: bool
    d_uses_norm: bool
    # Convolutions over (C, H, W): train.channels_last applies. False: the image is flattened at once.
    convolutional: bool
    # Square images whose side `conv_stages` accepts (a multiple of 4, at least 16); False: any (C, H, W).
    conv_sizes: bool = True
    # model.spectral_norm: "optional" (the config decides for D) | "builtin" (always on, the paper's) |
    # "unsupported" (the architecture normalizes otherwise: model.spectral_norm=true is refused).
    spectral_norm: str = "optional"
    options: type = NoOptions  # dataclass of model.options, with the paper's defaults
    check_options: Callable[[Any], None] | None = None  # ConfigError naming model.options.<key> for a bad value
    # Where G's latent lives: "z" (G(z) alone: truncation draws a truncated normal z, BigGAN's trick) or "w"
    # (G has mapping(z, labels, truncation_psi) -> ws, synthesis(ws) and a tracked w_avg: truncation pulls w
    # toward w_avg, walks interpolate w linearly; StyleGAN).
    latent_space: str = "z"
    # Whether the step may run compiled (train.compile) and captured in a CUDA graph (train.cuda_graph).
    # False with the reason, which the refusal quotes.
    compile_ok: bool = True
    cuda_graph_ok: bool = True
    cuda_graph_refusal: str = ""


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec for spec in (
        # The seed Keras tutorial: G 128/64 channels, D 32/64/128/256 channels, dropout 0.25.
        ArchitectureSpec(name="keras_dcgan", title="the Keras DCGAN tutorial", module="gan_dist.models.keras_dcgan",
                         g_width=128, d_width=32, d_dropout=0.25, g_uses_norm=True, d_uses_norm=True,
                         convolutional=True),
        # Radford et al. 2015: G 256/128 channels, D 64/128 channels at 28x28, no dropout.
        ArchitectureSpec(name="dcgan", title="DCGAN (Radford et al. 2015)", module="gan_dist.models.dcgan",
                         g_width=64, d_width=64, d_dropout=0.0, g_uses_norm=True, d_uses_norm=True,
                         convolutional=True),
        # Goodfellow et al. 2014: hidden layers of 256/512/1024 units, dropout 0.3 in D.
        ArchitectureSpec(name="mlp", title="the MLP GAN (Goodfellow et al. 2014)", module="gan_dist.models.mlp",
                         g_width=256, d_width=256, d_dropout=0.3, g_uses_norm=False, d_uses_norm=False,
                         convolutional=False, conv_sizes=False),
        # Karras et al. 2020, config F (NVlabs/stylegan2-ada-pytorch's networks) in plain PyTorch: widths are
        # channel_max (512). Its lazy path-length regularization (a double backward every pl_every G steps)
        # cannot be captured in a CUDA graph.
        ArchitectureSpec(name="stylegan2", title="StyleGAN2 (Karras et al. 2020)", module="gan_dist.models.stylegan2",
                         g_width=512, d_width=512, d_dropout=0.0, g_uses_norm=False, d_uses_norm=False,
                         convolutional=True,
                         spectral_norm="unsupported", options=StyleGAN2Options, check_options=check_stylegan2_options,
                         latent_space="w", cuda_graph_ok=False,
                         cuda_graph_refusal="its lazy path-length regularization is a double backward every "
                         "model.options.pl_every steps"),
        # Miyato et al. 2018 (pfnet-research/sngan_projection): ResNet G with BatchNorm (class-conditional
        # when conditional), ResNet D with spectral norm (projection when conditional); widths per size as the
        # paper (CIFAR 256 / 128, STL-10 and up 64 / 64).
        ArchitectureSpec(name="resnet_sngan", title="ResNet SNGAN (Miyato et al. 2018)",
                         module="gan_dist.models.resnet_sngan", g_width=None, d_width=None, d_dropout=0.0,
                         g_uses_norm=True, d_uses_norm=False, convolutional=True, spectral_norm="builtin",
                         options=ResNetSNGANOptions),
        # Brock et al. 2019 (ajbrock/BigGAN-PyTorch): shared class embedding + hierarchical z into G's
        # conditional BatchNorms, self-attention, spectral norm in G and D, orthogonal regularization.
        ArchitectureSpec(name="biggan", title="BigGAN (Brock et al. 2019)", module="gan_dist.models.biggan",
                         g_width=64, d_width=64, d_dropout=0.0, g_uses_norm=True, d_uses_norm=False,
                         convolutional=True, spectral_norm="builtin", options=BigGANOptions),
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
    return architecture(model.name).d_uses_norm and model.d_norm == "batch"


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
        g_norm=model.g_norm if spec.g_uses_norm else "none",
        d_norm=model.d_norm if spec.d_uses_norm else "none",
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
        options = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        known = ", ".join(field.name for field in dataclasses.fields(spec.options)) or "none"
        message = str(error).splitlines()[0]
        raise ConfigError(f"key 'model.options.{key}': {message} (model.name={model.name} has options: {known})"
                          ) from None
    if spec.check_options is not None:
        spec.check_options(options)
    return options
