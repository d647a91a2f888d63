"""resnet_sngan (Miyato et al. 2018, after pfnet-research/sngan_projection): forward and backward at every
size, the channel tables, the reference parameter counts, spectral norm, conditional BN, init, determinism,
gradient penalties and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models import resnet_sngan
from gan_dist.models.resnet_blocks import CategoricalBatchNorm2d
from gan_dist.models.resnet_sngan import (
    ResNetSNGANDiscriminator,
    ResNetSNGANGenerator,
    ResNetSNGANOptions,
    build_discriminator,
    build_generator,
)
from tests.models.shapes import output_shapes

K = 10
LATENT = 8
SIZES = (28, 32, 48, 64, 96, 128, 256)
WEIGHT_TYPES = (nn.Conv2d, nn.Linear, nn.Embedding)
BN_TYPES = nn.modules.batchnorm._BatchNorm
# Every size unconditional in 1 channel and projection in 3; the other modes at a few sizes.
CASES = ([(size, 1, "none") for size in SIZES] + [(size, 3, "projection") for size in SIZES]
         + [(32, 3, "acgan"), (32, 1, "concat"), (28, 1, "acgan"), (48, 3, "concat")])


def tiny(image_shape: tuple[int, int, int], conditioning: str = "none", seed: int = 0, width: int = 4,
         **model_kwargs) -> tuple[ResNetSNGANGenerator, ResNetSNGANDiscriminator]:
    torch.manual_seed(seed)
    model = ModelConfig(name="resnet_sngan", latent_dim=LATENT, g_width=width, d_width=width,
                        conditioning=conditioning, **model_kwargs)
    options = ResNetSNGANOptions()
    return (build_generator(model, options, image_shape, K),  # type: ignore[return-value]
            build_discriminator(model, options, image_shape, K))


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % K


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("size", "channels", "conditioning"), CASES)
def test_forward_backward_reaches_every_parameter(size: int, channels: int, conditioning: str) -> None:
    g, d = tiny((channels, size, size), conditioning)
    y = labels(2)
    images = g(torch.randn(2, LATENT), y)
    assert images.shape == (2, channels, size, size)
    assert images.abs().max() <= 1  # tanh
    out = d(images, y)
    if conditioning == "acgan":
        logits, class_logits = out
        assert class_logits.shape == (2, K)
        loss = logits.sum() + class_logits.sum()
    else:
        logits, loss = out, out.sum()
    assert logits.shape == (2,) and logits.isfinite().all()
    loss.backward()
    for name, p in [*g.named_parameters(prefix="G"), *d.named_parameters(prefix="D")]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if conditioning == "concat":
        assert d.blocks[0].conv1.in_channels == channels + K  # the label maps enter with the image
    if conditioning in ("acgan", "projection"):
        assert hasattr(d, "class_head" if conditioning == "acgan" else "embed")


def test_cifar_layer_shapes() -> None:
    """The SNGAN paper's CIFAR-10 networks (w 256 / 128 at full width; 8 here): G 4x4 -> 32x32 at constant
    width, D down twice then two blocks at 8x8, global sum pooling."""
    g, d = tiny((3, 32, 32), width=8)
    assert output_shapes(g, torch.randn(2, LATENT), ["blocks.0", "blocks.1", "blocks.2", "conv_out"]) == {
        "blocks.0": (2, 8, 8, 8), "blocks.1": (2, 8, 16, 16), "blocks.2": (2, 8, 32, 32), "conv_out": (2, 3, 32, 32)}
    assert output_shapes(d, torch.randn(2, 3, 32, 32), [f"blocks.{i}" for i in range(4)] + ["linear"]) == {
        "blocks.0": (2, 8, 16, 16), "blocks.1": (2, 8, 8, 8), "blocks.2": (2, 8, 8, 8), "blocks.3": (2, 8, 8, 8),
        "linear": (2, 1)}
    assert d.linear.bias is None  # snresnet_32.py: nobias=True
    assert [b.conv1.out_channels for b in d.blocks] == [8, 8, 8, 8]


@pytest.mark.parametrize(("size", "g_channels", "d_channels", "d_last_side"), [
    (28, [1, 1, 1], [1, 1, 1, 1], 7),  # the CIFAR table with two up-blocks from 7x7
    (48, [8, 4, 2, 1], [1, 2, 4, 8, 16], 3),  # STL-10
    (64, [16, 8, 4, 2, 1], [1, 2, 4, 8, 16], 2),
    (96, [16, 8, 4, 2, 1], [1, 2, 4, 8, 16], 3),  # the 64 px table from 6x6
    (128, [16, 16, 8, 4, 2, 1], [1, 2, 4, 8, 16, 16], 4),
    (256, [16, 16, 8, 8, 4, 2, 1], [1, 2, 4, 8, 8, 16, 16], 4),
])
def test_channel_tables(size: int, g_channels: list[int], d_channels: list[int], d_last_side: int) -> None:
    g, d = tiny((3, size, size), width=2)
    assert [g.linear.out_features // g.base_size**2] + [b.conv2.out_channels for b in g.blocks] == \
        [2 * m for m in g_channels]
    assert [b.conv2.out_channels for b in d.blocks] == [2 * m for m in d_channels]
    # Thin D: the hidden width of every block but the first is its input width.
    assert [b.conv1.out_channels for b in d.blocks[1:]] == [2 * m for m in d_channels[:-1]]
    shapes = output_shapes(d, torch.randn(2, 3, size, size), [f"blocks.{len(d.blocks) - 1}"])
    assert shapes[f"blocks.{len(d.blocks) - 1}"][2:] == (d_last_side, d_last_side)


@pytest.fixture
def no_spectral_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip spectral norm's registration (15 power iterations per layer: seconds on the meta device). It
    adds buffers, not parameters: test_spectral_norm_adds_no_parameters."""
    monkeypatch.setattr(resnet_sngan, "apply_spectral_norm", lambda module: None)


