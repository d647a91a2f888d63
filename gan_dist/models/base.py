"""What every G and D share: the image-size rule of the conv models, class conditioning (label inputs,
the ACGAN class head, the projection embedding), normalization choices and spectral normalization.

Conditioning (`model.conditioning`, K = number of classes):
- G, for every mode but none: the one-hot label is concatenated to z, G's first layer sees
  (B, latent_dim + K). One-hot concatenation is Mirza & Osindero's CGAN; it equals adding a learned
  per-class vector (the label's columns of the first weight) to the first layer's pre-activation, i.e. a
  learned embedding of the first layer's width, with no extra size to choose. Keras-GAN's cgan multiplies z
  by a latent_dim embedding instead; the concatenation keeps z's scale and needs no new init rule.
  The projection discriminator's paper (and SNGAN) pairs it with conditional BatchNorm in G; here G is
  conditioned the same way in concat, acgan and projection, so that the three modes differ only in D and the
  mlp and g_norm=none generators (which have no BatchNorm to condition) are covered alike.
- D, concat: the label enters with the image: K constant one-hot maps as extra input channels for the conv
  models, the one-hot vector after flattening for mlp.
- D, acgan (Odena et al. 2017): unconditional input; an extra linear head on the features returns K class
  logits: D(x, y) -> (logits (B,), class_logits (B, K)).
- D, projection (Miyato & Koyama 2018, eq. 3): logits = fc(h) + <embed(y), h>, with h (B, F) the
  penultimate features (the vector D's last linear layer reads) and embed an (K, F) table.

So every D is a feature body x -> h (B, F) (`features`), a linear adversarial head h -> (B,) (`logit`), and
the conditioning heads; with conditioning none it computes exactly what the seed models computed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from gan_dist.config import CONDITIONING_MODES, ConfigError
from gan_dist.registry.architectures import conv_stages as stages_of_size


def conv_stages(image_shape: tuple[int, int, int], family: str) -> tuple[int, int]:
    """(num_stages, base_size) of a conv model for images (C, H, W): H = base_size * 2**num_stages (the rule
    is gan_dist.registry.architectures.conv_stages: 28 -> (2, 7), 32 -> (3, 4), 64 -> (4, 4), 48 -> (3, 6)).
    Square images with a side that is a multiple of 4 and at least 16, else ConfigError naming the key."""
    channels, height, width = image_shape
    if channels < 1:
        raise ConfigError(f"key 'data.channels': images need at least one channel, got {channels}")
    if height != width:
        raise ConfigError(f"key 'data.image_size': {family} builds for square images, got {height}x{width}")
    return stages_of_size(height, family)


def conditioned_classes(conditioning: str, num_classes: int) -> int:
    """K for a model with `conditioning` on a dataset of `num_classes` classes: 0 when unconditional.

    Raises ConfigError naming model.conditioning when it is unknown, or conditional on unlabeled data.
    """
    if conditioning not in CONDITIONING_MODES:
        raise ConfigError(f"key 'model.conditioning': {conditioning!r} is not one of {', '.join(CONDITIONING_MODES)}")
    if conditioning == "none":
        return 0
    if num_classes < 1:
        raise ConfigError(f"keys 'model.conditioning' and 'data.dataset': model.conditioning={conditioning} needs "
                          "class labels, but the dataset has none (0 classes: e.g. a folder without one "
                          "subfolder per class); set model.conditioning=none or use a labeled dataset")
    return num_classes


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B,) int64 class indices -> (B, K) one-hot in `dtype`.

    A comparison with arange rather than F.one_hot: no range check, so no host sync on an accelerator
    (an out-of-range label gives an all-zero row here, and an index error in the projection embedding).
    """
    classes = torch.arange(num_classes, device=labels.device)  # (K,)
    return (labels.unsqueeze(1) == classes).to(dtype)  # (B, K)


