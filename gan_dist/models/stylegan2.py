"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"), config F, as the
networks of NVlabs/stylegan2-ada-pytorch (training/networks.py): a mapping network z -> w, a skip-architecture
synthesis network of modulated / demodulated convolutions, and a residual discriminator; plus style mixing and
the path-length penalty (training/loss.py). Plain PyTorch modules, no custom CUDA ops
(gan_dist/models/stylegan2_ops.py holds the resampling and modulated-conv math).

Module and parameter names follow the reference (G.mapping.fc0.weight, G.synthesis.b8.conv0.affine.bias,
D.b64.skip.weight, D.b4.fc.weight ...), and with conditioning none and square power-of-2 images the
parameter counts are exactly the reference's (tests/models/test_stylegan2.py), e.g. with z_dim = w_dim = 512:

    config F, 256 px (channel_base 32768, channel_max 512, 8 mapping layers): G 30,034,338, D 28,864,129
    paper256 (channel_base 16384, 8 mapping layers):                           G 24,767,458, D 24,001,089
    config F, 1024 px:                                                         G 30,370,060, D 29,012,513

G includes its mapping network (2,101,248 of them). Counted from the reference's constructors (parameters only:
G's buffers w_avg (w_dim) and noise_const (one r x r map per conv layer), and the FIR filters, are not
parameters there or here). A conditional G (10 classes) has the reference's count too (30,302,114 at 256 px);
a conditional D does not (see below). Stored weights are N(0, 1) and scaled at run time by
lr_multiplier / sqrt(fan_in) (equalized learning rate), so Adam's step size is the same for every layer.

Sizes and widths. Images (C, H, W) are square with H = base * 2**n (`base.conv_stages`: 28 -> 7 * 2**2,
32 -> 4 * 2**3, 48 -> 6 * 2**3, 96 -> 6 * 2**4, 256 -> 4 * 2**6): the reference's 4 x 4 const becomes a base x
base const, G has one block per resolution base, 2 base, ..., H and D one per H, H / 2, ..., 2 base then the
epilogue at base x base. Channels at resolution r are min(channel_base // r, channel_max) as in the reference;
model.g_width / model.d_width are channel_max (default 512) and model.options.channel_base (default 32768,
config F; paper256 uses 16384) the overall multiplier. Up to 64 px every layer of config F has channel_max
channels, so a small width (32-64) is a uniform, CPU-sized network.

Where this differs from the reference, and why:
- G's output has no tanh (as in the reference): images are unbounded, roughly in [-1, 1], not clamped.
- Class conditioning of G is the reference's for every mode (concat, acgan, projection): the one-hot label
  goes through an equalized linear embedding (K -> w_dim), is normalized to unit second moment and
  concatenated to the normalized z. D's conditioning comes from gan_dist's DiscriminatorBase: concat adds K
  one-hot maps to the image channels, acgan a linear class head on h, projection a learned (K, F) table
  (logits = out(h) + <embed(y), h>, Miyato & Koyama 2018). The reference's conditional D is a projection too
  but maps the one-hot label through an 8-layer mapping network to cmap (F dims), has no unconditional term,
  and scales by 1 / sqrt(F): logits = <out(h), cmap> / sqrt(F) with out: F -> F. Ours keeps the three
  conditioning modes identical across gan_dist's architectures; its embedding is drawn N(0, 1 / F) so that
  <embed(y), h> starts at the reference's O(1) scale.
- Non-power-of-2 sizes (28, 48, 96) start from a 7 x 7 or 6 x 6 const (the reference needs 2**k).
- Style mixing is drawn inside G's training-mode forward (the reference draws it in the loss's run_G), with
  torch.where over the layer index instead of `ws[:, cutoff:] = ...` (a tensor slice bound reads the
  cutoff on the host); the random draws are the same and in the same order.
- The minibatch-stddev layer raises a ValueError naming model.options.mbstd_group when the per-process
  batch is not a multiple of the group (the reference fails inside a reshape).
