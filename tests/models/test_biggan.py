"""biggan (Brock et al. 2019, after ajbrock/BigGAN-PyTorch): forward and backward at every size, the
channel tables, hierarchical z and the shared embedding, self-attention, the reference parameter counts,
spectral norm in G and D, orthogonal init and regularization (gradient equal to utils.ortho),
determinism, gradient penalties and the errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models import biggan
from gan_dist.models.biggan import (
    BigGANDiscriminator,
    BigGANGenerator,
    BigGANOptions,
    build_discriminator,
    build_generator,
)
from gan_dist.models.resnet_blocks import ConditionalBatchNorm2d, SelfAttention, orthogonal_regularization
from tests.models.shapes import output_shapes

K = 10
LATENT = 12
SIZES = (28, 32, 48, 64, 96, 128, 256)
WEIGHT_TYPES = (nn.Conv2d, nn.Linear, nn.Embedding)
BN_TYPES = nn.modules.batchnorm._BatchNorm
# Attention where it is cheap and where both G and D have a block of that size (the default, 64 px, is off
# below 64 px; at 96 px no block outputs 64 px). The default's placement: test_imagenet_128_layer_shapes.
ATTENTION = {64: (32,), 96: (48,), 128: (32,), 256: (32,)}
CASES = ([(size, 1, "none") for size in SIZES] + [(size, 3, "projection") for size in SIZES]
         + [(32, 3, "acgan"), (32, 1, "concat"), (28, 1, "acgan"), (48, 3, "concat")])


def tiny(image_shape: tuple[int, int, int], conditioning: str = "none", seed: int = 0, width: int = 4,
         latent_dim: int = LATENT, **options) -> tuple[BigGANGenerator, BigGANDiscriminator]:
    torch.manual_seed(seed)
    model = ModelConfig(name="biggan", latent_dim=latent_dim, g_width=width, d_width=width, conditioning=conditioning)
    opts = BigGANOptions(**options)
    return (build_generator(model, opts, image_shape, K),  # type: ignore[return-value]
            build_discriminator(model, opts, image_shape, K))


def labels(batch: int) -> torch.Tensor:
    return torch.arange(batch) % K


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def open_attention(*models: nn.Module) -> None:
    """gamma = 0.5 in every attention block: at init (gamma 0) its convs get no gradient at all."""
    with torch.no_grad():
        for m in [m for model in models for m in model.modules() if isinstance(m, SelfAttention)]:
            m.gamma.fill_(0.5)


@pytest.mark.parametrize(("size", "channels", "conditioning"), CASES)
def test_forward_backward_reaches_every_parameter(size: int, channels: int, conditioning: str) -> None:
    g, d = tiny((channels, size, size), conditioning, attention=ATTENTION.get(size, (64,)))
    assert len(g.attention) == len(d.attention) == (1 if size >= 64 else 0)
    open_attention(g, d)
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
        assert d.blocks[0].conv1.in_channels == channels + K


@pytest.mark.parametrize(("conditioning", "options"), [
    ("projection", {"shared_embedding": False, "hier": False}),  # BigGAN-PyTorch's CIFAR-10 script
    ("none", {"hier": False}),  # plain BatchNorms
    ("acgan", {"hier": False}),  # shared embedding alone
])
def test_other_conditioning_inputs(conditioning: str, options: dict) -> None:
    g, d = tiny((3, 32, 32), conditioning, **options)
    out = d(g(torch.randn(2, LATENT), labels(2)), labels(2))
    loss = out[0].sum() + out[1].sum() if conditioning == "acgan" else out.sum()
    loss.backward()
    for name, p in [*g.named_parameters(prefix="G"), *d.named_parameters(prefix="D")]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    cbns = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm2d)]
    if conditioning == "none":
        assert not cbns and len([m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]) == 7
    elif options.get("shared_embedding", True):
        assert all(isinstance(m.gain, nn.Linear) and m.gain.in_features == 128 for m in cbns)
    else:
        assert not hasattr(g, "shared") and all(isinstance(m.gain, nn.Embedding) for m in cbns)


def test_imagenet_128_layer_shapes() -> None:
    """G_arch[128] / D_arch[128] at w = 2 (the paper's 96 gives 1536 ... 96 channels): attention after
    G's 64 px block and D's first block."""
    g, d = tiny((3, 128, 128), width=2, latent_dim=120)  # unconditional: output_shapes passes no labels
    names = [f"blocks.{i}" for i in range(5)] + ["attention.3", "conv_out"]
    assert output_shapes(g, torch.randn(2, 120), names) == {
        "blocks.0": (2, 32, 8, 8), "blocks.1": (2, 16, 16, 16), "blocks.2": (2, 8, 32, 32),
        "blocks.3": (2, 4, 64, 64), "attention.3": (2, 4, 64, 64), "blocks.4": (2, 2, 128, 128),
        "conv_out": (2, 3, 128, 128)}
    assert g.z_chunks == [20] * 6 and g.linear.in_features == 20 and g.linear.out_features == 32 * 16
    assert g.blocks[0].bn1.gain.in_features == 20  # unconditional: the z chunk alone
    conditional, _ = tiny((3, 32, 32), "projection")
    assert conditional.blocks[0].bn1.gain.in_features == 128 + LATENT // 4  # [shared(y), z chunk]
    shapes = output_shapes(d, torch.randn(2, 3, 128, 128), [f"blocks.{i}" for i in range(6)] + ["attention.0"])
    assert shapes == {"blocks.0": (2, 2, 64, 64), "attention.0": (2, 2, 64, 64), "blocks.1": (2, 4, 32, 32),
                      "blocks.2": (2, 8, 16, 16), "blocks.3": (2, 16, 8, 8), "blocks.4": (2, 32, 4, 4),
                      "blocks.5": (2, 32, 4, 4)}
    # Wide D: the hidden width is the output's.
    assert [b.conv1.out_channels for b in d.blocks] == [b.conv2.out_channels for b in d.blocks]


@pytest.mark.parametrize(("size", "g_channels", "d_channels", "d_last_side"), [
    (28, [4, 4, 4], [4, 4, 4, 4], 7),  # two up-blocks of the 32 px table
    (32, [4, 4, 4, 4], [4, 4, 4, 4], 8),
    (48, [4, 4, 4, 4], [4, 4, 4, 4], 12),
    (64, [16, 16, 8, 4, 2], [1, 2, 4, 8, 16], 4),
    (96, [16, 16, 8, 4, 2], [1, 2, 4, 8, 16], 6),
    (256, [16, 16, 8, 8, 4, 2, 1], [1, 2, 4, 8, 8, 16, 16], 4),
])
def test_channel_tables(size: int, g_channels: list[int], d_channels: list[int], d_last_side: int) -> None:
    g, d = tiny((3, size, size), width=2, attention=None)
    assert [g.linear.out_features // g.base_size**2] + [b.conv2.out_channels for b in g.blocks] == \
        [2 * m for m in g_channels]
    assert [b.conv2.out_channels for b in d.blocks] == [2 * m for m in d_channels]
    last = f"blocks.{len(d.blocks) - 1}"
    assert output_shapes(d, torch.randn(2, 3, size, size), [last])[last][2:] == (d_last_side, d_last_side)


def test_hierarchical_z_uses_every_chunk() -> None:
    g, _ = tiny((3, 32, 32), "projection", latent_dim=14)
    assert g.z_chunks == [5, 3, 3, 3]  # 4 chunks of 3, the remainder to the Linear's chunk
    g.eval()
    z = torch.randn(1, 14)
    with torch.no_grad():
        base = g(z, labels(1))
        for start in (0, 5, 8, 11):  # perturb one chunk at a time
            moved = z.clone()
            moved[:, start] += 1.0
            assert not torch.allclose(g(moved, labels(1)), base), start


def test_conditional_g_follows_the_label() -> None:
    g, _ = tiny((3, 32, 32), "projection")
    g.eval()
    with torch.no_grad():
        z = torch.randn(1, LATENT).expand(2, -1)
        images = g(z, torch.tensor([0, 1]))
    assert not torch.allclose(images[0], images[1])
    with pytest.raises(ValueError, match="labels"):
        g(z)


# Parameter counts of BigGAN-PyTorch's BigGAN.Generator / Discriminator built with the same settings
# (resolution, G_ch = D_ch, dim_z, shared_dim, hier, G_shared, attention, n_classes; D with its projection
# embedding), our models with 3 channels and conditioning=projection.
REFERENCE_COUNTS = [
    # The paper's ImageNet 128x128 (launch_BigGAN_bs256x8.sh): ch 96, dim_z 120, shared 128, hier, attn 64.
    ((3, 128, 128), 96, 120, 1000, {}, 70_433_988, 87_982_370),
    # launch_cifar_ema.sh: ch 64, dim_z 128, no G_shared, no hier, no attention.
    ((3, 32, 32), 64, 128, 10, {"shared_embedding": False, "hier": False, "attention": None}, 4_304_387, 4_207_361),
    # CIFAR-10 with the paper's G conditioning (shared 128, hier).
    ((3, 32, 32), 64, 128, 10, {}, 4_373_251, 4_207_361),
    ((3, 64, 64), 96, 120, 1000, {"attention": (32,)}, 70_377_348, 45_511_970),
    ((3, 256, 256), 96, 140, 1000, {}, 82_235_844, 99_225_890),
]


@pytest.mark.parametrize(("shape", "width", "latent_dim", "classes", "options", "g_count", "d_count"),
                         REFERENCE_COUNTS)
def test_parameter_counts_equal_the_reference(monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int],
                                              width: int, latent_dim: int, classes: int, options: dict,
                                              g_count: int, d_count: int) -> None:
    # Spectral norm's registration (15 power iterations a layer) takes seconds on the meta device; it adds
    # buffers, not parameters (test_spectral_norm_adds_no_parameters).
    monkeypatch.setattr(biggan, "apply_spectral_norm", lambda module: None)
    opts = BigGANOptions(**options)
    with torch.device("meta"):
        g = BigGANGenerator(latent_dim, width, shape, classes, "projection", options=opts)
        d = BigGANDiscriminator(width, shape, classes, "projection", options=opts)
    assert (parameter_count(g), parameter_count(d)) == (g_count, d_count)
    if options == {}:
        assert parameter_count(g.shared) == classes * 128


def test_spectral_norm_on_every_d_weight_and_g_conv_and_linear() -> None:
    g, d = tiny((3, 64, 64), "projection", attention=(32,))
    assert len(d.attention) == 1
    d_layers = [m for m in d.modules() if isinstance(m, WEIGHT_TYPES)]
    assert any(isinstance(m, nn.Embedding) for m in d_layers)
    assert all(parametrize.is_parametrized(m, "weight") for m in d_layers)
    g_layers = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(g_layers) == 1 + 4 * (3 + 4) + 4 + 1  # linear; per block 3 convs + 4 BN linears; attention; out
    assert all(parametrize.is_parametrized(m, "weight") for m in g_layers)
    assert not parametrize.is_parametrized(g.shared)  # never on G's embeddings (as the reference)
    g, _ = tiny((3, 32, 32), "projection", shared_embedding=False, hier=False)
    assert not any(parametrize.is_parametrized(m) for m in g.modules() if isinstance(m, nn.Embedding))


def test_spectral_norm_adds_no_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    g_sn, d_sn = tiny((3, 32, 32), "projection", attention=(16,))
    monkeypatch.setattr(biggan, "apply_spectral_norm", lambda module: None)
    g, d = tiny((3, 32, 32), "projection", attention=(16,))
    assert not any(parametrize.is_parametrized(m) for m in [*g.modules(), *d.modules()])
    assert (parameter_count(g_sn), parameter_count(d_sn)) == (parameter_count(g), parameter_count(d))


def test_orthogonal_init_and_default_biases() -> None:
    g, d = tiny((3, 32, 32), "projection", width=16)
    for weight in [g.blocks[0].conv1.parametrizations.weight.original, g.shared.weight,
                   d.blocks[1].conv2.parametrizations.weight.original]:
        w = weight.reshape(weight.shape[0], -1)
        rows = w.shape[0] <= w.shape[1]
        gram = w @ w.T if rows else w.T @ w  # orthonormal rows (or columns, when taller than wide)
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
    assert torch.count_nonzero(g.blocks[0].conv1.bias) > 0  # PyTorch's default bias init, as the reference
    g, _ = tiny((3, 32, 32), width=16, init="N02")
    assert g.blocks[0].conv1.parametrizations.weight.original.std().item() == pytest.approx(0.02, rel=0.05)


def reference_ortho_grad(weight: torch.Tensor, strength: float) -> torch.Tensor:
    """What BigGAN-PyTorch's utils.ortho adds to weight.grad: strength * 2 (W W^T * (1 - I)) W, with W the
    weight seen as (out, -1)."""
    w = weight.detach().view(weight.shape[0], -1)
    off_diagonal_gram = (w @ w.t()) * (1.0 - torch.eye(w.shape[0]))
    return (strength * 2 * off_diagonal_gram @ w).view(weight.shape)


def test_orthogonal_regularization_gradient_equals_utils_ortho() -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(3, 5, 3), nn.Linear(7, 4), nn.Embedding(6, 3))
    skipped = nn.Linear(3, 3)
    layers.append(skipped)
    strength = 1e-2
    orthogonal_regularization(layers, strength, skip=skipped.parameters()).backward()
    for layer in layers[:3]:
        torch.testing.assert_close(layer.weight.grad, reference_ortho_grad(layer.weight, strength),
                                   rtol=1e-5, atol=1e-7)
    assert layers[0].bias.grad is None and layers[1].bias.grad is None  # 1-D parameters are not regularized
    assert skipped.weight.grad is None


def test_regularization_loss_of_g_and_d() -> None:
    g, d = tiny((3, 32, 32), "projection", ortho_reg=1e-3, d_ortho_reg=2e-3)
    g.regularization_loss().backward()
    for name, p in g.named_parameters():
        if p.ndim >= 2 and not name.startswith("shared"):
            torch.testing.assert_close(p.grad, reference_ortho_grad(p, 1e-3), rtol=1e-4, atol=1e-8)
        else:
            assert p.grad is None, name  # the shared embedding is blacklisted; 1-D parameters untouched
    d.regularization_loss().backward()
    embed = d.embed.parametrizations.weight.original
    torch.testing.assert_close(embed.grad, reference_ortho_grad(embed, 2e-3), rtol=1e-4, atol=1e-8)
    g, d = tiny((3, 32, 32), "projection", ortho_reg=0.0)
    assert g.regularization_loss() is None and d.regularization_loss() is None  # D's default is 0


def test_same_seed_same_models_and_outputs() -> None:
    g1, d1 = tiny((3, 32, 32), "projection", seed=3, attention=(16,))
    g2, d2 = tiny((3, 32, 32), "projection", seed=3, attention=(16,))
    g3, _ = tiny((3, 32, 32), "projection", seed=4, attention=(16,))
    for a, b in [(g1, g2), (d1, d2)]:
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    torch.manual_seed(0)
    z, y = torch.randn(2, LATENT), labels(2)
    assert torch.equal(d1(g1(z, y), y), d2(g2(z, y), y))
    assert not torch.equal(g1(z, y), g3(z, y))


def test_gradient_penalty_double_backward() -> None:
    _, d = tiny((3, 64, 64), "projection", attention=(32,))
    open_attention(d)
    assert not any(isinstance(m, BN_TYPES) for m in d.modules())
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    (grad,) = torch.autograd.grad(d(x, labels(4)).sum(), x, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    penalty.backward()
    for name, p in d.named_parameters():
        if name == "linear.bias":
            continue  # a constant offset of the logit: no part of dD/dx
        assert p.grad is not None and p.grad.isfinite().all(), name
        if p.ndim >= 2:  # weights; biases before a ReLU only move the (piecewise constant) activation pattern
            assert p.grad.abs().sum() > 0, name


def test_options_are_a_plain_dataclass_with_the_paper_defaults() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(BigGANOptions)}
    assert fields == {"shared_dim": 128, "shared_embedding": True, "hier": True, "attention": (64,),
                      "ortho_reg": 1e-4, "d_ortho_reg": 0.0, "init": "ortho", "bn_eps": 1e-5}
    assert (biggan.DEFAULT_G_WIDTH, biggan.DEFAULT_D_WIDTH) == (64, 64)


def test_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="model.options.attention"):
        tiny((3, 96, 96))  # no 64 px block at 96 px
    with pytest.raises(ConfigError, match="model.options.attention"):
        tiny((3, 128, 128), attention=(48,))
    with pytest.raises(ConfigError, match="model.options.hier"):
        tiny((3, 32, 32), "projection", shared_embedding=False)
    with pytest.raises(ConfigError, match="model.latent_dim"):
        tiny((3, 128, 128), latent_dim=5)
    with pytest.raises(ConfigError, match="model.options.init"):
        tiny((3, 32, 32), init="kaiming")
    with pytest.raises(ConfigError, match="model.options.ortho_reg"):
        tiny((3, 32, 32), ortho_reg=-1.0)
    with pytest.raises(ConfigError, match="data.image_size"):
        tiny((3, 512, 512))
    with pytest.raises(ConfigError, match="model.g_norm"):
        BigGANGenerator(LATENT, 4, (3, 32, 32), norm="layer")
    g, _ = tiny((3, 32, 32), attention=(64, 128))  # above the image size: ignored
    assert not g.attention
