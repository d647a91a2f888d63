"""dcgan (Radford et al. 2015 at 28x28): shapes, BN placement, N(0, 0.02) init, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_dist.config import ModelConfig
from gan_dist.models.build import build_models
from gan_dist.models.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_dist.registry.datasets import MNIST
from tests.models.shapes import output_shapes

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)
DROPOUT = 0.0

BN_TYPES = nn.modules.batchnorm._BatchNorm


def test_layer_shapes() -> None:
    g = DCGANGenerator(latent_dim=100, width=64, image_shape=MNIST_SHAPE)
    assert output_shapes(g, torch.randn(2, 100), ["project", "up1", "up2"]) == {
        "project": (2, 256, 7, 7), "up1": (2, 128, 14, 14), "up2": (2, 1, 28, 28)}
    d = DCGANDiscriminator(width=64, image_shape=MNIST_SHAPE, dropout=0.0)
    assert output_shapes(d, torch.randn(2, 1, 28, 28), ["conv1", "conv2", "head"]) == {
        "conv1": (2, 64, 14, 14), "conv2": (2, 128, 7, 7), "head": (2, 1, 1, 1)}


def test_parameter_counts() -> None:
    g, d = build_models(ModelConfig(name="dcgan"), MNIST_SHAPE)
    g_expected = 100 * 256 * 49 + 256 * 128 * 16 + 128 * 16 + 1 + 2 * (256 + 128)  # convs (no bias before BN) + BN
    d_expected = (16 * 64 + 64) + 64 * 128 * 16 + 2 * 128 + (128 * 49 + 1)
    assert sum(p.numel() for p in g.parameters()) == g_expected == 1_781_505
    assert sum(p.numel() for p in d.parameters()) == d_expected == 138_689


def test_batch_norm_placement_and_biases() -> None:
    g, d = build_models(ModelConfig(name="dcgan"), MNIST_SHAPE)
    assert [m.num_features for m in g.modules() if isinstance(m, BN_TYPES)] == [256, 128]  # none on the output
    assert [m.num_features for m in d.modules() if isinstance(m, BN_TYPES)] == [128]  # none on the input layer
    assert g.project.bias is None and g.up1.bias is None and g.up2.bias is not None
    assert d.conv1.bias is not None and d.conv2.bias is None and d.head.bias is not None
    g, d = build_models(ModelConfig(name="dcgan", g_norm="none", d_norm="none"), MNIST_SHAPE)
    assert not any(isinstance(m, BN_TYPES) for m in [*g.modules(), *d.modules()])
    assert g.project.bias is not None and d.conv2.bias is not None


def test_normal_init() -> None:
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="dcgan"), MNIST_SHAPE)
    convs = [m for m in [*g.modules(), *d.modules()] if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 6
    for conv in convs:
        w = conv.weight
        if w.numel() >= 10_000:
            assert abs(w.mean().item()) < 1e-3
            assert w.std().item() == pytest.approx(0.02, rel=0.03)
        if conv.bias is not None:
            assert torch.count_nonzero(conv.bias) == 0
    for bn in [m for m in [*g.modules(), *d.modules()] if isinstance(m, BN_TYPES)]:
        assert bn.weight.mean().item() == pytest.approx(1.0, abs=0.01)
        assert 0.01 < bn.weight.std().item() < 0.03
        assert torch.count_nonzero(bn.bias) == 0


def test_dropout_off_by_default() -> None:
    _, d = build_models(ModelConfig(name="dcgan"), MNIST_SHAPE)
    assert not any(isinstance(m, nn.Dropout) for m in d.modules())
    _, d = build_models(ModelConfig(name="dcgan", d_dropout=0.5), MNIST_SHAPE)
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]


def test_radford_64x64_architecture() -> None:
    """At 64x64x3 and the default width 64 this is the paper's network: G 1024 -> 512 -> 256 -> 128 -> 3
    from 4x4, D 64 -> 128 -> 256 -> 512 to 4x4, then one logit."""
    g = DCGANGenerator(latent_dim=100, width=64, image_shape=(3, 64, 64))
    assert output_shapes(g, torch.randn(2, 100), ["project", "up1", "up2", "up3", "up4"]) == {
        "project": (2, 1024, 4, 4), "up1": (2, 512, 8, 8), "up2": (2, 256, 16, 16), "up3": (2, 128, 32, 32),
        "up4": (2, 3, 64, 64)}
    assert [m.num_features for m in g.modules() if isinstance(m, BN_TYPES)] == [1024, 512, 256, 128]
    d = DCGANDiscriminator(width=64, image_shape=(3, 64, 64), dropout=DROPOUT)
    assert output_shapes(d, torch.randn(2, 3, 64, 64), ["conv1", "conv2", "conv3", "conv4", "head"]) == {
        "conv1": (2, 64, 32, 32), "conv2": (2, 128, 16, 16), "conv3": (2, 256, 8, 8), "conv4": (2, 512, 4, 4),
        "head": (2, 1, 1, 1)}
    assert [m.num_features for m in d.modules() if isinstance(m, BN_TYPES)] == [128, 256, 512]
    assert d.feature_dim == 512 * 4 * 4


def test_layer_shapes_at_32x32x3() -> None:
    g = DCGANGenerator(latent_dim=100, width=8, image_shape=(3, 32, 32))
    assert output_shapes(g, torch.randn(2, 100), ["project", "up1", "up2", "up3"]) == {
        "project": (2, 64, 4, 4), "up1": (2, 32, 8, 8), "up2": (2, 16, 16, 16), "up3": (2, 3, 32, 32)}
    d = DCGANDiscriminator(width=8, image_shape=(3, 32, 32), dropout=DROPOUT)
    assert output_shapes(d, torch.randn(2, 3, 32, 32), ["conv1", "conv2", "conv3", "head"]) == {
        "conv1": (2, 8, 16, 16), "conv2": (2, 16, 8, 8), "conv3": (2, 32, 4, 4), "head": (2, 1, 1, 1)}


def test_layer_norm_replaces_batch_norm_in_d_without_conv_biases() -> None:
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="dcgan", d_norm="layer"), MNIST_SHAPE)
    groups = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert [(m.num_groups, m.num_channels) for m in groups] == [(1, 128)]
    assert d.conv2.bias is None  # the norm's beta replaces it, as with BN
    assert groups[0].weight.mean().item() == pytest.approx(1.0, abs=0.01) and 0.01 < groups[0].weight.std() < 0.03
    assert [m.num_features for m in g.modules() if isinstance(m, BN_TYPES)] == [256, 128]
