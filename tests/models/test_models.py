"""All architectures through the registry: defaults, shapes, ranges, autocast, channels_last,
torch.compile and SyncBatchNorm conversion."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from gan_dist.config import MODEL_NAMES, ModelConfig
from gan_dist.losses import discriminator_loss, generator_loss
from gan_dist.models import (
    ARCHITECTURES,
    IMAGE_SHAPE,
    build_discriminator,
    build_generator,
    build_models,
    resolve_model_config,
)

# (name, g_width, d_width): the defaults and a small and a non-power-of-two width each.
CASES = [
    ("keras_dcgan", None, None), ("keras_dcgan", 16, 8), ("keras_dcgan", 30, 6),
    ("dcgan", None, None), ("dcgan", 8, 8), ("dcgan", 12, 5),
    ("mlp", None, None), ("mlp", 16, 16), ("mlp", 10, 7),
]
SMALL = {"keras_dcgan": (16, 8), "dcgan": (8, 8), "mlp": (16, 16)}


def small_models(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    g_width, d_width = SMALL[name]
    return build_models(ModelConfig(name=name, g_width=g_width, d_width=d_width, **kwargs))


def test_registry_covers_config_names() -> None:
    assert set(ARCHITECTURES) == set(MODEL_NAMES)


def test_resolve_fills_defaults_and_keeps_explicit_values() -> None:
    expected = {"keras_dcgan": (128, 32, 0.25), "dcgan": (64, 64, 0.0), "mlp": (256, 256, 0.3)}
    for name, (g_width, d_width, dropout) in expected.items():
        model = ModelConfig(name=name)
        resolved = resolve_model_config(model)
        assert (resolved.g_width, resolved.d_width, resolved.d_dropout) == (g_width, d_width, dropout)
        assert model.g_width is None  # the input is not modified
    explicit = resolve_model_config(ModelConfig(name="dcgan", g_width=3, d_width=5, d_dropout=0.1))
    assert (explicit.g_width, explicit.d_width, explicit.d_dropout) == (3, 5, 0.1)
    with pytest.raises(ValueError, match="model.name"):
        resolve_model_config(ModelConfig(name="wgan"))


@pytest.mark.parametrize(("name", "g_width", "d_width"), CASES)
def test_shapes_and_ranges(name: str, g_width: int | None, d_width: int | None) -> None:
    torch.manual_seed(0)
    for latent_dim in (100, 16):
        model = ModelConfig(name=name, latent_dim=latent_dim, g_width=g_width, d_width=d_width)
        g, d = build_models(model)
        assert g.latent_dim == latent_dim
        images = g(torch.randn(5, latent_dim) * 3)
        assert images.shape == (5, *IMAGE_SHAPE) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
        logits = d(images)
        assert logits.shape == (5,)
        assert logits.isfinite().all()
    # Logits, not probabilities: scaling D's last layer up drives outputs far outside [0, 1], both signs.
    last = [m for m in d.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.mul_(1000.0)
        logits = d(torch.rand(64, *IMAGE_SHAPE) * 2 - 1)
    assert logits.max() > 1 and logits.min() < 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_single_builders_match_build_models(name: str) -> None:
    torch.manual_seed(1)
    g, d = build_models(ModelConfig(name=name))
    torch.manual_seed(1)
    g_alone = build_generator(ModelConfig(name=name))
    assert type(g_alone) is type(g) and type(build_discriminator(ModelConfig(name=name))) is type(d)
    for a, b in zip(g.state_dict().values(), g_alone.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_under_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    g, d = small_models(name)
    real = torch.rand(6, *IMAGE_SHAPE) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = g(torch.randn(6, g.latent_dim))
        d_loss, _ = discriminator_loss(d(real), d(fake.detach()))
        g_loss, _ = generator_loss(d(fake))
    assert fake.dtype == torch.bfloat16  # the autocast region really ran in bf16
    assert d_loss.dtype == torch.float32 and g_loss.dtype == torch.float32
    (d_loss + g_loss).backward()
    for module in (g, d):
        grads = [p.grad for p in module.parameters()]
        assert all(grad is not None and grad.dtype == torch.float32 and grad.isfinite().all() for grad in grads)
        assert any(grad.abs().sum() > 0 for grad in grads)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    g, d = small_models(name)
    g.eval()
    d.eval()
    z = torch.randn(4, g.latent_dim)
    x = torch.rand(4, *IMAGE_SHAPE) * 2 - 1
    with torch.no_grad():
        expected_images, expected_logits = g(z), d(x)
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
        images = g(z)
        logits = d(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(images, expected_images, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_torch_compile_full_graph_matches_eager(name: str) -> None:
    """aot_eager traces forward and backward (graph breaks fail with fullgraph) without needing a C compiler."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    g, d = small_models(name, d_dropout=0.0)
    z = torch.randn(4, g.latent_dim)
    eager = d(g(z))
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in g.parameters()]
    g.zero_grad()
    d.zero_grad()
    g_c = torch.compile(g, backend="aot_eager", fullgraph=True)
    d_c = torch.compile(d, backend="aot_eager", fullgraph=True)
    compiled = d_c(g_c(z))
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    for p, expected in zip(g.parameters(), eager_grads, strict=True):
        torch.testing.assert_close(p.grad, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["keras_dcgan", "dcgan"])
def test_sync_batchnorm_conversion(name: str) -> None:
    g, d = small_models(name)
    for module in (g, d):
        keys = set(module.state_dict())
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())
        assert n_bn > 0
        converted = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == n_bn
        assert set(converted.state_dict()) == keys  # checkpoints load either way
        bn = next(m for m in converted.modules() if isinstance(m, nn.SyncBatchNorm))
        if name == "keras_dcgan":
            assert (bn.momentum, bn.eps) == (0.2, 1e-3)
    converted.eval()  # outside a process group SyncBatchNorm runs as plain BN in eval mode
    with torch.no_grad():
        out = converted(torch.randn(2, *IMAGE_SHAPE))
    assert out.shape == (2,)


def test_config_dataclass_is_what_build_accepts() -> None:
    # The trainer passes the typed ModelConfig straight from load_config.
    from gan_dist.config import load_config

    config = load_config(None, ["model.name=mlp", "model.g_width=8", "model.d_width=8"])
    g, d = build_models(config.model)
    assert dataclasses.is_dataclass(config.model)
    assert d(g(torch.randn(2, 100))).shape == (2,)


@pytest.mark.slow
def test_inductor_compile_keras_dcgan_channels_last_bf16() -> None:
    """The default model through the real compiler (about a minute on 2 CPU cores)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="keras_dcgan", d_dropout=0.0))
    g.to(memory_format=torch.channels_last)
    d.to(memory_format=torch.channels_last)
    z = torch.randn(8, g.latent_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, _ = generator_loss(d(g(z)))
        loss, _ = generator_loss(torch.compile(d)(torch.compile(g)(z)))
    loss.backward()
    torch.testing.assert_close(loss, expected, atol=2e-2, rtol=2e-2)
    assert all(p.grad is not None and p.grad.isfinite().all() for p in g.parameters())
