"""Class conditioning (model.conditioning): the label inputs of concat, the ACGAN class head, the
projection discriminator's math, and the errors for missing labels or unlabeled data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.build import build_discriminator, build_generator, build_models
from gan_dist.registry.datasets import MNIST

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)

K = 10
SMALL = {"keras_dcgan": (16, 8), "dcgan": (8, 8), "mlp": (16, 16), "stylegan2": (16, 16), "resnet_sngan": (8, 8),
         "biggan": (8, 8)}
# The seed architectures, whose internals these tests read (G's one-hot input, D's last layer by name); every
# architecture's contract (shapes, conditioning modes, gradients) is tests/registry/test_registries.py's.
SEED_ARCHITECTURES = ("keras_dcgan", "dcgan", "mlp")
# Architecture options that keep the small models small (model.options).
SMALL_OPTIONS = {"stylegan2": {"w_dim": 16, "mapping_layers": 2, "channel_base": 512}}
SHAPES = [(1, 28, 28), (3, 32, 32)]


def models(name: str, conditioning: str, image_shape=(1, 28, 28), **kwargs) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    g_width, d_width = SMALL[name]
    kwargs.setdefault("options", SMALL_OPTIONS.get(name, {}))
    config = ModelConfig(name=name, g_width=g_width, d_width=d_width, d_dropout=0.0, conditioning=conditioning,
                         **kwargs)
    g, d = build_models(config, image_shape, K)
    return g.eval(), d.eval()  # eval: no batch statistics, so each sample is computed alone


def linear_head(d: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """D's unconditional last layer as (weight (F,), bias ()), read from the parameters by hand."""
    layer = {"KerasDCGANDiscriminator": "fc", "DCGANDiscriminator": "head", "MLPDiscriminator": "fc_out"}
    module = getattr(d, layer[type(d).__name__])
    return module.weight.reshape(-1), module.bias.reshape(())  # the dcgan head conv covers the whole map


def first_layer_inputs(module: nn.Module) -> int:
    first = next(m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)))
    return first.in_features if isinstance(first, nn.Linear) else first.in_channels


@pytest.mark.parametrize("conditioning", ["concat", "acgan", "projection"])
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_conditioning_on_unlabeled_data_is_a_config_error(name: str, conditioning: str) -> None:
    for build in (build_generator, build_discriminator, build_models):
        with pytest.raises(ConfigError) as error:
            build(ModelConfig(name=name, conditioning=conditioning), (1, 28, 28), 0)
        message = str(error.value)
        assert "model.conditioning" in message and "data.dataset" in message
        assert "needs class labels, but the dataset has none" in message
    with pytest.raises(ConfigError, match="model.conditioning"):
        build_generator(ModelConfig(name=name, conditioning=conditioning), MNIST_SHAPE)  # num_classes defaults to 0


