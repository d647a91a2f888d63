"""BigGAN (Brock, Donahue & Simonyan 2019), after the authors' PyTorch code, ajbrock/BigGAN-PyTorch
(BigGAN.py, layers.py, utils.ortho).

G: z split into chunks (hierarchical latent, "skip-z": one chunk for the first Linear, one per block) ->
Linear -> (w0, b, b) -> num_stages up-blocks whose BatchNorms are conditional: gain = 1 + W_g c,
bias = W_b c, c = [shared(y), z chunk] (one class embedding shared by every block) -> [self-attention
at the chosen resolutions] -> BN, ReLU, conv3x3 -> tanh. Spectral norm on every conv and linear of G
(not on the embeddings, as in the reference).
D: "wide" residual down-blocks (hidden width = the output's), [self-attention], ReLU, global SUM pooling ->
h (B, F), Linear(F, 1); spectral norm on every conv, linear and embedding (always); no normalization
(model.d_norm is ignored), so gradient penalties apply. Projection (the paper's D), acgan and concat come
from DiscriminatorBase. Init: orthogonal (G_init = D_init = 'ortho') on every conv, linear and embedding
weight; biases keep PyTorch's default init (the reference initialises weights only).

Unconditional (model.conditioning=none): no embedding; with hier the BNs are conditioned on the z chunks
alone (as PyTorch-StudioGAN's big_resnet does), without hier they are plain BatchNorms.
`orthogonal_regularization` is the paper's modified orthogonal regularization as a loss term whose gradient
equals BigGAN-PyTorch's utils.ortho; `G.regularization_loss()` / `D.regularization_loss()` return it at
options.ortho_reg / options.d_ortho_reg (None when 0), skipping G's shared embedding as the reference does.

Channel tables (BigGAN-PyTorch G_arch / D_arch), multiples of the width w (model.g_width / d_width = G_ch /
D_ch); D rows (multiple, downsample):
    G_arch  sizes (num_stages)              G: first | block outputs     D blocks
    32      32 (3); 16-28 (2), 40-56 (3)       4 | 4 4 4                4d 4d 4 4
    64      64 (4); 80, 96, 112               16 | 16 8 4 2             1d 2d 4d 8d 16
    128     128 (5)                           16 | 16 8 4 2 1           1d 2d 4d 8d 16d 16
    256     256 (6)                           16 | 16 8 8 4 2 1         1d 2d 4d 8d 8d 16d 16
Sizes the reference does not define take the table of their stage count (28 px: two up-blocks of the 32 px
table and its D, 28 -> 14 -> 7 -> 7 -> 7; 48 px: the 32 px table, D ending at 12x12; 96 px: the 64 px table,
D ending at 6x6). Above 256 px: ConfigError (BigGAN-PyTorch has no 512 px D).

Parameter counts, equal to BigGAN-PyTorch's Generator / Discriminator built with the same settings (3
channels) and asserted in tests/models/test_biggan.py:
    ImageNet 128 px: G_ch = D_ch = 96, dim_z 120, shared_dim 128, hier, attention 64, 1000 classes
        G 70,433,988 (incl. the 128,000 of the shared embedding), D 87,982,370 (projection)
    CIFAR-10 32 px, its launch_cifar_ema.sh: G_ch = D_ch = 64, dim_z 128, no shared embedding, no hier, no
        attention, 10 classes (options shared_embedding=false, hier=false): G 4,304,387, D 4,207,361
    CIFAR-10 32 px with the defaults (shared 128, hier, dim_z 128): G 4,373,251, D 4,207,361

Where this differs from the reference, and why:
- Spectral norm is torch's parametrization (base.apply_spectral_norm, eps 1e-12; the reference's SN_eps is
  1e-6 in its ImageNet script): one power iteration per training forward like the reference, plus 15 at
  registration. The parameters (and so the counts and the ortho term) are the same.
- hier with a latent_dim that the chunk count does not divide: the first chunk (the Linear's input) takes
  the remainder (the reference shrinks dim_z to a multiple instead, so z would not be model.latent_dim).
- Attention: one option for G and D (the reference has G_attn and D_attn; its scripts set them equal). In D
  it follows the first block whose output has that resolution (D_arch's own 'resolution' list at 32 px
  labels every block 16, which would attach it after all four). Resolutions above the image size are
  ignored (so the paper's 64 is off at 32 px, as BigGAN-PyTorch's CIFAR script sets it); a resolution no G
  block outputs is a ConfigError (the reference silently ignores it). SelfAttention keeps >= 1 channel at
  tiny widths.
- Input / output channels C (1 or 3) and concat's label maps replace the fixed RGB; acgan's class head and
  concat are gan_dist's modes (D_arch has the projection embedding only), initialised like the rest.
- Unconditional G (no class in the reference): see above.
"""