# (image shape, G ch, D ch, classes, conditioning) -> (G, D) parameter counts of sngan_projection's chainer
# models built with the same settings (latent 128; STL-10: the paper's Table 5 built from the official blocks,
# equal to kwotsin/mimicry's sngan_48).
REFERENCE_COUNTS = [
    ((3, 32, 32), 256, 128, 0, "none", 4_276_739, 1_053_824),  # resnet_32 / snresnet_32
    ((3, 32, 32), 256, 128, 10, "projection", 4_304_387, 1_055_104),
    ((3, 48, 48), 64, 64, 0, "none", 4_878_083, 10_141_441),
    ((3, 48, 48), 64, 64, 10, "projection", 4_902_275, 10_151_681),
    ((3, 64, 64), 64, 64, 1000, "projection", 17_974_915, 11_165_441),  # resnet_64 / snresnet_64
    ((3, 128, 128), 64, 64, 1000, "projection", 41_996_931, 30_041_857),  # resnet / snresnet
]


@pytest.mark.usefixtures("no_spectral_norm")
@pytest.mark.parametrize(("shape", "g_width", "d_width", "classes", "conditioning", "g_count", "d_count"),
                         REFERENCE_COUNTS)
def test_parameter_counts_equal_the_reference(shape: tuple[int, int, int], g_width: int, d_width: int,
                                              classes: int, conditioning: str, g_count: int, d_count: int) -> None:
    with torch.device("meta"):
        g = ResNetSNGANGenerator(128, g_width, shape, classes, conditioning)
        d = ResNetSNGANDiscriminator(d_width, shape, classes, conditioning)
    assert (parameter_count(g), parameter_count(d)) == (g_count, d_count)


def test_defaults_are_the_cifar_widths() -> None:
    assert (resnet_sngan.DEFAULT_G_WIDTH, resnet_sngan.DEFAULT_D_WIDTH) == (256, 128)
    assert resnet_sngan.reference_widths((3, 32, 32)) == (256, 128)
    assert resnet_sngan.reference_widths((3, 48, 48)) == (64, 64)
    model = ModelConfig(name="resnet_sngan", latent_dim=LATENT, g_width=None, d_width=None)
    g = build_generator(model, ResNetSNGANOptions(), (1, 28, 28), 0)
    assert g.blocks[0].conv1.out_channels == 256


def test_spectral_norm_on_every_d_weight_and_not_in_g() -> None:
    for conditioning in ("projection", "acgan"):
        g, d = tiny((3, 32, 32), conditioning)
        layers = [m for m in d.modules() if isinstance(m, WEIGHT_TYPES)]
        # 2 convs per block, the shortcut convs of the two downsampling blocks, linear, embed or class head
        assert len(layers) == 4 * 2 + 2 + 1 + 1
        assert all(parametrize.is_parametrized(m, "weight") for m in layers)
        assert not any(parametrize.is_parametrized(m) for m in g.modules())
    # model.spectral_norm=False does not turn it off: the paper's D always has it.
    _, d = tiny((1, 28, 28), spectral_norm=False)
    assert all(parametrize.is_parametrized(m, "weight") for m in d.modules() if isinstance(m, WEIGHT_TYPES))


def test_spectral_norm_adds_no_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    _, with_sn = tiny((3, 32, 32), "projection")
    monkeypatch.setattr(resnet_sngan, "apply_spectral_norm", lambda module: None)
    _, without = tiny((3, 32, 32), "projection")
    assert parameter_count(with_sn) == parameter_count(without)
    assert not any(parametrize.is_parametrized(m) for m in without.modules())  # the patch did apply