- No mixed precision per block (num_fp16_res), no freeze-D, no channels_last weights: precision and memory
  format are the trainer's (autocast, train.channels_last). The fp16 pre-normalization of the modulated conv
  is kept (it runs when activations are float16).
- The demodulation coefficients come from a (B, I) x (I, O) matmul (stylegan2_ops.modulated_conv2d).
- FIR filters are non-persistent buffers (constants, not in the state_dict); the reference saves them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.base import DiscriminatorBase, GeneratorBase, conv_stages, one_hot, require_labels
from gan_dist.models.stylegan2_ops import (
    bias_act,
    conv2d_resample,
    minibatch_stddev,
    modulated_conv2d,
    normalize_2nd_moment,
    setup_filter,
    upsample2d,
)
from gan_dist.registry.architectures import NOISE_MODES, StyleGAN2Options, check_stylegan2_options

DEFAULT_G_WIDTH = 512  # channel_max of G (config F)
DEFAULT_D_WIDTH = 512  # channel_max of D
RESAMPLE_TAPS = (1, 3, 3, 1)  # the binomial low-pass filter of up- and downsampling
SKIP_GAIN = math.sqrt(0.5)  # residual D: (skip + main) * sqrt(1/2) keeps the variance of the sum


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """The reference's channel rule: min(channel_base // resolution, channel_max)."""
    return min(channel_base // resolution, channel_max)


def _resolutions(image_shape: tuple[int, int, int]) -> list[int]:
    """[base, 2 base, ..., H] for images (C, H, W) (ConfigError naming data.image_size if not buildable)."""
    num_stages, base_size = conv_stages(image_shape, "stylegan2")
    return [base_size << i for i in range(num_stages + 1)]


def _check_widths(resolutions: list[int], channel_base: int, channel_max: int, key: str) -> None:
    if channel_max < 1:
        raise ConfigError(f"key '{key}': must be >= 1, got {channel_max}")
    if channels_at(max(resolutions), channel_base, channel_max) < 1:
        raise ConfigError(f"key 'model.options.channel_base': {channel_base} gives no channels at "
                          f"{max(resolutions)} px (channels = channel_base // resolution); use at least "
                          f"{max(resolutions)}")


# ----------------------------------------------------------------------------------------------------------
# Equalized-learning-rate layers


class FullyConnectedLayer(nn.Module):
    """Equalized linear layer: y = act(x (w * lr_mult / sqrt(in))^T + b * lr_mult).

    The stored weight is N(0, 1) / lr_mult, so the effective weight starts N(0, 1 / in) whatever lr_mult,
    while Adam's updates to it are scaled by lr_mult (the mapping network's 0.01: it learns 100x slower).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain  # (out, in)
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())  # (B, out)
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(nn.Module):
    """Equalized conv (weight * 1 / sqrt(in * k * k)), optional FIR downsampling, bias, activation (lrelu:
    times sqrt(2) * gain), clamp at conv_clamp * gain. The discriminator's layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", down: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_TAPS), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, f=self.resample_filter, down=self.down, padding=self.padding)
        act_gain = (math.sqrt(2.0) if self.activation == "lrelu" else 1.0) * gain
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, act=self.activation, gain=act_gain, clamp=clamp)


# ----------------------------------------------------------------------------------------------------------
# Generator


