"""The ResNet GAN of SNGAN (Miyato et al. 2018, "Spectral Normalization for GANs") and of the projection
discriminator (Miyato & Koyama 2018), after their official code, pfnet-research/sngan_projection (chainer).

G: z -> Linear -> (w0, b, b) -> num_stages up-blocks (BN, ReLU, up x2, conv3x3, BN, ReLU, conv3x3, + 1x1
shortcut) -> BN, ReLU, conv3x3 -> tanh. With conditioning (any model.conditioning but none) every block's
BatchNorms are categorical conditional BN (per-class gamma, beta); the output BN is unconditional; z enters
unchanged (no one-hot concatenation: the classes act through the BN tables only).
D: residual down-blocks (the first without pre-activation, SNGAN's OptimizedBlock; the others "thin", the
hidden width is the input's), ReLU, global SUM pooling -> h (B, F), Linear(F, 1); spectral norm on every
conv, linear and embedding (always, whatever model.spectral_norm says); no normalization (model.d_norm is
ignored), so gradient penalties apply. Projection / acgan / concat come from DiscriminatorBase.

Channel tables, multiples of the width w (model.g_width / d_width = the reference's `ch`); D rows list
(multiple, downsample):
    table        sizes (num_stages)           G: first | block outputs    D blocks                         ref. ch G/D
    cifar        32 (3 from 4x4); 16-28 (2)    1 | 1 1 1                   1d 1d 1 1 (linear without bias)  256 / 128
    stl          48 (3 from 6x6); 40, 56       8 | 4 2 1                   1d 2d 4d 8d 16                    64 / 64
    imagenet64   64 (4); 80, 96, 112           16 | 8 4 2 1                1d 2d 4d 8d 16d                   64 / 64
    imagenet128  128 (5)                       16 | 16 8 4 2 1             1d 2d 4d 8d 16d 16                64 / 64
    imagenet256  256 (6)                       16 | 16 8 8 4 2 1           1d 2d 4d 8d 8d 16d 16             64 / 64
cifar is resnet_32.py / snresnet_32.py (the SNGAN paper's CIFAR-10 networks, G ch 256, D ch 128); stl is the
SNGAN paper's STL-10 table (Table 5; no file in sngan_projection, counts equal kwotsin/mimicry's sngan_48);
imagenet64/128/256 are resnet_64.py / resnet.py / resnet_256.py and the matching snresnet*.py. Sizes the
references do not define take the nearest table: 28 (and 16-24) px the cifar table with two up-blocks (D:
28 -> 14 -> 7 -> 7 -> 7), 96 px the imagenet64 table (D ends at 3x3; 64 px ends at 2x2 in the reference
too), 40 and 56 px the stl table. Above 256 px: ConfigError. So the D does not always mirror G: it has
the reference's down-blocks (2 at CIFAR, 4 at STL, 5 at 64 and 128 px).

Parameter counts at the reference settings (3 channels, latent 128), equal to sngan_projection's chainer
models and asserted in tests/models/test_resnet_sngan.py:
    CIFAR-10 32 px, G w 256, D w 128:   G 4,276,739 / D 1,053,824 unconditional; G 4,304,387 / D 1,055,104
                                        conditional (10 classes: CBN tables in G, projection embedding in D)
    STL-10 48 px, G w 64, D w 64:       G 4,878,083 / D 10,141,441 unconditional
    ImageNet 128 px, w 64, 1000 classes: G 41,996,931 / D 30,041,857 (projection)

Where this differs from the reference, and why (kept as is: chainer's BN epsilon 2e-5, options.bn_eps, and
decay 0.9 = PyTorch's momentum 0.1; xavier_uniform init with gain sqrt(2) in the residual branches):
- Spectral norm is torch's parametrization (base.apply_spectral_norm): one power iteration per training
  forward like the reference, plus 15 at registration (the reference starts from a random u).
- Input and output channels C (1 or 3), and the concat mode's label maps, replace the fixed RGB; acgan's class
  head and concat are gan_dist's conditioning modes, not the papers'; their layers get the reference's init
  for linears (xavier_uniform, gain 1, zero bias).
- z has model.latent_dim entries (the references use 128, as do the counts above).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.base import (
    DiscriminatorBase,
    GeneratorBase,
    apply_spectral_norm,
    conv_stages,
    require_labels,
)
from gan_dist.models.resnet_blocks import CategoricalBatchNorm2d, DBlock, GBlock, plain_norm
from gan_dist.registry.architectures import ResNetSNGANOptions

NAME = "resnet_sngan"
DEFAULT_G_WIDTH = 256  # SNGAN's CIFAR-10 G (resnet_32.py, ch=256)
DEFAULT_D_WIDTH = 128  # SNGAN's CIFAR-10 D (snresnet_32.py, ch=128)
RESIDUAL_GAIN = math.sqrt(2)  # xavier_uniform gain of the 3x3 convs inside residual branches (1 elsewhere)


@dataclass(frozen=True)
class ChannelTable:
    """One of the reference networks: channel multiples of the width w, per block."""

    name: str
    g_first: int  # channels of the Linear's b x b map, in units of w
    g_blocks: tuple[int, ...]  # output channels of each up-block (the last num_stages are used)
    d_blocks: tuple[tuple[int, bool], ...]  # (output channels, downsample) of each D block
    d_linear_bias: bool  # snresnet_32.py's final linear has none (nobias=True); the others have one
    widths: tuple[int, int]  # the reference's (G ch, D ch) for this table


CIFAR = ChannelTable("cifar", 1, (1, 1, 1), ((1, True), (1, True), (1, False), (1, False)), False, (256, 128))
STL = ChannelTable("stl", 8, (4, 2, 1), ((1, True), (2, True), (4, True), (8, True), (16, False)), True, (64, 64))
IMAGENET64 = ChannelTable("imagenet64", 16, (8, 4, 2, 1),
                          ((1, True), (2, True), (4, True), (8, True), (16, True)), True, (64, 64))
IMAGENET128 = ChannelTable("imagenet128", 16, (16, 8, 4, 2, 1),
                           ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False)), True, (64, 64))
IMAGENET256 = ChannelTable("imagenet256", 16, (16, 8, 8, 4, 2, 1),
                           ((1, True), (2, True), (4, True), (8, True), (8, True), (16, True), (16, False)), True,
                           (64, 64))


def channel_table(image_shape: tuple[int, int, int]) -> tuple[ChannelTable, int, int]:
    """(table, num_stages, base_size) for images (C, H, W); ConfigError naming data.image_size above 256 px."""
    num_stages, base_size = conv_stages(image_shape, NAME)
    if num_stages == 2 or (num_stages == 3 and base_size == 4):
        return CIFAR, num_stages, base_size
    tables = {3: STL, 4: IMAGENET64, 5: IMAGENET128, 6: IMAGENET256}
    if num_stages not in tables:
        raise ConfigError(f"key 'data.image_size': {NAME} has reference networks up to 256 px (6 up-blocks from "
                          f"{base_size}x{base_size}), got {image_shape[1]} ({num_stages} stages); choose a "
                          "smaller data.image_size")
    return tables[num_stages], num_stages, base_size


def reference_widths(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The reference's (G ch, D ch) for the table used at this size: (256, 128) at CIFAR sizes, (64, 64) at
    the others. DEFAULT_G_WIDTH / DEFAULT_D_WIDTH are the CIFAR values, which at 48 px and above give 4x
    (G) and 2x (D) the reference widths."""
    return channel_table(image_shape)[0].widths