def require_labels(model: nn.Module, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """The labels of a conditional model's batch, checked for presence, integer dtype and shape (B,)."""
    name = type(model).__name__
    if labels is None:
        raise ValueError(f"{name} is class-conditional (model.conditioning={model.conditioning}, "
                         f"{model.num_classes} classes): call it with labels, a (B,) int64 tensor of class indices")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (batch_size,):
        raise ValueError(f"{name}: labels must have shape ({batch_size},) for a batch of {batch_size}, "
                         f"got {tuple(labels.shape)}")
    return labels


def norm_2d(kind: str, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.Module:
    """The normalization after a conv: batch (BatchNorm2d), layer (GroupNorm with one group: normalizes
    each sample over (C, H, W), the WGAN-GP paper's replacement for BatchNorm in a critic, no running
    statistics), or none (Identity)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if kind == "layer":
        return nn.GroupNorm(1, channels, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r}; choose batch, layer or none (model.g_norm / model.d_norm)")


class ByteMaskDropout(nn.Dropout):
    """nn.Dropout whose CPU mask costs an eighth of the random numbers, for p a multiple of 1/256.

    On CPUs torch draws one mt19937 number per element for dropout (~10 ns each): with the seed D's four
    dropout layers, three D forwards per step and batch 32, that is ~1.6 M draws, ~15% of a whole
    training step on 2 cores. Here each random 64-bit integer gives 8 independent uniform bytes, and an
    element is kept when its byte is >= 256 p (exact for the Keras D's p = 0.25 = 64/256): 2.5x faster,
    the same distribution as nn.Dropout, another random stream. On GPUs (where torch's dropout is one
    fused Philox kernel), or for other p, it is nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threshold = self.p * 256
        if not self.training or x.device.type != "cpu" or threshold != int(threshold) or self.inplace:
            return super().forward(x)
        count = x.numel()
        # random_(from, to) over the whole int64 range: every bit uniform (to is exclusive: bias 2^-64).
        words = torch.empty((count + 7) // 8, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        random_bytes = words.view(torch.uint8)[:count].view(x.shape)
        return torch.where(random_bytes >= int(threshold), x * (1.0 / (1.0 - self.p)), 0.0)


def dropout_layer(p: float) -> nn.Module:
    """Dropout(p) (ByteMaskDropout: nn.Dropout's distribution, cheaper on CPUs), or Identity at p=0: no
    RNG draw, so a model without dropout is deterministic."""
    return ByteMaskDropout(p) if p > 0 else nn.Identity()


SPECTRAL_NORM_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)


class FullPrecisionSpectralNorm(parametrizations._SpectralNorm):
    """torch's spectral-norm parametrization with its power iteration and sigma in float32 under any autocast.

    On CUDA, autocast runs `mv` (the power iteration) in bf16/fp16, keeping ~3 significant digits of sigma
    and of the u, v vectors that carry over from step to step; on CPUs autocast leaves `mv` alone. The
    normalized weight goes on to the layer in float32, where the layer's own autocast applies as usual.
    Same state (`...weight.0._u`, `_v`) as torch.nn.utils.parametrizations.spectral_norm."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(weight.device.type, enabled=False):
            return super().forward(weight.float()).to(weight.dtype)


def spectral_norm(layer: nn.Module) -> nn.Module:
    """Spectral normalization of `layer.weight` (torch.nn.utils.parametrizations.spectral_norm's rule: dim 1
    for transposed convolutions, else 0; one power iteration per training forward), in float32."""
    dim = 1 if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    parametrize.register_parametrization(layer, "weight", FullPrecisionSpectralNorm(layer.weight, 1, dim, 1e-12))
    return layer


def apply_spectral_norm(module: nn.Module) -> None:
    """Spectral normalization (Miyato et al. 2018) of every conv, linear and embedding weight in `module`.

    W / sigma(W), sigma estimated by one power iteration per training-mode forward (u, v are buffers; eval
    mode reuses them), in float32 (`FullPrecisionSpectralNorm`). Registering draws u and v from the global
    RNG (then runs 15 power iterations), so seed identically on every rank before building. The state_dict
    then holds `<layer>.parametrizations.weight.original`, `...weight.0._u` and `...weight.0._v` instead of
    `<layer>.weight`.
    """
    for layer in [m for m in module.modules() if isinstance(m, SPECTRAL_NORM_TYPES)]:
        spectral_norm(layer)


class GeneratorBase(nn.Module):
    """z (B, latent_dim) [, labels (B,)] -> images (B, C, H, W) in [-1, 1].

    Attributes: latent_dim, num_classes (0 = unconditional), conditioning, image_shape (C, H, W), and
    input_dim (latent_dim + num_classes: the width of G's first layer's input).
    """

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], num_classes: int,
                 conditioning: str) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.conditioning = conditioning
        self.num_classes = conditioned_classes(conditioning, num_classes)
        self.input_dim = latent_dim + self.num_classes

    def latent_input(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(B, latent_dim) -> (B, latent_dim + K): z, then the one-hot label when conditional.

        An unconditional G ignores labels (callers may pass a batch's labels whatever the conditioning).
        """
        if not self.num_classes:
            return z
        labels = require_labels(self, labels, z.shape[0])
        return torch.cat([z, one_hot(labels, self.num_classes, z.dtype)], dim=1)  # (B, latent_dim + K)


class DiscriminatorBase(nn.Module, ABC):
    """images (B, C, H, W) [, labels (B,)] -> logits (B,), or (logits (B,), class_logits (B, K)) for acgan.

    Subclasses build their layers, then call `add_conditioning_heads(feature_dim)` before their init, and
    define `body(x) -> h (B, F)` and `logit(h) -> (B,)`. Attributes: num_classes (0 = unconditional),
    conditioning, image_shape, feature_dim (F), input_channels (C, + K for concat).
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, conditioning: str) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.conditioning = conditioning
        self.num_classes = conditioned_classes(conditioning, num_classes)
        concat = conditioning == "concat"
        self.input_channels = self.image_shape[0] + (self.num_classes if concat else 0)
        self.feature_dim = 0  # set by add_conditioning_heads

    def add_conditioning_heads(self, feature_dim: int) -> None:
        """The ACGAN class head Linear(F, K), or the projection embedding (K, F); nothing otherwise."""
        self.feature_dim = feature_dim
        if self.conditioning == "acgan":
            self.class_head = nn.Linear(feature_dim, self.num_classes)
        elif self.conditioning == "projection":
            self.embed = nn.Embedding(self.num_classes, feature_dim)

    def label_input(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """concat: (B, C, H, W) -> (B, C + K, H, W), the one-hot label as K constant maps."""
        maps = one_hot(labels, self.num_classes, x.dtype)[:, :, None, None]  # (B, K, 1, 1)
        return torch.cat([x, maps.expand(-1, -1, *x.shape[2:])], dim=1)  # (B, C + K, H, W)

    @abstractmethod
    def body(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_channels, H, W) -> h (B, F)."""

    @abstractmethod
    def logit(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, F) -> unconditional logits (B,)."""

    def features(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The penultimate features h (B, F) (concat: of the image with its label maps)."""
        if self.conditioning == "concat":
            x = self.label_input(x, require_labels(self, labels, x.shape[0]))
        return self.body(x)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (no sigmoid). An unconditional D ignores labels."""
        if self.num_classes:
            labels = require_labels(self, labels, x.shape[0])
        h = self.features(x, labels)  # (B, F)
        logits = self.logit(h)  # (B,)
        if self.conditioning == "projection":
            logits = logits + (self.embed(labels) * h).sum(dim=1)  # + <embed(y), h>
        if self.conditioning == "acgan":
            return logits, self.class_head(h)  # (B,), (B, K)
        return logits
