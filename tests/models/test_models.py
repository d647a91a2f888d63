"""All architectures through the registry: defaults, shapes and ranges at every image shape and
conditioning, the image-size rule, normalization choices, autocast, channels_last, torch.compile and
SyncBatchNorm conversion."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import CONDITIONING_MODES, ConfigError, ModelConfig
from gan_dist.models.base import conv_stages
from gan_dist.models.build import build_discriminator, build_generator, build_models
from gan_dist.registry.architectures import ARCHITECTURES, d_has_batchnorm, resolve_model, uses_channels_last
from gan_dist.registry.datasets import MNIST

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)

# (name, g_width, d_width): the defaults and a small and a non-power-of-two width each.
CASES = [
    ("keras_dcgan", None, None), ("keras_dcgan", 16, 8), ("keras_dcgan", 30, 6),
    ("dcgan", None, None), ("dcgan", 8, 8), ("dcgan", 12, 5),
    ("mlp", None, None), ("mlp", 16, 16), ("mlp", 10, 7),
]
SMALL = {"keras_dcgan": (16, 8), "dcgan": (8, 8), "mlp": (16, 16), "stylegan2": (16, 16), "resnet_sngan": (8, 8),
         "biggan": (8, 8)}
# The seed architectures, whose internals these tests read (G's one-hot input, D's last layer by name); every
# architecture's contract (shapes, conditioning modes, gradients) is tests/registry/test_registries.py's.
SEED_ARCHITECTURES = ("keras_dcgan", "dcgan", "mlp")
# Architecture options that keep the small models small (model.options).
SMALL_OPTIONS = {"stylegan2": {"w_dim": 16, "mapping_layers": 2, "channel_base": 512}}
SHAPES = [(1, 28, 28), (3, 32, 32), (1, 64, 64), (3, 64, 64)]
NUM_CLASSES = 10
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def small_models(name: str, image_shape: tuple[int, int, int] = MNIST_SHAPE, num_classes: int = 0,
                 **kwargs) -> tuple[nn.Module, nn.Module]:
    g_width, d_width = SMALL[name]
    kwargs.setdefault("options", SMALL_OPTIONS.get(name, {}))
    return build_models(ModelConfig(name=name, g_width=g_width, d_width=d_width, **kwargs), image_shape, num_classes)


def d_loss_ns(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating BCE of D on logits (autocast runs it in float32)."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def g_loss_ns(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resolve_fills_defaults_and_keeps_explicit_values() -> None:
    expected = {"keras_dcgan": (128, 32, 0.25), "dcgan": (64, 64, 0.0), "mlp": (256, 256, 0.3)}
    for name, (g_width, d_width, dropout) in expected.items():
        model = ModelConfig(name=name)
        resolved = resolve_model(model)
        assert (resolved.g_width, resolved.d_width, resolved.d_dropout) == (g_width, d_width, dropout)
        assert model.g_width is None  # the input is not modified
    explicit = resolve_model(ModelConfig(name="dcgan", g_width=3, d_width=5, d_dropout=0.1,
                                                g_norm="none", d_norm="layer"))
    assert (explicit.g_width, explicit.d_width, explicit.d_dropout) == (3, 5, 0.1)
    assert (explicit.g_norm, explicit.d_norm) == ("none", "layer")
    with pytest.raises(ValueError, match="model.name"):
        resolve_model(ModelConfig(name="wgan"))


@pytest.mark.parametrize(("name", "g_width", "d_width"), CASES)
def test_shapes_and_ranges(name: str, g_width: int | None, d_width: int | None) -> None:
    torch.manual_seed(0)
    for latent_dim in (100, 16):
        model = ModelConfig(name=name, latent_dim=latent_dim, g_width=g_width, d_width=d_width)
        g, d = build_models(model, MNIST_SHAPE)
        assert g.latent_dim == latent_dim
        images = g(torch.randn(5, latent_dim) * 3)
        assert images.shape == (5, *MNIST_SHAPE) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
        logits = d(images)
        assert logits.shape == (5,)
        assert logits.isfinite().all()
    # Logits, not probabilities: scaling D's last layer up drives outputs far outside [0, 1], both signs.
    last = [m for m in d.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    with torch.no_grad():
        last.weight.mul_(1000.0)
        logits = d(torch.rand(64, *MNIST_SHAPE) * 2 - 1)
    assert logits.max() > 1 and logits.min() < 0


@pytest.mark.parametrize("conditioning", CONDITIONING_MODES)
@pytest.mark.parametrize("image_shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_every_family_builds_for_every_shape_and_conditioning(name: str, image_shape: tuple[int, int, int],
                                                              conditioning: str) -> None:
    torch.manual_seed(0)
    g, d = small_models(name, image_shape, NUM_CLASSES, conditioning=conditioning)
    conditional = conditioning != "none"
    assert (g.latent_dim, g.image_shape, d.image_shape) == (100, image_shape, image_shape)
    assert g.num_classes == d.num_classes == (NUM_CLASSES if conditional else 0)
    assert d.conditioning == conditioning
    labels = torch.arange(6) % NUM_CLASSES
    images = g(torch.randn(6, 100) * 3, labels)
    assert images.shape == (6, *image_shape) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    out = d(images, labels)
    logits, class_logits = out if conditioning == "acgan" else (out, None)
    assert logits.shape == (6,) and logits.isfinite().all()
    if conditioning == "acgan":
        assert class_logits.shape == (6, NUM_CLASSES) and class_logits.isfinite().all()
    assert d.features(images, labels).shape == (6, d.feature_dim)
    (logits.sum() + (0 if class_logits is None else class_logits.sum())).backward()
    assert all(p.grad is not None for p in d.parameters())  # every D parameter is used (no DDP unused params)


# Parameter counts at the default widths and latent 100, unconditional: G, D. 28x28x1 is the seed's.
DEFAULT_COUNTS = {
    ("keras_dcgan", (1, 28, 28)): (855_809, 392_833),
    ("keras_dcgan", (3, 32, 32)): (448_003, 393_409),
    ("keras_dcgan", (3, 64, 64)): (452_227, 1_578_689),
    ("dcgan", (1, 28, 28)): (1_781_505, 138_689),
    ("dcgan", (3, 32, 32)): (3_448_579, 663_361),
    ("dcgan", (3, 64, 64)): (12_658_435, 2_765_633),
    ("mlp", (1, 28, 28)): (1_486_352, 1_460_225),
    ("mlp", (3, 32, 32)): (3_831_552, 3_803_137),
    ("mlp", (3, 64, 64)): (13_277_952, 13_240_321),
}


@pytest.mark.parametrize(("name", "image_shape"), list(DEFAULT_COUNTS))
def test_parameter_counts_at_default_widths(name: str, image_shape: tuple[int, int, int]) -> None:
    g, d = build_models(ModelConfig(name=name), image_shape)
    assert (parameter_count(g), parameter_count(d)) == DEFAULT_COUNTS[name, image_shape]


@pytest.mark.parametrize("name", ["keras_dcgan", "dcgan"])
@pytest.mark.parametrize("image_shape", [(1, 30, 30), (1, 12, 12), (3, 8, 8), (3, 32, 28), (1, 27, 27)])
def test_conv_models_refuse_sizes_outside_the_rule(name: str, image_shape: tuple[int, int, int]) -> None:
    for build in (build_generator, build_discriminator):
        with pytest.raises(ConfigError, match="data.image_size"):
            build(ModelConfig(name=name), image_shape)


@pytest.mark.parametrize(("size", "stages", "base"), [(16, 2, 4), (20, 2, 5), (28, 2, 7), (32, 3, 4),
                                                      (48, 3, 6), (64, 4, 4), (96, 4, 6), (128, 5, 4)])
def test_conv_stage_rule(size: int, stages: int, base: int) -> None:
    assert conv_stages((1, size, size), "dcgan") == (stages, base)
    assert base * 2**stages == size
    g, d = small_models("dcgan", (1, size, size))
    assert (g.num_stages, g.base_size, d.num_stages) == (stages, base, stages)
    with torch.no_grad():
        assert d(g(torch.randn(2, 100))).shape == (2,)


def test_mlp_builds_for_any_shape() -> None:
    g, d = small_models("mlp", (3, 30, 18))
    images = g(torch.randn(2, 100))
    assert images.shape == (2, 3, 30, 18) and d(images).shape == (2,)


@pytest.mark.parametrize("name", ["keras_dcgan", "dcgan"])
def test_d_norm_layer_has_no_batch_norm_and_no_running_buffers(name: str) -> None:
    g, d = small_models(name, (3, 32, 32), d_norm="layer", d_dropout=0.0)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert list(d.buffers()) == []
    groups = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert len(groups) == (3 if name == "keras_dcgan" else 2)  # every block but the first
    assert all(m.num_groups == 1 and m.affine for m in groups)  # normalizes each sample over (C, H, W)
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())  # g_norm is separate
    # Per-sample: in training mode a sample's logit does not depend on the rest of its batch.
    d.train()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(d(x)[:2], d(x[:2]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_norm_none_has_no_normalization_layers(name: str) -> None:
    g, d = small_models(name, (1, 32, 32), g_norm="none", d_norm="none")
    assert not any(isinstance(m, NORM_TYPES) for m in [*g.modules(), *d.modules()])
    g, d = small_models(name, (1, 32, 32), g_norm="none", d_norm="batch")
    assert not any(isinstance(m, NORM_TYPES) for m in g.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == (name != "mlp")


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_each_architecture_declares_what_its_modules_are(name: str) -> None:
    """The registry's facts that the trainer, the bench and config.validate ask instead of testing names:
    `convolutional` (channels_last applies) and `d_uses_norm` (a BatchNorm critic is possible)."""
    g, d = small_models(name, (1, 32, 32), d_norm="batch")
    convs = (nn.Conv2d, nn.ConvTranspose2d)
    has_convs = any(isinstance(m, convs) for m in [*g.modules(), *d.modules()])
    assert ARCHITECTURES[name].convolutional == has_convs
    assert uses_channels_last(ModelConfig(name=name), True) == has_convs
    assert not uses_channels_last(ModelConfig(name=name), False)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    assert d_has_batchnorm(ModelConfig(name=name, d_norm="batch")) == has_batchnorm == ARCHITECTURES[name].d_uses_norm
    assert not d_has_batchnorm(ModelConfig(name=name, d_norm="layer"))


@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_single_builders_match_build_models(name: str) -> None:
    torch.manual_seed(1)
    g, d = build_models(ModelConfig(name=name), MNIST_SHAPE)
    torch.manual_seed(1)
    g_alone = build_generator(ModelConfig(name=name), MNIST_SHAPE)
    assert type(g_alone) is type(g) and type(build_discriminator(ModelConfig(name=name), MNIST_SHAPE)) is type(d)
    for a, b in zip(g.state_dict().values(), g_alone.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# The plain seed models, and a conditional one with spectral norm (each family).
VARIANTS = [{}, {"conditioning": "projection", "spectral_norm": True}, {"conditioning": "concat"}]
VARIANT_IDS = ["plain", "projection_sn", "concat"]


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_forward_backward_under_bf16_autocast(name: str, variant: dict) -> None:
    torch.manual_seed(0)
    g, d = small_models(name, num_classes=NUM_CLASSES, **variant)
    real = torch.rand(6, *MNIST_SHAPE) * 2 - 1
    y = torch.arange(6) % NUM_CLASSES
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fake = g(torch.randn(6, g.latent_dim), y)
        d_loss = d_loss_ns(d(real, y), d(fake.detach(), y))
        g_loss = g_loss_ns(d(fake, y))
    assert fake.dtype == torch.bfloat16  # the autocast region really ran in bf16
    assert d_loss.dtype == torch.float32 and g_loss.dtype == torch.float32
    (d_loss + g_loss).backward()
    for module in (g, d):
        grads = [p.grad for p in module.parameters()]
        assert all(grad is not None and grad.dtype == torch.float32 and grad.isfinite().all() for grad in grads)
        assert any(grad.abs().sum() > 0 for grad in grads)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_channels_last_matches_contiguous(name: str, variant: dict) -> None:
    torch.manual_seed(0)
    g, d = small_models(name, num_classes=NUM_CLASSES, **variant)
    g.eval()
    d.eval()
    z = torch.randn(4, g.latent_dim)
    y = torch.tensor([0, 3, 9, 3])
    x = torch.rand(4, *MNIST_SHAPE) * 2 - 1
    with torch.no_grad():
        expected_images, expected_logits = g(z, y), d(x, y)
        g.to(memory_format=torch.channels_last)
        d.to(memory_format=torch.channels_last)
        images = g(z, y)
        logits = d(x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(images, expected_images, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS[:2], ids=VARIANT_IDS[:2])
@pytest.mark.parametrize("name", SEED_ARCHITECTURES)
def test_torch_compile_full_graph_matches_eager(name: str, variant: dict) -> None:
    """aot_eager traces forward and backward (graph breaks fail with fullgraph) without needing a C compiler.

    With spectral norm, eval mode: each training-mode forward advances the power iteration, so eager and
    compiled calls in training mode would see different u, v."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    g, d = small_models(name, num_classes=NUM_CLASSES, d_dropout=0.0, **variant)
    if variant:
        d.eval()
    z = torch.randn(4, g.latent_dim)
    y = torch.tensor([1, 2, 3, 1])
    eager = d(g(z, y), y)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in g.parameters()]
    g.zero_grad()
    d.zero_grad()
    g_c = torch.compile(g, backend="aot_eager", fullgraph=True)
    d_c = torch.compile(d, backend="aot_eager", fullgraph=True)
    compiled = d_c(g_c(z, y), y)
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
        out = converted(torch.randn(2, *MNIST_SHAPE))
    assert out.shape == (2,)


def test_config_dataclass_is_what_build_accepts() -> None:
    # The trainer passes the typed ModelConfig straight from load_config.
    from gan_dist.configure import load_config

    config = load_config(None, ["model.name=mlp", "model.g_width=8", "model.d_width=8"])
    g, d = build_models(config.model, MNIST_SHAPE)
    assert dataclasses.is_dataclass(config.model)
    assert d(g(torch.randn(2, 100))).shape == (2,)


@pytest.mark.slow
def test_inductor_compile_keras_dcgan_channels_last_bf16() -> None:
    """The default model through the real compiler (about a minute on 2 CPU cores)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    g, d = build_models(ModelConfig(name="keras_dcgan", d_dropout=0.0), MNIST_SHAPE)
    g.to(memory_format=torch.channels_last)
    d.to(memory_format=torch.channels_last)
    z = torch.randn(8, g.latent_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = g_loss_ns(d(g(z)))
        loss = g_loss_ns(torch.compile(d)(torch.compile(g)(z)))
    loss.backward()
    torch.testing.assert_close(loss, expected, atol=2e-2, rtol=2e-2)
    assert all(p.grad is not None and p.grad.isfinite().all() for p in g.parameters())
