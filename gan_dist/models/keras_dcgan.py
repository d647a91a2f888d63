"""The seed DCGAN of the classic Keras tutorial (Keras-GAN's dcgan.py), ported to PyTorch layer by layer.

Faithful where it changes what is learned or counted (see docs/design-notes.md, "Reference shapes"):
- parameter counts equal Keras's: G 855,809 trainable, D 392,833 trainable at the default widths
  (G 128, D 32), latent 100 and MNIST's 28x28x1; adding BN running mean/var gives Keras's totals
  (G 856,193, D 393,729). Convolutions keep their biases even when followed by BN, as in Keras.
- Keras `BatchNormalization(momentum=0.8)` keeps 0.8 of the old running statistic, i.e. PyTorch
  `momentum=0.2`; Keras's epsilon is 1e-3 (PyTorch's default is 1e-5).
- Keras 'same' padding follows TensorFlow: output size ceil(in / stride), and an odd total padding puts
  the extra row/column at the bottom/right. With stride 2 on an even input that is (0, 1), which
  PyTorch's symmetric `padding=1` cannot express (it gives the same output size, shifted by one pixel).
  `Conv2dSame` computes the TensorFlow padding from the input size.
- Kernels are glorot-uniform, biases zero (Keras defaults); BN gamma 1, beta 0.
- UpSampling2D is nearest-neighbour x2; LeakyReLU slope 0.2; Dropout 0.25 after each D block.

Other image sizes (the tutorial is MNIST-only; at 28x28 the layers below are exactly the tutorial's):
- G: Dense to width x b x b, then n (nearest x2 upsample, 3x3 conv, BN, ReLU) stages with width,
  width/2, ..., width/2**(n-1) channels, then a 3x3 conv to C channels and tanh; H = b * 2**n, with
  (n, b) from `base.conv_stages` (28: 2 stages from 7x7; 32: 3 from 4x4; 64: 4 from 4x4).
- D: 3x3 stride-2 'same' conv blocks (width x1, x2, x4, ...) until the map is at most 4 px (28: 14, 7, 4;
  32: 16, 8, 4; 64: 32, 16, 8, 4), then one stride-1 block that doubles the channels again, then Dense(1).
  Where a stride-2 block's output is odd and another stride-2 block follows, the tutorial's
  ZeroPadding2D(((0, 1), (0, 1))) is inserted (at 28x28: after the second conv, 7 -> 8); BN on every
  block but the first.

Deliberate differences:
- D returns a logit (Keras: Dense(1, sigmoid)); the loss applies the sigmoid.
- Memory layout: Keras is NHWC, so its `Reshape((7, 7, 128))` after G's Dense and its `Flatten()` before
  D's Dense order the units as (h, w, c); here they are (c, h, w). Training is unaffected (the same
  weights, permuted); to load Keras weights, permute the Dense kernel rows/columns accordingly and
  transpose conv kernels from (kh, kw, in, out) to (out, in, kh, kw).
- d_norm=layer uses GroupNorm(1, C) with Keras's epsilon 1e-3 (Keras LayerNormalization's default).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.base import (
    DiscriminatorBase,
    GeneratorBase,
    apply_spectral_norm,
    conv_stages,
    dropout_layer,
    norm_2d,
)
from gan_dist.registry.architectures import MIN_BASE_SIZE

# Keras BatchNormalization(momentum=0.8): running = 0.8 * running + 0.2 * batch -> PyTorch momentum 0.2.
KERAS_BN_MOMENTUM = 0.2
KERAS_BN_EPS = 1e-3
LEAKY_SLOPE = 0.2


def keras_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow/Keras 'same' along one axis of `size` pixels.

    Output size is ceil(size / stride); an odd total puts the extra pixel after (bottom/right).
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d with Keras 'same' padding (asymmetric where TensorFlow's rule makes it so).

    Subclasses nn.Conv2d so parameter names, init loops and isinstance checks treat it as a conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = keras_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = keras_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        if top == bottom and left == right:  # symmetric (e.g. stride-1 3x3): let the conv pad, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left))
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride)


def _norm(kind: str, channels: int) -> nn.Module:
    """Keras-equivalent BatchNorm2d (or GroupNorm(1, C) with Keras's epsilon, or nothing)."""
    return norm_2d(kind, channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def keras_init_(module: nn.Module) -> None:
    """Keras defaults: glorot-uniform kernels (and projection embedding), zero biases; norms keep 1 / 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            # xavier_uniform_ uses fan_in = in * kh * kw and fan_out = out * kh * kw, as Keras's glorot.
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.xavier_uniform_(m.weight)  # (K, F): bound sqrt(6 / (F + K))


def downsampling_plan(size: int) -> list[tuple[int, bool]]:
    """D's stride-2 blocks for a side of `size` px: [(output size, zero-padded after), ...].

    Keras 'same' stride 2 gives ceil(s / 2); blocks continue while the map is larger than 4 px, and an odd
    output followed by another stride-2 block is padded by one row/column (28: 14, 7 -> 8, 4).
    """
    plan = []
    while size > MIN_BASE_SIZE:
        size = math.ceil(size / 2)
        padded = size % 2 == 1 and size > MIN_BASE_SIZE
        plan.append((size, padded))
        size += padded
    return plan


class KerasDCGANGenerator(GeneratorBase):
    """z (B, latent_dim) [, labels (B,)] -> images (B, C, H, W) in [-1, 1].

    At 28x28x1: Dense(relu) to width x 7 x 7, then two (nearest upsample x2, 3x3 conv, BN, ReLU) blocks
    with width and width/2 channels, then a 3x3 conv to 1 channel and tanh. Layers: fc, conv{i}/bn{i}
    for i = 1..num_stages, conv_out (bn{i} is Identity with norm="none").
    """

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int],
                 num_classes: int = 0, conditioning: str = "none", norm: str = "batch") -> None:
        super().__init__(latent_dim, image_shape, num_classes, conditioning)
        self.num_stages, self.base_size = conv_stages(self.image_shape, "keras_dcgan")
        if width >> (self.num_stages - 1) < 1:
            raise ConfigError(f"key 'model.g_width': keras_dcgan's generator halves its width at each of its "
                              f"{self.num_stages} stages, so the width must be >= {2 ** (self.num_stages - 1)}, "
                              f"got {width}")
        self.width = width
        self.fc = nn.Linear(self.input_dim, width * self.base_size**2)
        channels = width
        for i in range(1, self.num_stages + 1):
            out_channels = width >> (i - 1)  # width, width/2, width/4, ...
            setattr(self, f"conv{i}", Conv2dSame(channels, out_channels, 3))
            setattr(self, f"bn{i}", _norm(norm, out_channels))
            channels = out_channels
        self.conv_out = Conv2dSame(channels, self.image_shape[0], 3)
        keras_init_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = F.relu(self.fc(self.latent_input(z, labels)))  # (B, 128*7*7)
        x = x.view(-1, self.width, self.base_size, self.base_size)  # (B, 128, 7, 7); Keras: (B, 7, 7, 128)
        for i in range(1, self.num_stages + 1):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, c, 2s, 2s): 7 -> 14 -> 28
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))  # c -> width / 2**(i-1)
        return torch.tanh(self.conv_out(x))  # (B, C, H, W)


class KerasDCGANDiscriminator(DiscriminatorBase):
    """images (B, C, H, W) [, labels (B,)] -> logits (B,) (acgan: and class logits (B, K)).

    At 28x28x1: four 3x3 conv blocks (width x1, x2, x4, x8 channels; strides 2, 2, 2, 1), LeakyReLU(0.2)
    and dropout, BN on all but the first, a ZeroPadding2D(((0, 1), (0, 1))) after the second conv, then
    Dense(1) on the flattened (B, 8 width * 4 * 4) features. Layers: conv{i}, pad{i} (where padded),
    bn{i} (i >= 2; BatchNorm2d, GroupNorm or Identity per `norm`), drop{i}, fc.
    """

    def __init__(self, width: int, dropout: float, image_shape: tuple[int, int, int],
                 num_classes: int = 0, conditioning: str = "none", norm: str = "batch",
                 spectral_norm: bool = False) -> None:
        super().__init__(image_shape, num_classes, conditioning)
        conv_stages(self.image_shape, "keras_dcgan")  # the same size rule as G
        self._blocks: list[tuple[str, str | None, str | None, str]] = []  # (conv, pad, norm, dropout) names
        channels, size = self.input_channels, self.image_shape[1]
        plan = [(stride2_size, padded, 2) for stride2_size, padded in downsampling_plan(size)]
        plan.append((plan[-1][0], False, 1))  # the stride-1 block, at the last stride-2 block's size
        for i, (size, padded, stride) in enumerate(plan, start=1):
            out_channels = width << (i - 1)  # width, 2 width, 4 width, ...
            setattr(self, f"conv{i}", Conv2dSame(channels, out_channels, 3, stride=stride))
            if padded:  # (left, right, top, bottom): Keras ((0, 1), (0, 1))
                setattr(self, f"pad{i}", nn.ZeroPad2d((0, 1, 0, 1)))
                size += 1
            if i > 1:
                setattr(self, f"bn{i}", _norm(norm, out_channels))
            setattr(self, f"drop{i}", dropout_layer(dropout))
            self._blocks.append((f"conv{i}", f"pad{i}" if padded else None, f"bn{i}" if i > 1 else None, f"drop{i}"))
            channels = out_channels
        self.fc = nn.Linear(channels * size * size, 1)
        self.add_conditioning_heads(self.fc.in_features)
        keras_init_(self)
        if spectral_norm:
            apply_spectral_norm(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for conv, pad, norm, drop in self._blocks:
            x = getattr(self, conv)(x)  # 28x28: (B, 32, 14, 14), (B, 64, 7, 7), (B, 128, 4, 4), (B, 256, 4, 4)
            if pad is not None:
                x = getattr(self, pad)(x)  # (B, 64, 7, 7) -> (B, 64, 8, 8), zeros at bottom/right
            if norm is not None:
                x = getattr(self, norm)(x)
            x = getattr(self, drop)(F.leaky_relu(x, LEAKY_SLOPE))
        return x.flatten(1)  # (B, 256*4*4) in (c, h, w) order; Keras flattens (h, w, c)

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h).squeeze(1)  # (B,) logits


def build_generator(model: ModelConfig, options: Any, image_shape: tuple[int, int, int],
                    num_classes: int) -> GeneratorBase:
    """G for a resolved model config (gan_dist.models.build); keras_dcgan has no model.options."""
    return KerasDCGANGenerator(model.latent_dim, model.g_width, image_shape, num_classes, model.conditioning,
                               norm=model.g_norm)


def build_discriminator(model: ModelConfig, options: Any, image_shape: tuple[int, int, int],
                        num_classes: int) -> DiscriminatorBase:
    """D for a resolved model config (gan_dist.models.build)."""
    return KerasDCGANDiscriminator(model.d_width, model.d_dropout, image_shape, num_classes, model.conditioning,
                                   norm=model.d_norm, spectral_norm=model.spectral_norm)