def test_d_has_no_batchnorm_and_g_norm_choice() -> None:
    g, d = tiny((3, 32, 32), "projection")
    assert not any(isinstance(m, BN_TYPES) for m in d.modules())
    assert len([m for m in g.modules() if isinstance(m, CategoricalBatchNorm2d)]) == 6  # 2 per block
    assert isinstance(g.bn, nn.BatchNorm2d)  # the output BN is unconditional
    assert g.bn.eps == 2e-5
    g, _ = tiny((3, 32, 32), g_norm="none")
    assert not any(isinstance(m, BN_TYPES) for m in g.modules())
    with pytest.raises(ConfigError, match="model.g_norm"):
        tiny((3, 32, 32), g_norm="layer")


def xavier_std(weight: torch.Tensor, gain: float) -> float:
    fan_in, fan_out = weight.shape[1] * weight[0, 0].numel(), weight.shape[0] * weight[0, 0].numel()
    return gain * math.sqrt(6 / (fan_in + fan_out)) / math.sqrt(3)  # U(-a, a) has std a / sqrt(3)


def test_xavier_init_with_residual_gain() -> None:
    """The reference's GlorotUniform: sqrt(2) in residual branches, 1 for shortcuts and the rest; zero
    biases; the CBN tables start at gamma 1, beta 0."""
    g, d = tiny((3, 32, 32), "projection", width=64)
    block = g.blocks[1]
    for weight, gain in [(block.conv1.weight, math.sqrt(2)), (block.conv2.weight, math.sqrt(2)),
                         (block.conv_sc.weight, 1.0), (g.linear.weight, 1.0)]:
        assert weight.std().item() == pytest.approx(xavier_std(weight, gain), rel=0.05)
    conv1 = d.blocks[1].conv1.parametrizations.weight.original
    assert conv1.std().item() == pytest.approx(xavier_std(conv1, math.sqrt(2)), rel=0.05)
    biases = [m.bias for m in [*g.modules(), *d.modules()] if isinstance(m, (nn.Conv2d, nn.Linear))
              and m.bias is not None]
    assert biases and all(torch.count_nonzero(b) == 0 for b in biases)
    assert torch.equal(g.blocks[0].bn1.gamma.weight, torch.ones(K, 64))
    assert torch.equal(g.blocks[0].bn1.beta.weight, torch.zeros(K, 64))


def test_conditional_g_follows_the_label_and_unconditional_ignores_it() -> None:
    g, _ = tiny((3, 32, 32), "projection")
    g.eval()
    with torch.no_grad():
        for bn in [m for m in g.modules() if isinstance(m, CategoricalBatchNorm2d)]:
            bn.gamma.weight.normal_(1.0, 0.3)  # the tables start equal for every class
        z = torch.randn(1, LATENT).expand(2, -1)
        images = g(z, torch.tensor([0, 1]))
    assert not torch.allclose(images[0], images[1])
    with pytest.raises(ValueError, match="labels"):
        g(z)
    g, _ = tiny((3, 32, 32), "none")
    g.eval()
    with torch.no_grad():
        assert torch.equal(g(z, torch.tensor([0, 1]))[0], g(z, torch.tensor([0, 1]))[1])


def test_same_seed_same_models_and_outputs() -> None:
    g1, d1 = tiny((3, 32, 32), "projection", seed=3)
    g2, d2 = tiny((3, 32, 32), "projection", seed=3)
    g3, _ = tiny((3, 32, 32), "projection", seed=4)
    for a, b in [(g1, g2), (d1, d2)]:
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    torch.manual_seed(0)
    z, y = torch.randn(2, LATENT), labels(2)
    assert torch.equal(d1(g1(z, y), y), d2(g2(z, y), y))
    assert not torch.equal(g1(z, y), g3(z, y))


def test_gradient_penalty_double_backward() -> None:
    """WGAN-GP / R1 through D (no BatchNorm, so per-sample gradients): the penalty's second-order term
    reaches every D weight."""
    _, d = tiny((3, 32, 32), "projection")
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(d(x, labels(4)).sum(), x, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    penalty.backward()
    for name, p in d.named_parameters():
        if name != "linear.bias":  # absent here (snresnet_32's linear has none)
            assert p.grad is not None and p.grad.isfinite().all(), name
    originals = [m.parametrizations.weight.original.grad for m in d.modules() if parametrize.is_parametrized(m)]
    assert all(g.abs().sum() > 0 for g in originals)


def test_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="data.image_size"):
        tiny((3, 512, 512))
    with pytest.raises(ConfigError, match="data.image_size"):
        tiny((3, 30, 30))  # not a multiple of 4 (base.conv_stages)
    with pytest.raises(ConfigError, match="model.g_width"):
        ResNetSNGANGenerator(LATENT, 0, (3, 32, 32))
    with pytest.raises(ConfigError, match="model.conditioning"):
        ResNetSNGANDiscriminator(4, (3, 32, 32), 0, "projection")  # conditional on unlabeled data