class MappingNetwork(nn.Module):
    """z (B, z_dim) [, labels (B,)] -> ws (B, num_ws, w_dim): normalize z (and the embedded label) to unit
    second moment, concatenate, `num_layers` equalized FC + lrelu layers with lr multiplier 0.01, broadcast to
    num_ws. Training mode tracks w_avg (a buffer, decay w_avg_beta), the centre of the truncation trick."""

    def __init__(self, z_dim: int, num_classes: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_multiplier: float = 0.01, w_avg_beta: float = 0.995, conditioning: str = "none") -> None:
        super().__init__()
        self.z_dim, self.num_classes, self.w_dim, self.num_ws = z_dim, num_classes, w_dim, num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        self.conditioning = conditioning  # named in the error for missing labels
        embed_features = w_dim if num_classes else 0
        features = [z_dim + embed_features] + [w_dim] * num_layers
        if num_classes:
            self.embed = FullyConnectedLayer(num_classes, embed_features)  # lr multiplier 1, as the reference
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], activation="lrelu",
                                                        lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = True) -> torch.Tensor:
        """truncation_psi (a Python float): ws <- w_avg + psi (ws - w_avg) on the first truncation_cutoff
        layers (None: all). update_w_avg=False leaves w_avg alone (style mixing's second mapping)."""
        x = normalize_2nd_moment(z.to(torch.float32))  # (B, z_dim)
        if self.num_classes:
            labels = require_labels(self, labels, z.shape[0])
            y = normalize_2nd_moment(self.embed(one_hot(labels, self.num_classes, torch.float32)))  # (B, w_dim)
            x = torch.cat([x, y], dim=1)  # (B, z_dim + w_dim)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)  # (B, w_dim)
        x = x.to(torch.float32)  # w in float32 (under autocast the FC layers give bf16 / fp16), as w_avg
        if self.training and update_w_avg:
            # w_avg <- beta w_avg + (1 - beta) mean_b(w): an in-place buffer update, no host sync.
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = x.unsqueeze(1).expand(-1, self.num_ws, -1)  # (B, num_ws, w_dim), one w per layer
        if truncation_psi != 1:
            truncated = self.w_avg.lerp(ws, truncation_psi)  # w_avg + psi (w - w_avg)
            if truncation_cutoff is None:
                ws = truncated
            else:
                ws = torch.cat([truncated[:, :truncation_cutoff], ws[:, truncation_cutoff:]], dim=1)
        return ws


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling x2 first), noise, bias, lrelu (gain sqrt(2)), clamp.

    styles = affine(w) (bias initialised to 1: the modulation starts at ~1); noise is one (H, W) map per sample,
    broadcast over channels, scaled by the learned noise_strength (initialised to 0).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 use_noise: bool = True, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.resolution, self.up, self.use_noise, self.conv_clamp = resolution, up, use_noise, conv_clamp
        self.padding = 1
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))  # no weight gain: demodulated
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_TAPS), persistent=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random", fused: bool = True,
                gain: float = 1.0) -> torch.Tensor:
        styles = self.affine(w)  # (B, in)
        noise = None
        if self.use_noise and noise_mode == "random":
            # Global RNG, on x's device: no host sync; a CUDA graph captures it with the default generator.
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device,
                                dtype=x.dtype) * self.noise_strength  # (B, 1, H, W)
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # (H, W)
        # flip_weight only for up = 1, as the reference (an upsampling layer convolves, see conv2d_resample).
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=self.up == 1, fused=fused)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return bias_act(x, self.bias, act="lrelu", gain=math.sqrt(2.0) * gain, clamp=clamp)  # (B, out, H, W)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to the image channels, without demodulation; the style carries the equalized-lr
    weight gain 1 / sqrt(in)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # (B, in)
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)  # (B, C, H, W)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (x at r/2, img at r/2) -> (x at r, img at r).

    The first block starts from a learned const (C, base, base) and has one conv; the others upsample in conv0
    and have two. Each block adds its toRGB output to the FIR-upsampled image of the block before (skip
    architecture), so the image is a sum of contributions from every resolution.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 conv_clamp: float | None = None, use_noise: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, use_noise=use_noise,
                                        conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, use_noise=use_noise,
                                    conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", setup_filter(RESAMPLE_TAPS), persistent=False)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str,
                fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """ws (B, num_conv + 1, w_dim): one w per conv, then the toRGB's (shared with the next block's conv0)."""
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)  # (B, C, base, base)
            x = self.conv1(x, ws[:, 0], noise_mode, fused)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode, fused)  # (B, C, r, r): upsampled x2
            x = self.conv1(x, ws[:, 1], noise_mode, fused)
        y = self.torgb(x, ws[:, self.num_conv], fused)  # (B, img_channels, r, r)
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) -> images (B, C, H, W), unbounded (no tanh, as the reference).

    num_ws = 2 * len(blocks): one w per conv plus the last toRGB's (14 at 256 px, 18 at 1024 px). Built with
    noise_mode none, the layers have no noise inputs (the reference's use_noise=False).
    """

    def __init__(self, w_dim: int, image_shape: tuple[int, int, int], channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: float | None = None, noise_mode: str = "random",
                 fused_modconv: bool | None = None) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.image_shape = tuple(image_shape)
        self.noise_mode = noise_mode
        self.fused_modconv = fused_modconv
        self.resolutions = _resolutions(self.image_shape)
        self.num_ws = 0
        for res in self.resolutions:
            in_channels = 0 if res == self.resolutions[0] else channels_at(res // 2, channel_base, channel_max)
            block = SynthesisBlock(in_channels, channels_at(res, channel_base, channel_max), w_dim, res,
                                   self.image_shape[0], conv_clamp=conv_clamp, use_noise=noise_mode != "none")
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last block's toRGB

    def forward(self, ws: torch.Tensor, noise_mode: str | None = None,
                fused_modconv: bool | None = None) -> torch.Tensor:
        """noise_mode / fused_modconv: None = the network's setting (fused None: not self.training)."""
        noise_mode = self.noise_mode if noise_mode is None else noise_mode
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode {noise_mode!r} is not one of {', '.join(NOISE_MODES)}")
        fused = self.fused_modconv if fused_modconv is None else fused_modconv
        fused = (not self.training) if fused is None else fused
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + 1), noise_mode, fused)
            w_idx += block.num_conv
        return img  # (B, C, H, W)


