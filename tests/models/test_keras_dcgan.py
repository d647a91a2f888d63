"""keras_dcgan against the Keras tutorial: parameter counts, layer shapes, padding, BN and init semantics;
then its adaptation to other image sizes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.build import build_models
from gan_dist.models.keras_dcgan import (
    Conv2dSame,
    KerasDCGANDiscriminator,
    KerasDCGANGenerator,
    downsampling_plan,
    keras_same_padding,
)
from gan_dist.registry.datasets import MNIST
from tests.models.shapes import output_shapes

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)
DROPOUT = 0.25  # the Keras tutorial's

BN_TYPES = nn.modules.batchnorm._BatchNorm


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def keras_count(module: nn.Module) -> int:
    """Keras's total: parameters plus BN moving mean/var (not PyTorch's num_batches_tracked)."""
    running = sum(b.numel() for name, b in module.named_buffers()
                  if name.endswith(("running_mean", "running_var")))
    return trainable_count(module) + running


def test_parameter_counts_equal_keras_summary() -> None:
    g, d = build_models(ModelConfig(name="keras_dcgan"), MNIST_SHAPE)
    assert trainable_count(g) == 855_809
    assert trainable_count(d) == 392_833
    assert keras_count(g) == 856_193
    assert keras_count(d) == 393_729


def test_norm_none_removes_bn_and_keeps_conv_biases() -> None:
    g, d = build_models(ModelConfig(name="keras_dcgan", g_norm="none", d_norm="none"), MNIST_SHAPE)
    assert not any(isinstance(m, BN_TYPES) for m in [*g.modules(), *d.modules()])
    # BN params (gamma, beta) gone: G 2 x (128 + 64), D 2 x (64 + 128 + 256).
    assert trainable_count(g) == 855_809 - 2 * (128 + 64)
    assert trainable_count(d) == 392_833 - 2 * (64 + 128 + 256)
    assert all(m.bias is not None for m in [*g.modules(), *d.modules()] if isinstance(m, nn.Conv2d))
    x = g(torch.randn(1, 100))  # batch of one is fine without BN
    assert d(x).shape == (1,)


def test_layer_shapes_follow_the_keras_reference() -> None:
    g = KerasDCGANGenerator(latent_dim=100, width=128, image_shape=MNIST_SHAPE)
    shapes = output_shapes(g, torch.randn(2, 100), ["fc", "conv1", "conv2", "conv_out"])
    assert shapes == {"fc": (2, 128 * 7 * 7), "conv1": (2, 128, 14, 14), "conv2": (2, 64, 28, 28),
                      "conv_out": (2, 1, 28, 28)}
    d = KerasDCGANDiscriminator(width=32, image_shape=MNIST_SHAPE, dropout=0.25)
    shapes = output_shapes(d, torch.randn(2, 1, 28, 28), ["conv1", "conv2", "pad2", "conv3", "conv4", "fc"])
    assert shapes == {"conv1": (2, 32, 14, 14), "conv2": (2, 64, 7, 7), "pad2": (2, 64, 8, 8),
                      "conv3": (2, 128, 4, 4), "conv4": (2, 256, 4, 4), "fc": (2, 1)}


def test_widths_scale_channels() -> None:
    g, d = build_models(ModelConfig(name="keras_dcgan", latent_dim=16, g_width=64, d_width=8), MNIST_SHAPE)
    assert (g.fc.in_features, g.fc.out_features) == (16, 64 * 49)
    assert (g.conv1.out_channels, g.conv2.out_channels, g.conv_out.out_channels) == (64, 32, 1)
    assert [d.conv1.out_channels, d.conv2.out_channels, d.conv3.out_channels, d.conv4.out_channels] == [8, 16, 32, 64]
    assert d.fc.in_features == 64 * 4 * 4
    with pytest.raises(ValueError, match="width"):
        KerasDCGANGenerator(latent_dim=100, width=1, image_shape=MNIST_SHAPE)


@pytest.mark.parametrize(("size", "kernel", "stride", "expected"), [
    (28, 3, 2, (0, 1)),  # D conv1: 28 -> 14, extra pad at the bottom/right
    (14, 3, 2, (0, 1)),  # D conv2: 14 -> 7
    (8, 3, 2, (0, 1)),   # D conv3 after ZeroPadding2D: 8 -> 4
    (7, 3, 2, (1, 1)),   # odd input: symmetric in TensorFlow too
    (28, 3, 1, (1, 1)),  # stride-1 3x3 'same' is symmetric
    (4, 3, 1, (1, 1)),
])
def test_keras_same_padding_rule(size: int, kernel: int, stride: int, expected: tuple[int, int]) -> None:
    assert keras_same_padding(size, kernel, stride) == expected
    out = math.ceil(size / stride)
    assert (size + sum(expected) - kernel) // stride + 1 == out


def _delta_kernel(conv: nn.Conv2d, row: int, col: int) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, row, col] = 1.0
        conv.bias.zero_()


def test_stride2_same_padding_is_bottom_right_in_discriminator_first_conv() -> None:
    d = KerasDCGANDiscriminator(width=1, image_shape=MNIST_SHAPE, dropout=0.25)
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    # A kernel that picks its top-left tap: with no top/left padding, output[i, j] = x[2i, 2j].
    _delta_kernel(d.conv1, 0, 0)
    with torch.no_grad():
        out = d.conv1(x)
    assert out.shape == (1, 1, 14, 14)
    torch.testing.assert_close(out, x[:, :, ::2, ::2])
    # PyTorch's symmetric padding=1 would read x[2i - 1, 2j - 1] instead (0 in the first row/column).
    symmetric = nn.functional.conv2d(x, d.conv1.weight, None, stride=2, padding=1)
    assert symmetric.shape == out.shape and not torch.equal(symmetric, out)
    # Its bottom-right tap reads x[2i + 2, 2j + 2]: the last row/column come from the bottom/right padding.
    _delta_kernel(d.conv1, 2, 2)
    with torch.no_grad():
        out = d.conv1(x)
    torch.testing.assert_close(out[:, :, :13, :13], x[:, :, 2::2, 2::2])
    assert out[0, 0, 13, :].abs().sum() == 0 and out[0, 0, :, 13].abs().sum() == 0


def test_stride1_same_padding_is_symmetric() -> None:
    conv = Conv2dSame(1, 1, 3)
    _delta_kernel(conv, 0, 0)
    x = torch.randn(1, 1, 7, 7)
    with torch.no_grad():
        out = conv(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, :, 1:, 1:], x[:, :, :-1, :-1])  # top-left tap, one pixel up-left
    assert out[0, 0, 0, :].abs().sum() == 0


def test_zero_padding_after_second_conv_adds_bottom_right_zeros() -> None:
    d = KerasDCGANDiscriminator(width=2, image_shape=MNIST_SHAPE, dropout=0.25)
    captured: dict[str, torch.Tensor] = {}
    d.pad2.register_forward_hook(lambda _m, _i, out: captured.__setitem__("pad2", out))
    with torch.no_grad():
        d(torch.randn(3, 1, 28, 28) + 5.0)  # shift so conv outputs are non-zero almost surely
    padded = captured["pad2"]
    assert padded.shape[-2:] == (8, 8)
    assert padded[..., 7, :].abs().sum() == 0 and padded[..., :, 7].abs().sum() == 0
    assert padded[..., :7, :7].abs().sum() > 0


def test_batch_norm_uses_keras_momentum_and_epsilon() -> None:
    g, d = build_models(ModelConfig(name="keras_dcgan"), MNIST_SHAPE)
    bns = [m for m in [*g.modules(), *d.modules()] if isinstance(m, BN_TYPES)]
    assert len(bns) == 2 + 3
    assert all(m.momentum == pytest.approx(0.2) and m.eps == pytest.approx(1e-3) for m in bns)
    # Keras momentum 0.8 keeps 0.8 of the old statistic: from 0, one step gives 0.2 x the batch mean.
    bn = g.bn1
    x = torch.randn(4, 128, 14, 14) * 3 + 1.5
    bn.train()
    bn(x)
    torch.testing.assert_close(bn.running_mean, 0.2 * x.mean(dim=(0, 2, 3)))


def test_glorot_uniform_kernels_and_zero_biases() -> None:
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="keras_dcgan"), MNIST_SHAPE)
    layers = [m for m in [*g.modules(), *d.modules()] if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert len(layers) == 4 + 5
    for layer in layers:
        w = layer.weight
        if isinstance(layer, nn.Conv2d):  # Keras kernel (kh, kw, in, out)
            kh, kw = layer.kernel_size
            fan_in, fan_out = kh * kw * layer.in_channels, kh * kw * layer.out_channels
        else:  # Keras kernel (in, out)
            fan_in, fan_out = layer.in_features, layer.out_features
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert torch.count_nonzero(layer.bias) == 0
        assert w.abs().max() <= bound
        if w.numel() >= 10_000:  # U(-b, b): std b / sqrt(3), and the extremes come close to b
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
            assert w.abs().max() > 0.99 * bound
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0
               for m in [*g.modules(), *d.modules()] if isinstance(m, BN_TYPES))


def test_dropout_follows_config() -> None:
    _, d = build_models(ModelConfig(name="keras_dcgan"), MNIST_SHAPE)
    drops = [m for m in d.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 4 and all(m.p == 0.25 for m in drops)
    _, d = build_models(ModelConfig(name="keras_dcgan", d_dropout=0.0), MNIST_SHAPE)
    assert not any(isinstance(m, nn.Dropout) for m in d.modules())


# Other image sizes (the tutorial is MNIST-only; these follow the rule documented in keras_dcgan.py).

def test_layer_shapes_at_32x32x3() -> None:
    g = KerasDCGANGenerator(latent_dim=100, width=128, image_shape=(3, 32, 32))
    shapes = output_shapes(g, torch.randn(2, 100), ["fc", "conv1", "conv2", "conv3", "conv_out"])
    assert shapes == {"fc": (2, 128 * 4 * 4), "conv1": (2, 128, 8, 8), "conv2": (2, 64, 16, 16),
                      "conv3": (2, 32, 32, 32), "conv_out": (2, 3, 32, 32)}
    d = KerasDCGANDiscriminator(width=32, image_shape=(3, 32, 32), dropout=DROPOUT)
    shapes = output_shapes(d, torch.randn(2, 3, 32, 32), ["conv1", "conv2", "conv3", "conv4", "fc"])
    assert shapes == {"conv1": (2, 32, 16, 16), "conv2": (2, 64, 8, 8), "conv3": (2, 128, 4, 4),
                      "conv4": (2, 256, 4, 4), "fc": (2, 1)}
    assert not any(isinstance(m, nn.ZeroPad2d) for m in d.modules())  # no odd map to pad
    # Parameters by hand: Dense, 3 conv stages (128, 64, 32) + BN, conv to RGB.
    g_expected = (100 * 128 * 16 + 128 * 16) + (128 * 128 * 9 + 128) + (128 * 64 * 9 + 64) + (64 * 32 * 9 + 32) \
        + 2 * (128 + 64 + 32) + (32 * 3 * 9 + 3)
    assert trainable_count(g) == g_expected == 448_003


def test_layer_shapes_at_64x64x3() -> None:
    g = KerasDCGANGenerator(latent_dim=100, width=128, image_shape=(3, 64, 64))
    shapes = output_shapes(g, torch.randn(2, 100), ["fc", "conv1", "conv4", "conv_out"])
    assert shapes == {"fc": (2, 128 * 4 * 4), "conv1": (2, 128, 8, 8), "conv4": (2, 16, 64, 64),
                      "conv_out": (2, 3, 64, 64)}
    d = KerasDCGANDiscriminator(width=32, image_shape=(3, 64, 64), dropout=DROPOUT)
    shapes = output_shapes(d, torch.randn(2, 3, 64, 64), ["conv1", "conv4", "conv5", "fc"])
    assert shapes == {"conv1": (2, 32, 32, 32), "conv4": (2, 256, 4, 4), "conv5": (2, 512, 4, 4), "fc": (2, 1)}
    assert [m.num_features for m in d.modules() if isinstance(m, BN_TYPES)] == [64, 128, 256, 512]
    with pytest.raises(ConfigError, match="model.g_width"):  # 4 stages halve the width 3 times
        KerasDCGANGenerator(latent_dim=100, width=4, image_shape=(3, 64, 64))


@pytest.mark.parametrize(("size", "plan"), [
    (28, [(14, False), (7, True), (4, False)]),  # the tutorial: ZeroPadding2D after the second conv
    (32, [(16, False), (8, False), (4, False)]),
    (64, [(32, False), (16, False), (8, False), (4, False)]),
    (20, [(10, False), (5, True), (3, False)]),
    (36, [(18, False), (9, True), (5, True), (3, False)]),
])
def test_discriminator_downsampling_plan(size: int, plan: list[tuple[int, bool]]) -> None:
    assert downsampling_plan(size) == plan
    d = KerasDCGANDiscriminator(width=2, image_shape=(1, size, size), dropout=0.0)
    pads = [name for name, m in d.named_modules() if isinstance(m, nn.ZeroPad2d)]
    assert pads == [f"pad{i}" for i, (_, padded) in enumerate(plan, start=1) if padded]
    last = plan[-1][0]
    assert d.fc.in_features == 2 * 2 ** len(plan) * last * last
    assert d(torch.randn(2, 1, size, size)).shape == (2,)


def test_layer_norm_uses_keras_epsilon() -> None:
    _, d = build_models(ModelConfig(name="keras_dcgan", d_norm="layer"), MNIST_SHAPE)
    groups = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert [m.num_channels for m in groups] == [64, 128, 256]
    assert all(m.num_groups == 1 and m.eps == pytest.approx(1e-3) for m in groups)
    assert trainable_count(d) == 392_833  # GroupNorm's gamma/beta replace BN's, one pair per channel
