"""mlp (Goodfellow et al. 2014): layer sizes, no BatchNorm, dropout, determinism without dropout."""

from __future__ import annotations

import torch
from torch import nn

from gan_dist.config import ModelConfig
from gan_dist.models.build import build_models
from gan_dist.registry.architectures import resolve_model
from gan_dist.registry.datasets import MNIST

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_layer_sizes_and_parameter_counts() -> None:
    g, d = build_models(ModelConfig(name="mlp"), MNIST_SHAPE)
    assert linear_shapes(g) == [(100, 256), (256, 512), (512, 1024), (1024, 784)]
    assert linear_shapes(d) == [(784, 1024), (1024, 512), (512, 256), (256, 1)]
    assert sum(p.numel() for p in g.parameters()) == 1_486_352
    assert sum(p.numel() for p in d.parameters()) == 1_460_225


def test_no_normalization_even_when_config_asks() -> None:
    model = ModelConfig(name="mlp", g_norm="batch", d_norm="layer")
    resolved = resolve_model(model)
    assert (resolved.g_norm, resolved.d_norm) == ("none", "none")
    g, d = build_models(model, MNIST_SHAPE)
    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
    assert not any(isinstance(m, norms) for m in [*g.modules(), *d.modules()])
    assert len(list(g.buffers())) == 0 and len(list(d.buffers())) == 0


def test_dropout_is_stochastic_in_training() -> None:
    _, d = build_models(ModelConfig(name="mlp", d_width=32), MNIST_SHAPE)
    assert [m.p for m in d.modules() if isinstance(m, nn.Dropout)] == [0.3]
    x = torch.randn(8, 1, 28, 28)
    d.train()
    assert not torch.equal(d(x), d(x))
    d.eval()
    assert torch.equal(d(x), d(x))


def test_without_dropout_training_is_deterministic_and_draws_no_random_numbers() -> None:
    g, d = build_models(ModelConfig(name="mlp", g_width=32, d_width=32, d_dropout=0.0), MNIST_SHAPE)
    assert not any(isinstance(m, nn.Dropout) for m in d.modules())
    g.train()
    d.train()
    z = torch.randn(8, 100)
    state = torch.get_rng_state()
    first, second = d(g(z)), d(g(z))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, second)


def test_layer_sizes_for_rgb_32x32() -> None:
    g, d = build_models(ModelConfig(name="mlp"), (3, 32, 32))
    assert linear_shapes(g) == [(100, 256), (256, 512), (512, 1024), (1024, 3 * 32 * 32)]
    assert linear_shapes(d) == [(3 * 32 * 32, 1024), (1024, 512), (512, 256), (256, 1)]
    images = g(torch.randn(2, 100))
    assert images.shape == (2, 3, 32, 32) and d(images).shape == (2,)