from __future__ import annotations

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
from gan_dist.models.resnet_blocks import (
    ConditionalBatchNorm2d,
    DBlock,
    GBlock,
    SelfAttention,
    orthogonal_regularization,
    plain_norm,
)
from gan_dist.registry.architectures import BigGANOptions

NAME = "biggan"
DEFAULT_G_WIDTH = 64  # BigGAN-PyTorch's G_ch default and its CIFAR-10 setting (256 channels at 32 px)
DEFAULT_D_WIDTH = 64
INIT_STYLES = ("ortho", "N02", "xavier")


@dataclass(frozen=True)
class ChannelTable:
    name: str
    g_first: int  # channels of the Linear's b x b map, in units of w
    g_blocks: tuple[int, ...]  # output channels of each up-block (the last num_stages are used)
    d_blocks: tuple[tuple[int, bool], ...]  # (output channels, downsample) of each D block


ARCH_32 = ChannelTable("32", 4, (4, 4, 4), ((4, True), (4, True), (4, False), (4, False)))
ARCH_64 = ChannelTable("64", 16, (16, 8, 4, 2), ((1, True), (2, True), (4, True), (8, True), (16, False)))
ARCH_128 = ChannelTable("128", 16, (16, 8, 4, 2, 1),
                        ((1, True), (2, True), (4, True), (8, True), (16, True), (16, False)))
ARCH_256 = ChannelTable("256", 16, (16, 8, 8, 4, 2, 1),
                        ((1, True), (2, True), (4, True), (8, True), (8, True), (16, True), (16, False)))
TABLES = {2: ARCH_32, 3: ARCH_32, 4: ARCH_64, 5: ARCH_128, 6: ARCH_256}


def channel_table(image_shape: tuple[int, int, int]) -> tuple[ChannelTable, int, int]:
    """(table, num_stages, base_size) for images (C, H, W); ConfigError naming data.image_size above 256 px."""
    num_stages, base_size = conv_stages(image_shape, NAME)
    if num_stages not in TABLES:
        raise ConfigError(f"key 'data.image_size': {NAME} has reference networks up to 256 px (6 up-blocks from "
                          f"{base_size}x{base_size}), got {image_shape[1]} ({num_stages} stages); choose a "
                          "smaller data.image_size")
    return TABLES[num_stages], num_stages, base_size


def check_options(options: BigGANOptions, conditional: bool) -> None:
    """ConfigError naming model.options.<key> for values the networks cannot be built with."""
    if options.shared_dim < 1:
        raise ConfigError(f"key 'model.options.shared_dim': must be at least 1, got {options.shared_dim}")
    if options.init not in INIT_STYLES:
        raise ConfigError(f"key 'model.options.init': {options.init!r} is not one of {', '.join(INIT_STYLES)}")
    for key in ("ortho_reg", "d_ortho_reg"):
        if getattr(options, key) < 0:
            raise ConfigError(f"key 'model.options.{key}': must be >= 0 (0 = off), got {getattr(options, key)}")
    if conditional and options.hier and not options.shared_embedding:
        raise ConfigError("keys 'model.options.hier' and 'model.options.shared_embedding': hierarchical z joins the "
                          "shared class embedding at each BN; set hier=false or shared_embedding=true")


def attention_resolutions(options: BigGANOptions, image_size: int, g_resolutions: list[int]) -> set[int]:
    """The resolutions of options.attention that apply at this image size (those <= image_size); ConfigError
    naming model.options.attention for one that no G block outputs."""
    chosen = {int(r) for r in (options.attention or ()) if int(r) <= image_size}
    missing = sorted(chosen - set(g_resolutions))
    if missing:
        raise ConfigError(f"key 'model.options.attention': no G block outputs {missing} px at {image_size} px (block "
                          f"resolutions {', '.join(map(str, g_resolutions))}); choose among them, or [] for none")
    return chosen