def _check_width(width: int, key: str) -> None:
    if width < 1:
        raise ConfigError(f"key '{key}': {NAME} needs a positive width (the reference's ch), got {width}")


def _xavier_init(module: nn.Module, residual: tuple[nn.Module, ...]) -> None:
    """The reference's chainer GlorotUniform: gain sqrt(2) for the residual branches' 3x3 convs, 1 for every
    other conv, linear and embedding weight; biases 0. Norm tables keep their own init (1 and 0)."""
    residual_ids = {id(m) for m in residual}
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, RESIDUAL_GAIN if id(m) in residual_ids else 1.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ResNetSNGANGenerator(GeneratorBase):
    """z (B, latent_dim) [, labels (B,)] -> images (B, C, H, W) in [-1, 1].

    At 32x32x3, w = 256: linear -> (B, 256, 4, 4) -> blocks.0 (B, 256, 8, 8) -> blocks.1 (16x16) -> blocks.2
    (B, 256, 32, 32) -> bn, ReLU -> conv_out (B, 3, 32, 32) -> tanh. Layers: linear, blocks.{i}.{bn1, conv1,
    bn2, conv2, conv_sc}, bn, conv_out.
    """

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 conditioning: str = "none", norm: str = "batch", bn_eps: float = 2e-5) -> None:
        super().__init__(latent_dim, image_shape, num_classes, conditioning)
        _check_width(width, "model.g_width")
        if norm not in ("batch", "none"):
            raise ConfigError(f"key 'model.g_norm': {NAME} G takes batch or none, got {norm!r}")
        self.input_dim = latent_dim  # the labels enter through the BN tables, not the first layer
        table, self.num_stages, self.base_size = channel_table(self.image_shape)
        channels = [table.g_first * width] + [m * width for m in table.g_blocks[-self.num_stages:]]

        def block_norm(c: int) -> nn.Module:
            if self.num_classes:
                return CategoricalBatchNorm2d(c, self.num_classes, bn_eps, normalize=norm == "batch")
            return plain_norm(norm, c, bn_eps)

        self.linear = nn.Linear(latent_dim, channels[0] * self.base_size**2)
        self.blocks = nn.ModuleList(
            GBlock(c_in, c_out, block_norm(c_in), block_norm(c_out), conditional=bool(self.num_classes))
            for c_in, c_out in pairwise(channels))
        self.bn = plain_norm(norm, channels[-1], bn_eps)
        self.conv_out = nn.Conv2d(channels[-1], self.image_shape[0], 3, padding=1)
        _xavier_init(self, residual=tuple(m for b in self.blocks for m in (b.conv1, b.conv2)))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = require_labels(self, labels, z.shape[0]) if self.num_classes else None
        h = self.linear(z).view(z.shape[0], -1, self.base_size, self.base_size)  # (B, 256, 4, 4)
        for block in self.blocks:
            h = block(h, labels)  # (B, 256, 8, 8), ...: size x2
        return torch.tanh(self.conv_out(F.relu(self.bn(h))))  # (B, C, H, W)


