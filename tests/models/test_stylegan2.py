"""stylegan2 (Karras et al. 2020, config F): shapes and gradients at every size, parameter counts equal to
NVlabs/stylegan2-ada-pytorch's, the FIR / modulated-conv / minibatch-stddev numerics against their
definitions, truncation, style mixing, the path-length penalty, double backward, and no host syncs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models import stylegan2_ops as ops
from gan_dist.models.stylegan2 import (
    PathLengthPenalty,
    StyleGAN2Discriminator,
    StyleGAN2Generator,
    StyleGAN2Options,
    build_discriminator,
    build_generator,
)

K = 10
# channel_base 512 with width 8: 8 channels up to 64 px, then 5 (96), 4 (128), 2 (256). (A conv with one input
# channel gets no gradient in its affine: demodulation cancels a single style exactly.)
TINY = StyleGAN2Options(w_dim=16, mapping_layers=2, channel_base=512)


def tiny_models(size: int, channels: int = 3, conditioning: str = "none", width: int = 8,
                options: StyleGAN2Options = TINY) -> tuple[StyleGAN2Generator, StyleGAN2Discriminator]:
    torch.manual_seed(0)
    shape = (channels, size, size)
    num_classes = K if conditioning != "none" else 0
    model = ModelConfig(name="stylegan2", latent_dim=12, g_width=width, d_width=width, conditioning=conditioning)
    return build_generator(model, options, shape, num_classes), build_discriminator(model, options, shape, num_classes)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------------------
# Shapes, gradients, parameter counts


@pytest.mark.parametrize(("size", "channels", "conditioning"), [
    (28, 1, "none"), (28, 3, "projection"), (32, 1, "acgan"), (32, 3, "concat"), (48, 1, "projection"),
    (48, 3, "none"), (64, 1, "concat"), (64, 3, "acgan"), (96, 1, "none"), (96, 3, "projection"),
    (128, 1, "acgan"), (128, 3, "none"), (256, 1, "concat"), (256, 3, "none"),
])
def test_forward_backward_reaches_every_parameter(size: int, channels: int, conditioning: str) -> None:
    G, D = tiny_models(size, channels, conditioning)
    z = torch.randn(2, 12)
    labels = torch.tensor([1, 7]) if conditioning != "none" else None
    images = G(z, labels)
    assert images.shape == (2, channels, size, size)
    assert G.num_ws == 2 * len(G.synthesis.resolutions)
    fake = D(images, labels)
    real = D(torch.randn(2, channels, size, size), labels)
    if conditioning == "acgan":
        (fake, fake_classes), (real, real_classes) = fake, real
        assert fake_classes.shape == (2, K)
        fake = fake + fake_classes.sum(1)
        real = real + real_classes.sum(1)
    assert fake.shape == real.shape == (2,)
    (F.softplus(fake).sum() + F.softplus(-real).sum()).backward()  # D and G losses, non-saturating
    for name, p in [*G.named_parameters(prefix="G"), *D.named_parameters(prefix="D")]:
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_base_sizes_and_channels() -> None:
    """Non-power-of-2 sizes start from the base_size const; channels follow min(channel_base // r, channel_max)."""
    G, D = tiny_models(28)
    assert G.synthesis.resolutions == [7, 14, 28] and G.synthesis.b7.const.shape == (8, 7, 7)
    assert D.block_resolutions == [28, 14] and D.base_size == 7 and D.feature_dim == 8
    G, D = tiny_models(96)
    assert G.synthesis.resolutions == [6, 12, 24, 48, 96]
    options = StyleGAN2Options(w_dim=16, mapping_layers=2, channel_base=64)
    G = StyleGAN2Generator(12, 8, (3, 48, 48), options=options)
    # 64 // 6 = 10 -> 8 (channel_max), 64 // 12 = 5, 64 // 24 = 2, 64 // 48 = 1
    assert [G.synthesis.get_submodule(f"b{r}").conv1.weight.shape[0] for r in (6, 12, 24, 48)] == [8, 5, 2, 1]
    with pytest.raises(ConfigError, match="model.options.channel_base"):  # 64 // 96 = 0 channels
        StyleGAN2Generator(12, 8, (3, 96, 96), options=options)
    G = StyleGAN2Generator(12, 512, (3, 1024, 1024), options=StyleGAN2Options(w_dim=16, mapping_layers=1))
    assert G.num_ws == 18 and G.synthesis.b1024.conv1.weight.shape[0] == 32  # builds (not run) at 1024 px


# Counted from stylegan2-ada-pytorch's training/networks.py Generator / Discriminator constructors (z_dim =
# w_dim = 512, 3 channels, channel_max 512, 8 mapping layers): parameters only, G including its mapping.
REFERENCE_COUNTS = [
    # (resolution, channel_base, classes, G, D)
    (256, 32768, 0, 30_034_338, 28_864_129),  # config F at 256 px
    (256, 16384, 0, 24_767_458, 24_001_089),  # paper256
    (1024, 32768, 0, 30_370_060, 29_012_513),  # config F at 1024 px
    (32, 32768, 0, 21_523_475, 21_507_073),
    (256, 32768, K, 30_302_114, None),  # conditional G (the label embedding) equals the reference too
]


@pytest.mark.parametrize(("resolution", "channel_base", "classes", "g_count", "d_count"), REFERENCE_COUNTS)
def test_parameter_counts_equal_the_reference(resolution, channel_base, classes, g_count, d_count) -> None:
    options = StyleGAN2Options(channel_base=channel_base)
    model = ModelConfig(name="stylegan2", latent_dim=512, conditioning="projection" if classes else "none")
    with torch.device("meta"):
        G = build_generator(model, options, (3, resolution, resolution), classes)
        D = build_discriminator(model, options, (3, resolution, resolution), classes)
    assert count(G) == g_count
    # + the label embedding (K x 512 + 512) and fc0's wider input (z and the embedding: 512 more x 512)
    assert count(G.mapping) == 2_101_248 + (classes * 512 + 512 + 512 * 512 if classes else 0)
    if d_count is not None:
        assert count(D) == d_count
    else:  # ours: the projection table (K, 512); the reference maps the label with an 8-layer network instead
        assert count(D) == 28_864_129 + K * 512


def test_module_names_follow_the_reference() -> None:
    G, D = tiny_models(32)
    names = {n for n, _ in G.named_parameters()} | {n for n, _ in G.named_buffers()}
    assert {"mapping.fc0.weight", "mapping.w_avg", "synthesis.b4.const", "synthesis.b4.conv1.affine.bias",
            "synthesis.b8.conv0.noise_strength", "synthesis.b8.conv0.noise_const",
            "synthesis.b32.torgb.weight"} <= names
    names = {n for n, _ in D.named_parameters()}
    assert {"b32.fromrgb.weight", "b32.skip.weight", "b8.conv1.bias", "b4.conv.weight", "b4.fc.weight",
            "b4.out.weight"} <= names
    assert "b32.skip.bias" not in names and "b16.fromrgb.weight" not in names
    assert not any("resample_filter" in k for k in [*G.state_dict(), *D.state_dict()])  # constants, not saved


def test_equalized_learning_rate_init() -> None:
    G, D = tiny_models(32)
    fc = G.mapping.fc1
    assert fc.weight.std().item() == pytest.approx(1 / 0.01, rel=0.2)  # N(0, 1) / lr_multiplier
    assert fc.weight_gain == pytest.approx(0.01 / math.sqrt(16)) and fc.bias_gain == 0.01
    assert torch.all(G.synthesis.b8.conv0.affine.bias == 1)  # styles start at ~1
    assert G.synthesis.b8.conv0.noise_strength.item() == 0
    assert D.b32.conv0.weight_gain == pytest.approx(1 / math.sqrt(8 * 9))


# ----------------------------------------------------------------------------------------------------------
# FIR resampling and convolutions against their definitions


def upfirdn2d_by_definition(x, f, up, down, pad, flip, gain):
    """Zero insertion by index assignment, pad / crop, then the FIR as an explicit sum of shifted copies."""
    b, c, h, w = x.shape
    y = x.new_zeros(b, c, h * up, w * up)
    y[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    y = F.pad(y, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    y = y[:, :, max(-y0, 0): y.shape[2] - max(-y1, 0), max(-x0, 0): y.shape[3] - max(-x1, 0)]
    fh, fw = f.shape
    taps = f * gain if flip else (f * gain).flip([0, 1])  # convolution = correlation with the flipped filter
    out_h, out_w = y.shape[2] - fh + 1, y.shape[3] - fw + 1
    out = sum(taps[i, j] * y[:, :, i: i + out_h, j: j + out_w] for i in range(fh) for j in range(fw))
    return out[:, :, ::down, ::down]


@pytest.mark.parametrize(("up", "down", "pad"), [(1, 1, (1, 2, 0, 1)), (2, 1, (2, 1, 2, 1)), (1, 2, (1, 1, 1, 1)),
                                                 (3, 2, (3, -1, 1, 2)), (2, 2, (-1, 0, 2, -2))])
@pytest.mark.parametrize("flip", [False, True])
def test_upfirdn2d_equals_its_definition(up, down, pad, flip) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    f = torch.rand(4, 3, dtype=torch.float64)  # asymmetric: the flip matters
    expected = upfirdn2d_by_definition(x, f, up, down, pad, flip, 1.5)
    torch.testing.assert_close(ops.upfirdn2d(x, f, up, down, pad, flip, 1.5), expected, rtol=1e-12, atol=1e-12)


def test_up_and_downsampling_keep_constants() -> None:
    f = ops.setup_filter((1, 3, 3, 1))
    assert torch.allclose(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    x = torch.ones(1, 2, 8, 8)
    up, down = ops.upsample2d(x, f), ops.downsample2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.ones(1, 2, 12, 12))  # DC kept away from the borders
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.ones(1, 2, 2, 2))
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = upfirdn2d_by_definition(x, f.double(), 2, 1, (2, 1, 2, 1), False, 4)
    torch.testing.assert_close(ops.upsample2d(x, f.double()), expected)


@pytest.mark.parametrize(("k", "up", "down"), [(3, 1, 1), (3, 2, 1), (3, 1, 2), (1, 1, 2), (1, 1, 1)])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("flip_weight", [True, False])
def test_conv2d_resample_fast_paths_equal_the_definition(k, up, down, groups, flip_weight) -> None:
    """upfirdn2d(x, up, pad, gain up^2) -> conv (correlation, or convolution when flip_weight=False) ->
    upfirdn2d(down); the implementation uses a transposed or strided conv instead."""
    torch.manual_seed(0)
    f = ops.setup_filter().double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    w = torch.randn(6, 4 // groups, k, k, dtype=torch.float64)
    p = k // 2
    if up > 1:
        pads = (p + 2, p + 1)
    elif down > 1:
        pads = (p + 1, p + 1)
    else:
        pads = (p, p)
    y = upfirdn2d_by_definition(x, f if up > 1 else torch.ones(1, 1, dtype=torch.float64), up, 1,
                                (pads[0], pads[1], pads[0], pads[1]), False, up * up)
    y = F.conv2d(y, w if flip_weight else w.flip([2, 3]), groups=groups)
    if down > 1:
        y = upfirdn2d_by_definition(y, f, 1, down, (0, 0, 0, 0), False, 1)
    out = ops.conv2d_resample(x, w, f, up=up, down=down, padding=p, groups=groups, flip_weight=flip_weight)
    assert out.shape == (2, 6, 7 * up // down, 7 * up // down)
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modulated_conv_fused_equals_per_sample(up: int, demodulate: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 6, dtype=torch.float64)
    weight = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    styles = torch.randn(3, 5, dtype=torch.float64)
    noise = torch.randn(3, 1, 6 * up, 6 * up, dtype=torch.float64)
    f = ops.setup_filter().double()
    fused = ops.modulated_conv2d(x, weight, styles, noise, up=up, padding=1, resample_filter=f,
                                 demodulate=demodulate, flip_weight=up == 1, fused=True)
    split = ops.modulated_conv2d(x, weight, styles, noise, up=up, padding=1, resample_filter=f,
                                 demodulate=demodulate, flip_weight=up == 1, fused=False)
    torch.testing.assert_close(fused, split, rtol=1e-10, atol=1e-10)
    # Each sample is its own conv with the weight s_i w_oik (/ its norm when demodulating).
    for b in range(3):
        w = weight * styles[b].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).sqrt()
        one = ops.conv2d_resample(x[b: b + 1], w, f, up=up, padding=1, flip_weight=up == 1) + noise[b]
        torch.testing.assert_close(fused[b: b + 1], one, rtol=1e-10, atol=1e-10)


def test_demodulation_gives_unit_variance() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 64, 12, 12)
    weight = torch.randn(32, 64, 3, 3) * torch.rand(32, 1, 1, 1) * 5  # any scale per output channel
    styles = torch.randn(8, 64) + 1
    y = ops.modulated_conv2d(x, weight, styles, padding=1, fused=False)[:, :, 1:-1, 1:-1]  # interior pixels
    variance = y.var(dim=[0, 2, 3])  # per output channel
    assert variance.mean().item() == pytest.approx(1.0, abs=0.05)
    assert variance.min().item() > 0.75 and variance.max().item() < 1.25
    undemodulated = ops.modulated_conv2d(x, weight, styles, padding=1, demodulate=False, fused=False)
    assert undemodulated.var().item() > 10  # the check above is not vacuous


def test_operations_have_correct_second_derivatives() -> None:
    """Double backward (R1, path length) through the resampling convs, the modulated conv and mbstd."""
    torch.manual_seed(0)
    f = ops.setup_filter().double()
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    styles = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)

    def fn(x, weight, styles):
        y = ops.modulated_conv2d(x, weight, styles, up=2, padding=1, resample_filter=f, flip_weight=False, fused=False)
        y = ops.bias_act(y, None, act="lrelu")
        y = ops.conv2d_resample(y, weight, f, down=2, padding=1)
        return ops.minibatch_stddev(y, 2, 1)

    assert torch.autograd.gradgradcheck(fn, (x, weight, styles))


def test_minibatch_stddev_equals_direct_computation() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 6, 3, 3)
    out = ops.minibatch_stddev(x, group_size=4, num_channels=2)
    assert out.shape == (8, 8, 3, 3) and torch.equal(out[:, :6], x)
    groups = 8 // 4
    for i in range(8):
        members = x[i % groups:: groups]  # sample i is in the group of the samples congruent to it mod B / G
        for f in range(2):
            sl = members[:, 3 * f: 3 * (f + 1)]
            expected = (sl.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
            torch.testing.assert_close(out[i, 6 + f], expected.expand(3, 3))
    small = ops.minibatch_stddev(x[:2], group_size=4)  # group min(4, B) = 2
    torch.testing.assert_close(small[:, 6], ((x[:2].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()).expand(2, 3, 3))
    with pytest.raises(ValueError, match="model.options.mbstd_group"):
        ops.minibatch_stddev(x[:6], group_size=4)


# ----------------------------------------------------------------------------------------------------------
# Mapping: w_avg, truncation, style mixing


def test_w_avg_tracking_and_truncation() -> None:
    G, _ = tiny_models(32)
    z = torch.randn(4, 12)
    G.eval()
    G(z)
    assert torch.count_nonzero(G.w_avg) == 0  # eval mode does not track
    G.train()
    ws = G.mapping(z)
    torch.testing.assert_close(G.w_avg, (1 - 0.995) * ws[:, 0].mean(0))
    G.mapping.w_avg.normal_()
    G.eval()
    ws = G.mapping(z)
    assert ws.shape == (4, G.num_ws, 16) and torch.equal(ws[:, 0], ws[:, -1])  # one w broadcast to every layer
    torch.testing.assert_close(G.mapping(z, truncation_psi=0.0), G.w_avg.expand_as(ws))
    assert torch.equal(G.mapping(z, truncation_psi=1.0), ws)
    half = G.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(half[:, :3], (ws[:, :3] + G.w_avg) / 2)
    assert torch.equal(half[:, 3:], ws[:, 3:])


def test_style_mixing_only_in_training_with_positive_probability() -> None:
    options = StyleGAN2Options(w_dim=16, mapping_layers=2, channel_base=64, mixing_prob=1.0)
    G, _ = tiny_models(32, options=options)
    z = torch.randn(3, 12)

    def mixed(G) -> bool:
        _, ws = G(z, return_ws=True)
        return not torch.equal(ws[:, 0], ws[:, -1])  # the cutoff is in [1, num_ws): the last layer is mixed

    assert all(mixed(G) for _ in range(3))
    G.eval()
    assert not mixed(G)
    G.train()
    G.mixing_prob = 0.0
    assert not mixed(G)
    G.mixing_prob = 0.5
    torch.manual_seed(1)
    assert 5 < sum(mixed(G) for _ in range(40)) < 35
    # the mixed layers form one suffix: each layer is either the first w or the second
    G.mixing_prob = 1.0
    _, ws = G(z, return_ws=True)
    first = (ws == ws[:, :1]).all(dim=2).all(dim=0)  # (num_ws,)
    cutoff = int((~first).float().argmax())
    assert 1 <= cutoff < G.num_ws and first[:cutoff].all() and not first[cutoff:].any()


def test_noise_mode_none_builds_without_noise_inputs() -> None:
    options = StyleGAN2Options(w_dim=16, mapping_layers=2, channel_base=512, noise_mode="none")
    G, _ = tiny_models(32, options=options)
    assert not any("noise" in name for name, _ in [*G.named_parameters(), *G.named_buffers()])
    G.eval()
    z = torch.randn(2, 12)
    assert torch.equal(G(z), G(z, noise_mode="random"))  # deterministic: nothing to draw
    G.train()
    G(z).mean().backward()
    assert all(p.grad is not None for p in G.parameters())  # no parameter unused under DDP


def test_noise_modes() -> None:
    G, _ = tiny_models(32)
    for p in G.parameters():
        if p.ndim == 0:
            p.data.fill_(0.5)  # noise strengths
    G.eval()
    z = torch.randn(2, 12)
    assert not torch.equal(G(z), G(z))  # random (default)
    assert torch.equal(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.allclose(G(z, noise_mode="const"), G(z, noise_mode="none"))
    G.train()
    G.mixing_prob = 0.0
    w_avg = G.w_avg.clone()
    per_sample = G(z, noise_mode="const")  # training mode: the per-sample (scaled activations) modconv path
    G.mapping.w_avg.copy_(w_avg)
    G.eval()
    torch.testing.assert_close(G(z, noise_mode="const"), per_sample, rtol=1e-4, atol=1e-5)  # grouped path


# ----------------------------------------------------------------------------------------------------------
# Path length, R1, host syncs


def path_length_by_transcription(G, z, pl_mean, decay, weight, shrink):
    """stylegan2-ada's loss.py Gpl, written out: run_G with ws[:, cutoff:] = ... style mixing."""
    batch = z.shape[0] // shrink
    z = z[:batch]
    ws = G.mapping(z, None)
    cutoff = torch.empty([], dtype=torch.int64).random_(1, ws.shape[1])
    cutoff = torch.where(torch.rand([]) < G.mixing_prob, cutoff, torch.full_like(cutoff, ws.shape[1]))
    ws = ws.clone()
    ws[:, cutoff:] = G.mapping(torch.randn_like(z), None, update_w_avg=False)[:, cutoff:]
    img = G.synthesis(ws)
    pl_noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
    (grads,) = torch.autograd.grad([(img * pl_noise).sum()], [ws], create_graph=True)
    lengths = grads.square().sum(2).mean(1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean(), decay)
    penalty = (lengths - new_mean).square()
    return (img[:, 0, 0, 0] * 0 + penalty * weight).mean(), new_mean.detach()


def test_path_length_penalty_matches_the_reference_loss() -> None:
    G, _ = tiny_models(32)
    for p in G.parameters():
        if p.ndim == 0:
            p.data.fill_(0.2)
    pl = PathLengthPenalty.from_options(StyleGAN2Options())
    assert (pl.pl_weight, pl.pl_decay, pl.pl_batch_shrink) == (2.0, 0.01, 2)
    z = torch.randn(4, 12)
    mean = torch.zeros([])
    for step in range(3):
        G.zero_grad()
        torch.manual_seed(step)
        loss, stats = pl(G, z)
        loss.backward()
        ours = [p.grad.clone() for p in G.parameters()]
        G.zero_grad()
        torch.manual_seed(step)
        expected_loss, mean_next = path_length_by_transcription(G, z, mean, 0.01, 2.0, 2)
        expected_loss.backward()
        torch.testing.assert_close(loss, expected_loss)
        torch.testing.assert_close(pl.pl_mean, mean_next)
        torch.testing.assert_close(stats["pl_mean"], mean_next)
        # pl_mean moves by pl_decay toward the batch's mean length
        torch.testing.assert_close(mean_next, mean + 0.01 * (stats["pl_length"] - mean))
        for a, b in zip(ours, [p.grad for p in G.parameters()], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        # Every G parameter is in the graph (0 * images[:, 0, 0, 0]); all but the toRGB biases (which do not
        # change d images / d ws) get a non-zero gradient.
        for (name, _), g in zip(G.named_parameters(), ours, strict=True):
            assert g is not None and (name.endswith("torgb.bias") or torch.count_nonzero(g) > 0), name
        mean = mean_next
    assert stats.keys() == {"pl_penalty", "pl_length", "pl_mean"} and all(v.ndim == 0 for v in stats.values())


def test_r1_double_backward_through_d() -> None:
    _, D = tiny_models(28, 1, "projection")
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    (grad,) = torch.autograd.grad(D(x, labels).sum(), x, create_graph=True)
    penalty = grad.square().sum(dim=[1, 2, 3]).mean()
    penalty.backward()
    # d D / dx is piecewise constant in the biases after the (nonlinear) minibatch-stddev layer: lrelu's second
    # derivative is 0, so they get a zero R1 gradient, and the output bias is not in d D / dx at all.
    for name, p in D.named_parameters():
        if name == "b7.out.bias":
            assert p.grad is None
        elif name in ("b7.conv.bias", "b7.fc.bias"):
            assert torch.count_nonzero(p.grad) == 0
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and torch.count_nonzero(p.grad) > 0, name


class NoHostSync(TorchDispatchMode):
    """Fails on any op that reads a tensor's value on the host (.item(), bool(tensor), .tolist(), ...)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default,
                    torch.ops.aten.nonzero.default):
            raise AssertionError(f"host sync: {func}")
        return func(*args, **(kwargs or {}))


def test_training_step_pieces_never_read_device_values() -> None:
    G, D = tiny_models(32, 3, "projection")
    pl = PathLengthPenalty()
    z, labels, real = torch.randn(4, 12), torch.tensor([1, 2, 3, 4]), torch.randn(4, 3, 32, 32)
    with NoHostSync():
        fake = G(z, labels)  # training mode: mixing, random noise, w_avg update
        loss = F.softplus(D(fake, labels)).mean()
        real = real.requires_grad_(True)
        logits = D(real, labels)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        loss = loss + F.softplus(-logits).mean() + 5.0 * grad.square().sum(dim=[1, 2, 3]).mean()
        loss.backward()
        penalty, _ = pl(G, z, labels)
        (penalty * 4).backward()
        G.eval()
        G(z, labels, truncation_psi=0.7, truncation_cutoff=4)


def test_bf16_autocast() -> None:
    """Under autocast the mapping's output is cast back to float32 (w_avg's lerp needs one dtype)."""
    G, D = tiny_models(32)
    z = torch.randn(4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ws = G.mapping(z, truncation_psi=0.5)
        logits = D(G(z))
    assert ws.dtype == torch.float32 and logits.shape == (4,) and torch.isfinite(logits).all()
    assert torch.count_nonzero(G.w_avg) > 0


# ----------------------------------------------------------------------------------------------------------
# Options and builders


def test_options_are_a_plain_omegaconf_schema() -> None:
    schema = OmegaConf.structured(StyleGAN2Options)
    merged = OmegaConf.merge(schema, OmegaConf.create({"channel_base": 16384, "conv_clamp": 256.0,
                                                      "fused_modconv": True}))
    options = OmegaConf.to_object(merged)
    assert isinstance(options, StyleGAN2Options) and options.channel_base == 16384 and options.conv_clamp == 256
    defaults = StyleGAN2Options()
    assert (defaults.w_dim, defaults.mapping_layers, defaults.mapping_lr_multiplier, defaults.mixing_prob,
            defaults.pl_weight, defaults.pl_batch_shrink, defaults.pl_decay, defaults.pl_every, defaults.mbstd_group,
            defaults.w_avg_beta, defaults.conv_clamp) == (512, 8, 0.01, 0.9, 2.0, 2, 0.01, 4, 4, 0.995, None)


@pytest.mark.parametrize(("model", "options", "key"), [
    (ModelConfig(spectral_norm=True), StyleGAN2Options(), "model.spectral_norm"),
    (ModelConfig(), StyleGAN2Options(noise_mode="fixed"), "model.options.noise_mode"),
    (ModelConfig(), StyleGAN2Options(mixing_prob=1.5), "model.options.mixing_prob"),
    (ModelConfig(), StyleGAN2Options(mbstd_channels=3), "model.options.mbstd_channels"),
    (ModelConfig(d_width=0), StyleGAN2Options(), "model.d_width"),
    (ModelConfig(conditioning="acgan"), StyleGAN2Options(), "model.conditioning"),  # unlabeled data
])
def test_config_errors_name_the_key(model, options, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")), torch.device("meta"):
        build_discriminator(model, options, (3, 32, 32), 0)


def test_labels_required_when_conditional_ignored_otherwise() -> None:
    G, D = tiny_models(32, 3, "concat")
    z = torch.randn(2, 12)
    with pytest.raises(ValueError, match="labels"):
        G(z)
    with pytest.raises(ValueError, match="labels"):
        D(torch.randn(2, 3, 32, 32))
    G, D = tiny_models(32)
    G.eval()
    torch.manual_seed(0)
    a = G(z, torch.tensor([1, 2]), noise_mode="const")
    assert torch.equal(a, G(z, noise_mode="const"))