def init_weights(module: nn.Module, style: str) -> None:
    """BigGAN-PyTorch's init_weights: every conv, linear and embedding weight ortho | N(0, 0.02) | xavier;
    biases and norm parameters untouched (PyTorch's defaults)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding)):
            if style == "ortho":
                nn.init.orthogonal_(m.weight)
            elif style == "N02":
                nn.init.normal_(m.weight, 0.0, 0.02)
            else:
                nn.init.xavier_uniform_(m.weight)


def _check_width(width: int, key: str) -> None:
    if width < 1:
        raise ConfigError(f"key '{key}': {NAME} needs a positive width (the reference's G_ch / D_ch), got {width}")


class BigGANGenerator(GeneratorBase):
    """z (B, latent_dim) [, labels (B,)] -> images (B, C, H, W) in [-1, 1].

    At 128x128x3, w = 96, latent 120, hier: z -> 6 chunks of 20; linear(chunk 0) -> (B, 1536, 4, 4) ->
    blocks.0 (B, 1536, 8, 8) -> blocks.1 (768, 16) -> blocks.2 (384, 32) -> blocks.3 (192, 64) ->
    attention.3 -> blocks.4 (B, 96, 128, 128) -> bn, ReLU -> conv_out (B, 3, 128, 128) -> tanh.
    Block i's BNs read c_i = [shared(y) (B, 128), chunk i+1 (B, 20)]. Layers: shared (conditional with a
    shared embedding), linear, blocks.{i}.{bn1, conv1, bn2, conv2, conv_sc}, attention.{i}, bn, conv_out.
    """

    def __init__(self, latent_dim: int, width: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 conditioning: str = "none", norm: str = "batch", options: BigGANOptions | None = None) -> None:
        super().__init__(latent_dim, image_shape, num_classes, conditioning)
        options = BigGANOptions() if options is None else options
        _check_width(width, "model.g_width")
        if norm not in ("batch", "none"):
            raise ConfigError(f"key 'model.g_norm': {NAME} G takes batch or none, got {norm!r}")
        check_options(options, conditional=bool(self.num_classes))
        self.options = options
        table, self.num_stages, self.base_size = channel_table(self.image_shape)
        channels = [table.g_first * width] + [m * width for m in table.g_blocks[-self.num_stages:]]
        self.block_resolutions = [self.base_size * 2 ** (i + 1) for i in range(self.num_stages)]
        self.attention_resolutions = attention_resolutions(options, self.image_shape[1], self.block_resolutions)

        # Hierarchical z: num_stages + 1 chunks; the first (the Linear's input) takes any remainder.
        self.hier = options.hier
        if self.hier:
            chunk = latent_dim // (self.num_stages + 1)
            if chunk < 1:
                raise ConfigError(f"key 'model.latent_dim': hierarchical z (model.options.hier) splits z into "
                                  f"{self.num_stages + 1} chunks at {self.image_shape[1]} px, got latent_dim "
                                  f"{latent_dim}; raise it or set model.options.hier=false")
            self.z_chunks = [latent_dim - chunk * self.num_stages] + [chunk] * self.num_stages
        else:
            chunk, self.z_chunks = 0, [latent_dim]
        self.input_dim = self.z_chunks[0]  # the width of the first layer's input

        self.shared_embedding = bool(self.num_classes) and options.shared_embedding
        if self.shared_embedding:
            self.shared = nn.Embedding(self.num_classes, options.shared_dim)
        cond_dim = (options.shared_dim if self.shared_embedding else 0) + chunk
        normalize = norm == "batch"

        def block_norm(c: int) -> nn.Module:
            if self.num_classes and not self.shared_embedding:  # per-BN class embeddings (G_shared off)
                return ConditionalBatchNorm2d(c, nn.Embedding(self.num_classes, c), nn.Embedding(self.num_classes, c),
                                              options.bn_eps, normalize)
            if cond_dim:
                return ConditionalBatchNorm2d(c, nn.Linear(cond_dim, c, bias=False), nn.Linear(cond_dim, c, bias=False),
                                              options.bn_eps, normalize)
            return plain_norm(norm, c, options.bn_eps)

        self.linear = nn.Linear(self.z_chunks[0], channels[0] * self.base_size**2)
        conditional_norms = bool(self.num_classes) or self.hier
        self.blocks = nn.ModuleList(
            GBlock(c_in, c_out, block_norm(c_in), block_norm(c_out), conditional=conditional_norms)
            for c_in, c_out in pairwise(channels))
        self.attention = nn.ModuleDict({
            str(i): SelfAttention(channels[i + 1]) for i, r in enumerate(self.block_resolutions)
            if r in self.attention_resolutions})
        self.bn = plain_norm(norm, channels[-1], options.bn_eps)
        self.conv_out = nn.Conv2d(channels[-1], self.image_shape[0], 3, padding=1)
        init_weights(self, options.init)
        # Spectral norm on G's convs and linears (the BN gain/bias linears included), never on an embedding:
        # "applying SN to G's embedding seems to randomly cripple G" (BigGAN-PyTorch).
        for layer in [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
            apply_spectral_norm(layer)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        y: torch.Tensor | None = None
        if self.num_classes:
            labels = require_labels(self, labels, z.shape[0])
            y = self.shared(labels) if self.shared_embedding else labels  # (B, shared_dim) | (B,)
        if self.hier:
            z, *chunks = torch.split(z, self.z_chunks, dim=1)  # (B, 20), 5 x (B, 20) at 128 px
            conds = [chunk if y is None else torch.cat([y, chunk], dim=1) for chunk in chunks]  # (B, 148) each
        else:
            conds = [y] * self.num_stages
        h = self.linear(z).view(z.shape[0], -1, self.base_size, self.base_size)  # (B, 1536, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, conds[i])  # (B, 1536, 8, 8), ...: size x2
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        return torch.tanh(self.conv_out(F.relu(self.bn(h))))  # (B, C, H, W)

    def regularization_loss(self) -> torch.Tensor | None:
        """options.ortho_reg * the modified orthogonal regularization of G, the shared embedding skipped (as
        BigGAN-PyTorch's train_fns blacklists G.shared); None when ortho_reg is 0. Add it once per G step."""
        if not self.options.ortho_reg:
            return None
        skip = list(self.shared.parameters()) if self.shared_embedding else []
        return orthogonal_regularization(self, self.options.ortho_reg, skip=skip)


class BigGANDiscriminator(DiscriminatorBase):
    """images (B, C, H, W) [, labels (B,)] -> logits (B,) (acgan: and class logits (B, K)).

    At 128x128x3, w = 96: blocks.0 (B, 96, 64, 64) -> attention.0 -> blocks.1 (192, 32) -> blocks.2 (384, 16)
    -> blocks.3 (768, 8) -> blocks.4 (1536, 4) -> blocks.5 (B, 1536, 4, 4) -> ReLU, sum over H, W -> h (B, 1536)
    -> linear (B,). Layers: blocks.{i}.{conv1, conv2, conv_sc}, attention.{i}, linear, and the base's embed
    (projection) or class_head (acgan).
    """

    def __init__(self, width: int, image_shape: tuple[int, int, int], num_classes: int = 0,
                 conditioning: str = "none", options: BigGANOptions | None = None) -> None:
        super().__init__(image_shape, num_classes, conditioning)
        options = BigGANOptions() if options is None else options
        _check_width(width, "model.d_width")
        check_options(options, conditional=bool(self.num_classes))
        self.options = options
        table, num_stages, base_size = channel_table(self.image_shape)
        g_resolutions = [base_size * 2 ** (i + 1) for i in range(num_stages)]
        wanted = attention_resolutions(options, self.image_shape[1], g_resolutions)
        blocks, attention, self.attention_resolutions = [], {}, set()
        channels, size = self.input_channels, self.image_shape[1]
        for index, (multiple, down) in enumerate(table.d_blocks):
            out = multiple * width
            # The first block has no ReLU on the image (SNGAN's OptimizedBlock); all are wide (hidden = out).
            blocks.append(DBlock(channels, out, hidden_channels=out, downsample=down, preactivation=index > 0))
            channels, size = out, size // 2 if down else size
            if size in wanted and size not in self.attention_resolutions:  # after the first block at that size
                attention[str(index)] = SelfAttention(out)
                self.attention_resolutions.add(size)
        self.blocks = nn.ModuleList(blocks)
        self.attention = nn.ModuleDict(attention)
        self.linear = nn.Linear(channels, 1)
        self.add_conditioning_heads(channels)
        init_weights(self, options.init)
        apply_spectral_norm(self)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)  # (B, 96, 64, 64), (B, 192, 32, 32), ...
            if str(i) in self.attention:
                x = self.attention[str(i)](x)
        return F.relu(x).sum(dim=(2, 3))  # global sum pooling: (B, F)

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).flatten()  # (B, 1) -> (B,)

    def regularization_loss(self) -> torch.Tensor | None:
        """options.d_ortho_reg * the modified orthogonal regularization of every D weight (BigGAN-PyTorch's
        D_ortho blacklists nothing); None when d_ortho_reg is 0. Add it once per D step."""
        if not self.options.d_ortho_reg:
            return None
        return orthogonal_regularization(self, self.options.d_ortho_reg)


def _widths(model: ModelConfig) -> tuple[int, int]:
    return (DEFAULT_G_WIDTH if model.g_width is None else model.g_width,
            DEFAULT_D_WIDTH if model.d_width is None else model.d_width)


def build_generator(model: ModelConfig, options: BigGANOptions, image_shape: tuple[int, int, int],
                    num_classes: int) -> GeneratorBase:
    """G for `model` (latent_dim, g_width, g_norm, conditioning) and `options`."""
    return BigGANGenerator(model.latent_dim, _widths(model)[0], image_shape, num_classes, model.conditioning,
                           norm=model.g_norm, options=options)


def build_discriminator(model: ModelConfig, options: BigGANOptions, image_shape: tuple[int, int, int],
                        num_classes: int) -> DiscriminatorBase:
    """D for `model` (d_width, conditioning) and `options`. Spectral norm is always on; d_norm and d_dropout
    are ignored (the paper's D has neither)."""
    return BigGANDiscriminator(_widths(model)[1], image_shape, num_classes, model.conditioning, options=options)