class ResNetSNGANDiscriminator(DiscriminatorBase):
    """images (B, C, H, W) [, labels (B,)] -> logits (B,) (acgan: and class logits (B, K)).

    At 32x32x3, w = 128: blocks.0 (B, 128, 16, 16) -> blocks.1 (8x8) -> blocks.2 -> blocks.3 (B, 128, 8, 8)
    -> ReLU, sum over H, W -> h (B, 128) -> linear (B,). Layers: blocks.{i}.{conv1, conv2, conv_sc}, linear,
    and the base's embed (projection) or class_head (acgan).
    """

    def __init__(self, width: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 conditioning: str = "none") -> None:
        super().__init__(image_shape, num_classes, conditioning)
        _check_width(width, "model.d_width")
        table, self.num_stages, self.base_size = channel_table(self.image_shape)
        blocks, channels = [], self.input_channels
        for index, (multiple, down) in enumerate(table.d_blocks):
            out = multiple * width
            first = index == 0  # OptimizedBlock: no ReLU on the image, hidden width = out
            blocks.append(DBlock(channels, out, hidden_channels=out if first else channels, downsample=down,
                                 preactivation=not first))
            channels = out
        self.blocks = nn.ModuleList(blocks)
        self.linear = nn.Linear(channels, 1, bias=table.d_linear_bias)
        self.add_conditioning_heads(channels)
        _xavier_init(self, residual=tuple(m for b in self.blocks for m in (b.conv1, b.conv2)))
        if self.conditioning == "projection":
            nn.init.xavier_uniform_(self.embed.weight)  # snresnet's l_y: GlorotUniform
        apply_spectral_norm(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)  # (B, 128, 16, 16), (B, 128, 8, 8), ...
        return F.relu(x).sum(dim=(2, 3))  # global sum pooling: (B, F)

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).flatten()  # (B, 1) -> (B,)


def _widths(model: ModelConfig, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """model.g_width / d_width, None meaning the reference's width for this size (`reference_widths`)."""
    g_width, d_width = reference_widths(image_shape)
    return (g_width if model.g_width is None else model.g_width, d_width if model.d_width is None else model.d_width)


def build_generator(model: ModelConfig, options: ResNetSNGANOptions, image_shape: tuple[int, int, int],
                    num_classes: int) -> GeneratorBase:
    """G for `model` (latent_dim, g_width, g_norm, conditioning; the rest is D's or ignored)."""
    return ResNetSNGANGenerator(model.latent_dim, _widths(model, image_shape)[0], image_shape, num_classes, model.conditioning,
                                norm=model.g_norm, bn_eps=options.bn_eps)


def build_discriminator(model: ModelConfig, options: ResNetSNGANOptions, image_shape: tuple[int, int, int],
                        num_classes: int) -> DiscriminatorBase:
    """D for `model` (d_width, conditioning). Spectral norm is always on; d_norm and d_dropout are ignored
    (the paper's D has neither)."""
    return ResNetSNGANDiscriminator(_widths(model, image_shape)[1], image_shape, num_classes, model.conditioning)