class StyleGAN2Generator(GeneratorBase):
    """z (B, latent_dim) [, labels (B,)] -> images (B, C, H, W), unbounded (roughly [-1, 1]; no tanh).

    Attributes: mapping (MappingNetwork: (z, labels, truncation_psi, truncation_cutoff) -> ws), synthesis
    (SynthesisNetwork: ws -> images), num_ws, w_dim, w_avg (the mapping's buffer), mixing_prob, and
    GeneratorBase's latent_dim, num_classes, conditioning, image_shape.

    In training mode every forward updates w_avg and (mixing_prob > 0) mixes styles; eval mode does neither.
    """

    def __init__(self, latent_dim: int, width: int = DEFAULT_G_WIDTH,
                 image_shape: tuple[int, int, int] = (3, 256, 256), num_classes: int = 0,
                 conditioning: str = "none", options: StyleGAN2Options | None = None) -> None:
        super().__init__(latent_dim, image_shape, num_classes, conditioning)
        # G_ema copies the tracked mean w (the reference copies every buffer) rather than averaging it again.
        self.ema_copied_buffers = ("mapping.w_avg",)
        o = StyleGAN2Options() if options is None else options
        check_stylegan2_options(o)
        _check_widths(_resolutions(self.image_shape), o.channel_base, width, "model.g_width")
        self.w_dim = o.w_dim
        self.mixing_prob = o.mixing_prob
        self.synthesis = SynthesisNetwork(o.w_dim, self.image_shape, o.channel_base, width, o.conv_clamp,
                                          o.noise_mode, o.fused_modconv)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(latent_dim, self.num_classes, o.w_dim, self.num_ws, o.mapping_layers,
                                      o.mapping_lr_multiplier, o.w_avg_beta, conditioning)

    @property
    def w_avg(self) -> torch.Tensor:
        return self.mapping.w_avg  # (w_dim,)

    def mix_styles(self, ws: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Style mixing regularization (training mode, mixing_prob > 0; else ws unchanged): with probability
        mixing_prob, the layers from a random cutoff in [1, num_ws) on take the w of a second z ~ N(0, I) (same
        labels). One cutoff per batch, as the reference; drawn on the device with the global RNG (cutoff, then
        the coin, then z2: the reference's order), applied with torch.where: no host sync, static shapes."""
        if not self.training or self.mixing_prob <= 0:
            return ws
        device = ws.device
        # randint = empty().random_(1, num_ws): the reference's draw, but traceable by torch.compile
        cutoff = torch.randint(1, self.num_ws, [], device=device)
        mixing = torch.rand([], device=device) < self.mixing_prob
        cutoff = torch.where(mixing, cutoff, torch.full_like(cutoff, self.num_ws))  # num_ws = no mixing
        other = self.mapping(torch.randn_like(z), labels, update_w_avg=False)  # (B, num_ws, w_dim)
        later = (torch.arange(self.num_ws, device=device) >= cutoff).reshape(1, -1, 1)  # (1, num_ws, 1)
        return torch.where(later, other, ws)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, *, noise_mode: str | None = None,
                return_ws: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W); with return_ws=True (images, ws) where ws (B, num_ws, w_dim) are the (mixed)
        styles that synthesis read: the path-length penalty differentiates the images with respect to them
        (a call through G's DDP wrapper, so the reducer sees the forward)."""
        ws = self.mapping(z, labels, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        ws = self.mix_styles(ws, z, labels)
        images = self.synthesis(ws, noise_mode=noise_mode)
        return (images, ws) if return_ws else images


# ----------------------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    """One resolution of the residual D: (B, tmp, r, r) -> (B, out, r/2, r/2).

    fromrgb (first block only: 1x1 conv + lrelu), then (skip(x) + conv1(conv0(x))) * sqrt(1/2): conv0 3x3,
    conv1 3x3 with FIR downsampling, skip a 1x1 conv without bias after FIR downsampling.
    """

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 0:
            x = self.fromrgb(x)  # image -> (B, tmp, r, r)
        y = self.skip(x, gain=SKIP_GAIN)  # (B, out, r/2, r/2)
        x = self.conv0(x)
        x = self.conv1(x, gain=SKIP_GAIN)  # (B, out, r/2, r/2)
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """At base x base: minibatch stddev, 3x3 conv + lrelu, FC + lrelu -> h (B, C); `out` (FC C -> 1) is the
    adversarial head, applied by StyleGAN2Discriminator.logit."""

    def __init__(self, in_channels: int, resolution: int, mbstd_group: int = 4, mbstd_channels: int = 1,
                 conv_clamp: float | None = None) -> None:
        super().__init__()
        self.mbstd_group, self.mbstd_channels = mbstd_group, mbstd_channels
        self.conv = Conv2dLayer(in_channels + mbstd_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution**2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd_channels:
            x = minibatch_stddev(x, self.mbstd_group, self.mbstd_channels)  # (B, C + F, b, b)
        x = self.conv(x)  # (B, C, b, b)
        return self.fc(x.flatten(1))  # (B, C)


class StyleGAN2Discriminator(DiscriminatorBase):
    """images (B, C, H, W) [, labels (B,)] -> logits (B,) (acgan: and class logits (B, K)).

    Blocks b{H}, b{H/2}, ..., b{2 base} (residual, each halving the size), then the epilogue b{base}. body(x)
    returns the epilogue's features h (B, F), F = channels at base; logit(h) is its `out` layer.
    """

    def __init__(self, width: int = DEFAULT_D_WIDTH, image_shape: tuple[int, int, int] = (3, 256, 256),
                 num_classes: int = 0, conditioning: str = "none", options: StyleGAN2Options | None = None) -> None:
        super().__init__(image_shape, num_classes, conditioning)
        o = StyleGAN2Options() if options is None else options
        check_stylegan2_options(o)
        resolutions = _resolutions(self.image_shape)
        _check_widths(resolutions, o.channel_base, width, "model.d_width")
        self.base_size = resolutions[0]
        self.block_resolutions = resolutions[:0:-1]  # H, H/2, ..., 2 base
        channels = {res: channels_at(res, o.channel_base, width) for res in resolutions}
        for res in self.block_resolutions:
            in_channels = 0 if res == self.block_resolutions[0] else channels[res]
            setattr(self, f"b{res}", DiscriminatorBlock(in_channels, channels[res], channels[res // 2],
                                                        self.input_channels, conv_clamp=o.conv_clamp))
        feature_dim = channels[self.base_size]
        if o.mbstd_channels and feature_dim % o.mbstd_channels:
            raise ConfigError(f"key 'model.options.mbstd_channels': {o.mbstd_channels} does not divide D's "
                              f"{feature_dim} channels at {self.base_size} px")
        setattr(self, f"b{self.base_size}", DiscriminatorEpilogue(
            feature_dim, self.base_size, o.mbstd_group, o.mbstd_channels, conv_clamp=o.conv_clamp))
        self.add_conditioning_heads(feature_dim)
        if conditioning == "projection":
            nn.init.normal_(self.embed.weight, 0.0, 1 / math.sqrt(feature_dim))  # <embed(y), h> ~ O(1) at init

    @property
    def epilogue(self) -> DiscriminatorEpilogue:
        return getattr(self, f"b{self.base_size}")

    def body(self, x: torch.Tensor) -> torch.Tensor:
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)  # (B, C', res/2, res/2)
        return self.epilogue(x)  # (B, F)

    def logit(self, h: torch.Tensor) -> torch.Tensor:
        return self.epilogue.out(h)[:, 0]  # (B,)


# ----------------------------------------------------------------------------------------------------------
# Path-length regularization


class PathLengthPenalty(nn.Module):
    """Path-length regularization (Karras et al. 2020, sec. 3.2), as stylegan2-ada-pytorch's loss.py (Gpl):

        ws = the (style-mixed) styles of the first B // pl_batch_shrink z's, images = synthesis(ws)
        y ~ N(0, I) / sqrt(H W)                      (pl_noise: global RNG, on the device)
        length_b = || d <images_b, y_b> / d ws_b ||, the norm over w_dim averaged over the num_ws layers
        a <- lerp(pl_mean, mean_b length_b, pl_decay); pl_mean <- a (a buffer)
        loss = pl_weight * mean_b (length_b - a)^2

    `penalty_loss` is that loss plus 0 * images[:, 0, 0, 0] (so that every G parameter is in the graph, as the
    reference: DDP then reduces them all); the lazy-regularization scaling by pl_every is the caller's. The
    gradient is taken with torch.autograd.grad(create_graph=True) w.r.t. ws only (no parameter .grad is
    written until the caller's backward). Call with G in training mode (mixing, the per-sample modconv path),
    through its DDP wrapper if any: G(z, labels, return_ws=True) must give (images, ws).
    """

    def __init__(self, pl_weight: float = 2.0, pl_decay: float = 0.01, pl_batch_shrink: int = 2,
                 every: int = 1) -> None:
        super().__init__()
        self.pl_weight, self.pl_decay, self.pl_batch_shrink = pl_weight, pl_decay, pl_batch_shrink
        self.every = every  # lazy regularization: applied every `every` G steps, scaled by `every` (the caller)
        self.register_buffer("pl_mean", torch.zeros([]))

    @classmethod
    def from_options(cls, options: StyleGAN2Options) -> PathLengthPenalty:
        return cls(options.pl_weight, options.pl_decay, options.pl_batch_shrink, options.pl_every)

    def due(self, step: int) -> bool:
        """Whether G step `step` (0-based) takes the penalty (every `every`-th, as stylegan2-ada's G_reg_interval)."""
        return step % self.every == 0

    def batch_size(self, batch_size: int) -> int:
        """z's the penalty uses out of a batch of `batch_size` (pl_batch_shrink)."""
        return max(batch_size // self.pl_batch_shrink, 1)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """pl_mean, for checkpoints (safetensors)."""
        return {"pl_mean": self.pl_mean.detach().clone()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        value = tensors["pl_mean"]
        if value.shape != () or not bool(torch.isfinite(value)):
            raise ValueError(f"path-length state 'pl_mean' must be a finite 0-dim tensor, got {value!r}")
        self.pl_mean.copy_(value)

    def forward(self, G: nn.Module, z: torch.Tensor, labels: torch.Tensor | None = None, draws: Any = None,
                reduce_mean: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(penalty_loss 0-dim, {"pl_penalty", "pl_length", "pl_mean": 0-dim detached tensors}).

        `draws` (uniform / normal per sample, gan_dist.augment.draws.Draws; None: torch's global RNG) draws
        pl_noise; `reduce_mean` averages the batch's mean length over ranks before it moves pl_mean, so that
        pl_mean is the same on every rank and the run a function of the global batch (None: this rank's)."""
        batch = self.batch_size(z.shape[0])
        labels = None if labels is None else labels[:batch]
        images, ws = G(z[:batch], labels, return_ws=True)  # (b, C, H, W), (b, num_ws, w_dim)
        noise = torch.randn_like(images) if draws is None else draws.normal(batch, *images.shape[1:]).to(images)
        pl_noise = noise / math.sqrt(images.shape[2] * images.shape[3])
        (grads,) = torch.autograd.grad(outputs=[(images.float() * pl_noise.float()).sum()], inputs=[ws],
                                       create_graph=True)
        lengths = grads.float().square().sum(dim=2).mean(dim=1).sqrt()  # (b,)
        if self.pl_mean.device != lengths.device:
            self.pl_mean = self.pl_mean.to(lengths.device)
        mean_length = lengths.mean() if reduce_mean is None else reduce_mean(lengths.mean().detach())
        pl_mean = self.pl_mean.lerp(mean_length, self.pl_decay)  # 0-dim (the reference keeps it in the graph)
        self.pl_mean.copy_(pl_mean.detach())
        penalty = (lengths - pl_mean).square()  # (b,)
        loss = (images[:, 0, 0, 0] * 0 + penalty * self.pl_weight).mean()
        stats = {"pl_penalty": penalty.mean().detach(), "pl_length": lengths.mean().detach(),
                 "pl_mean": pl_mean.detach()}
        return loss, stats


# ----------------------------------------------------------------------------------------------------------
# Builders (registered by gan_dist.models)


def build_generator(model: ModelConfig, options: StyleGAN2Options | None, image_shape: tuple[int, int, int],
                    num_classes: int) -> StyleGAN2Generator:
    """G for model.name=stylegan2: z of model.latent_dim, channel_max model.g_width (None: 512), conditioning
    model.conditioning. model.g_norm is ignored (StyleGAN2 normalizes by demodulation)."""
    width = DEFAULT_G_WIDTH if model.g_width is None else model.g_width
    return StyleGAN2Generator(model.latent_dim, width, image_shape, num_classes, model.conditioning, options)


def build_discriminator(model: ModelConfig, options: StyleGAN2Options | None, image_shape: tuple[int, int, int],
                        num_classes: int) -> StyleGAN2Discriminator:
    """D for model.name=stylegan2: channel_max model.d_width (None: 512). model.d_dropout and model.d_norm
    are ignored (the reference has neither); model.spectral_norm is refused."""
    if model.spectral_norm:
        raise ConfigError("key 'model.spectral_norm': stylegan2's D uses equalized learning rate and R1, not "
                          "spectral normalization; set model.spectral_norm=false")
    width = DEFAULT_D_WIDTH if model.d_width is None else model.d_width
    return StyleGAN2Discriminator(width, image_shape, num_classes, model.conditioning, options)


def build_g_regularizer(model: ModelConfig, options: StyleGAN2Options) -> PathLengthPenalty | None:
    """G's lazy path-length regularization (model.options.pl_weight, 0 = off), for the step to apply."""
    return PathLengthPenalty.from_options(options) if options.pl_weight > 0 else None