@pytest.mark.parametrize("conditioning", ["concat", "acgan", "projection"])
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_conditional_models_refuse_missing_or_malformed_labels(name: str, conditioning: str) -> None:
    g, d = models(name, conditioning)
    z, x = torch.randn(3, 100), torch.rand(3, 1, 28, 28)
    with pytest.raises(ValueError, match="class-conditional.*labels"):
        g(z)
    with pytest.raises(ValueError, match="class-conditional.*labels"):
        d(x)
    with pytest.raises(ValueError, match="integer"):
        d(x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        g(z, torch.zeros(2, dtype=torch.int64))


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_unconditional_models_ignore_labels(name: str) -> None:
    g, d = models(name, "none")
    assert g.num_classes == d.num_classes == 0 and d.conditioning == "none"
    z, x = torch.randn(3, 100), torch.rand(3, 1, 28, 28)
    y = torch.tensor([1, 2, 3])
    with torch.no_grad():
        assert torch.equal(g(z, y), g(z)) and torch.equal(d(x, y), d(x))


@pytest.mark.parametrize("conditioning", ["concat", "acgan", "projection"])
@pytest.mark.parametrize("image_shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_generator_takes_the_one_hot_label_with_z(name: str, image_shape: tuple, conditioning: str) -> None:
    g, _ = models(name, conditioning, image_shape)
    assert g.num_classes == K and g.input_dim == 100 + K
    assert first_layer_inputs(g) == 100 + K
    z = torch.randn(1, 100).expand(K, 100)  # one z, every class
    with torch.no_grad():
        images = g(z, torch.arange(K))
    assert images.shape == (K, *image_shape)
    # Each class changes the image: no two rows equal.
    distances = torch.cdist(images.flatten(1), images.flatten(1))
    assert (distances + torch.eye(K)).min() > 1e-4


@pytest.mark.parametrize("image_shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_concat_discriminator_reads_the_label_with_the_image(name: str, image_shape: tuple) -> None:
    _, d = models(name, "concat", image_shape)
    channels, height, width = image_shape
    if name == "mlp":  # one-hot after the flattened image
        assert d.fc1.in_features == channels * height * width + K
    else:  # K constant one-hot maps as extra input channels
        assert d.conv1.in_channels == channels + K
        inputs = d.label_input(torch.zeros(2, *image_shape), torch.tensor([4, 7]))
        assert inputs.shape == (2, channels + K, height, width)
        assert torch.equal(inputs[0, channels + 4], torch.ones(height, width))
        assert inputs[0].sum() == height * width and inputs[1, channels + 7].sum() == height * width
    x = torch.rand(1, *image_shape).expand(K, *image_shape)  # one image, every label
    with torch.no_grad():
        logits = d(x, torch.arange(K))
    assert logits.shape == (K,) and logits.unique().numel() == K  # the label changes the logit


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_concat_label_input_equals_its_one_hot_by_hand(name: str) -> None:
    """D(x, y) == the unconditional computation on the input with the one-hot appended by hand."""
    _, d = models(name, "concat")
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 9, 2, 2])
    one_hot = torch.nn.functional.one_hot(y, K).float()
    manual = (torch.cat([x.flatten(1), one_hot], 1) if name == "mlp"
              else torch.cat([x, one_hot[:, :, None, None].expand(4, K, 28, 28)], 1))
    with torch.no_grad():
        torch.testing.assert_close(d(x, y), d.logit(d.body(manual)))


@pytest.mark.parametrize("image_shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_projection_logit_is_linear_head_plus_inner_product(name: str, image_shape: tuple) -> None:
    _, d = models(name, "projection", image_shape)
    assert d.conditioning == "projection" and not hasattr(d, "class_head")
    assert first_layer_inputs(d) == (image_shape[0] if name != "mlp" else int(torch.tensor(image_shape).prod()))
    assert tuple(d.embed.weight.shape) == (K, d.feature_dim)
    x, y = torch.rand(5, *image_shape) * 2 - 1, torch.tensor([0, 3, 3, 9, 5])
    with torch.no_grad():
        h = d.features(x, y)  # (B, F): the input is unconditional
        torch.testing.assert_close(h, d.features(x))
        weight, bias = linear_head(d)
        expected = h @ weight + bias + (d.embed.weight[y] * h).sum(1)  # fc(h) + <embed(y), h>
        out = d(x, y)
    assert out.shape == (5,)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Changing only the label moves the logit by exactly <embed(y') - embed(y), h>.
    with torch.no_grad():
        other = d(x, (y + 1) % K)
    torch.testing.assert_close(other - out, ((d.embed.weight[(y + 1) % K] - d.embed.weight[y]) * h).sum(1),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("image_shape", SHAPES, ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_acgan_returns_adversarial_and_class_logits(name: str, image_shape: tuple) -> None:
    _, d = models(name, "acgan", image_shape)
    assert first_layer_inputs(d) == (image_shape[0] if name != "mlp" else int(torch.tensor(image_shape).prod()))
    assert isinstance(d.class_head, nn.Linear)
    assert (d.class_head.in_features, d.class_head.out_features) == (d.feature_dim, K)
    x = torch.rand(4, *image_shape) * 2 - 1
    y = torch.tensor([1, 1, 8, 0])
    with torch.no_grad():
        logits, class_logits = d(x, y)
        h = d.features(x)
        weight, bias = linear_head(d)
        other_logits, other_class_logits = d(x, (y + 5) % K)
    assert logits.shape == (4,) and class_logits.shape == (4, K)
    torch.testing.assert_close(logits, h @ weight + bias, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(class_logits, h @ d.class_head.weight.T + d.class_head.bias, atol=1e-5, rtol=1e-5)
    # D's input is unconditional: the label only selects the target of the class loss (outside the model).
    assert torch.equal(logits, other_logits) and torch.equal(class_logits, other_class_logits)


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_acgan_class_head_learns_labels(name: str) -> None:
    """The class head is trainable end to end: a few steps of cross-entropy fit 4 fixed images' classes."""
    torch.manual_seed(0)
    _, d = models(name, "acgan")
    d.train()
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.Adam(d.parameters(), lr=1e-3)
    for _ in range(30):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(d(x, y)[1], y)
        loss.backward()
        optimizer.step()
    d.eval()
    with torch.no_grad():
        assert torch.equal(d(x, y)[1].argmax(1), y)


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_conditional_heads_leave_the_unconditional_body_alone(name: str) -> None:
    """Given the same seed, projection and acgan D share the unconditional D's body parameters."""
    _, plain = models(name, "none")
    for conditioning in ("projection", "acgan"):
        _, d = models(name, conditioning)
        extra = {"projection": {"embed.weight"}, "acgan": {"class_head.weight", "class_head.bias"}}[conditioning]
        assert set(d.state_dict()) == set(plain.state_dict()) | extra
        assert (d.feature_dim, first_layer_inputs(d)) == (plain.feature_dim, first_layer_inputs(plain))
