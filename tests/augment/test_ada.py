"""ADA's pipeline: each op at p = 1 does what it says on a test pattern, p = 0 is exactly the identity, the
gates apply ops with the right probability, rank-independent draws, two derivatives, no host sync."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan_dist.augment.ada import NORMAL_COLUMNS, OPS, UNIFORM_COLUMNS, AdaptiveAugment
from gan_dist.augment.draws import GeneratorDraws
from tests.augment.common import CountingDraws, NoHostSync, ScriptedDraws, r1_step, tiny_discriminator

# Values of the draws that leave an op alone (gates at 0: an enabled op applies whenever p > 0).
NEUTRAL_UNIFORMS = {"xflip": 0.0, "rotate90": 0.0, "xint_x": 0.5, "xint_y": 0.5, "rotate_pre": 0.5,
                    "rotate_post": 0.5, "lumaflip": 0.0, "hue": 0.5}


def scripted(batch: int, uniforms: dict | None = None, normals: dict | None = None) -> ScriptedDraws:
    """Draws with the named columns set (a number or a (B,) tensor); gates 0, the rest neutral."""
    values = {**NEUTRAL_UNIFORMS, **(uniforms or {})}
    u = torch.zeros(batch, len(UNIFORM_COLUMNS))
    for i, name in enumerate(UNIFORM_COLUMNS):
        u[:, i] = values.get(name, 0.0)
    n = torch.zeros(batch, len(NORMAL_COLUMNS))
    for i, name in enumerate(NORMAL_COLUMNS):
        n[:, i] = (normals or {}).get(name, 0.0)
    return ScriptedDraws(u, n)


def only(*ops: str, **kwargs) -> AdaptiveAugment:
    return AdaptiveAugment({op: 1 for op in ops}, p=1.0, target=None, **kwargs)


def seeded_draws(seed: int = 0, rank: int = 0, world_size: int = 1) -> GeneratorDraws:
    return GeneratorDraws(torch.Generator().manual_seed(seed), rank, world_size)


# ---------------------------------------------------------------------------------------------------------
# p = 0 and the blits: exact.


@pytest.mark.parametrize("shape", [(8, 1, 28, 28), (8, 3, 32, 32), (4, 3, 16, 16), (2, 1, 256, 256)])
def test_p_zero_is_exactly_the_identity(shape):
    x = torch.randn(shape)
    augment = AdaptiveAugment("bgc", p=0.0)
    assert torch.equal(augment(x, seeded_draws()), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_p_zero_applies_nothing_even_for_the_smallest_uniform(channels):
    """Gates are u < multiplier * p: u = 0 is a possible draw, and p = 0 must still apply nothing."""
    x = torch.randn(2, channels, 16, 16)
    augment = AdaptiveAugment("bgc", p=0.0)
    values = {name: 0.0 for name in UNIFORM_COLUMNS}
    assert torch.equal(augment(x, scripted(2, values, {name: 1.0 for name in NORMAL_COLUMNS})), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_xflip_mirrors_left_right(channels):
    x = torch.randn(2, channels, 16, 16)
    out = only("xflip")(x, scripted(2, {"xflip": torch.tensor([0.75, 0.25])}))  # flip, no flip
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


@pytest.mark.parametrize("size", [16, 28])
def test_rotate90_by_k_is_torch_rot90(size):
    x = torch.randn(4, 3, size, size)
    k = torch.arange(4)
    out = only("rotate90")(x, scripted(4, {"rotate90": (k + 0.5) / 4}))
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], i, dims=(1, 2))), i


def reflect_shift(image: torch.Tensor, tx: int, ty: int) -> torch.Tensor:
    """(C, H, W) content moved right by tx and down by ty, reflected (numpy 'reflect') at the borders."""
    pad = max(abs(tx), abs(ty))
    padded = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
    height, width = image.shape[1:]
    return padded[:, pad - ty:pad - ty + height, pad - tx:pad - tx + width]


def test_integer_translation_shifts_by_whole_pixels_with_reflection():
    x = torch.randn(3, 3, 32, 32)
    shifts = [(3, -2), (-4, 4), (0, 1)]  # |t| <= xint_max * 32 = 4
    u_x = torch.tensor([(tx / 4 + 1) / 2 for tx, _ in shifts])
    u_y = torch.tensor([(ty / 4 + 1) / 2 for _, ty in shifts])
    out = only("xint")(x, scripted(3, {"xint_x": u_x, "xint_y": u_y}))
    for i, (tx, ty) in enumerate(shifts):
        assert torch.equal(out[i], reflect_shift(x[i], tx, ty)), (tx, ty)


def test_the_blits_compose_in_the_reference_order_exactly():
    """G_inv = flip @ rot90 @ translate (output pixel -> input pixel): the image is flipped, then turned,
    then shifted."""
    x = torch.randn(1, 3, 16, 16)
    out = only("xflip", "rotate90", "xint")(x, scripted(1, {"xflip": 0.75, "rotate90": 0.3, "xint_x": 0.75,
                                                             "xint_y": 0.0}))
    expected = reflect_shift(torch.rot90(x[0].flip(-1), 1, dims=(1, 2)), 1, -2)  # k = 1, t = (1, -2)
    assert torch.equal(out[0], expected)


# ---------------------------------------------------------------------------------------------------------
# The general geometric ops, on a linear ramp (which bilinear interpolation reproduces exactly): inside the
# image, the output at each pixel is the ramp at the source position the reference's matrix gives.


def reference_inverse_transform(values: dict[str, float], width: int, height: int) -> np.ndarray:
    """stylegan2-ada's G_inv for one sample, from its formulas, in float64 (centred pixel coordinates)."""
    def translate(tx, ty): return np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])
    def scale(sx, sy): return np.array([[sx, 0, 0], [0, sy, 0], [0, 0, 1.0]])
    def rotate(t): return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1.0]])
    g = np.eye(3)
    g = g @ scale(1 / (1 - 2 * np.floor(values["xflip"] * 2)), 1)  # scale2d_inv(1 - 2i, 1)
    g = g @ rotate(np.pi / 2 * np.floor(values["rotate90"] * 4))  # rotate2d_inv(-pi/2 i)
    t = (np.array([values["xint_x"], values["xint_y"]]) * 2 - 1) * 0.125
    g = g @ translate(-np.round(t[0] * width), -np.round(t[1] * height))  # translate2d_inv
    s = 2 ** (values["scale"] * 0.2)
    g = g @ scale(1 / s, 1 / s)  # scale2d_inv(s, s)
    g = g @ rotate((values["rotate_pre"] * 2 - 1) * np.pi)  # rotate2d_inv(-theta)
    s = 2 ** (values["aniso"] * 0.2)
    g = g @ scale(1 / s, s)  # scale2d_inv(s, 1 / s)
    g = g @ rotate((values["rotate_post"] * 2 - 1) * np.pi)
    g = g @ translate(-values["xfrac_x"] * 0.125 * width, -values["xfrac_y"] * 0.125 * height)
    return g


def ramp(batch: int, channels: int, size: int) -> tuple[torch.Tensor, list[tuple[float, float, float]]]:
    coefficients = [(0.05, -0.03, 0.1), (-0.02, 0.04, -0.2), (0.01, 0.02, 0.0)][:channels]
    j = torch.arange(size, dtype=torch.float32)
    image = torch.stack([a * j + b * j[:, None] + c for a, b, c in coefficients])  # (C, H, W)
    return image.expand(batch, channels, size, size).clone(), coefficients


@pytest.mark.parametrize("ops, uniforms, normals", [
    (("scale",), {}, {"scale": 1.5}),
    (("scale",), {}, {"scale": -2.0}),
    (("rotate",), {"rotate_pre": 0.6, "rotate_post": 0.35}, {}),
    (("aniso",), {}, {"aniso": 1.2}),
    (("xfrac",), {}, {"xfrac_x": 0.7, "xfrac_y": -0.3}),
    (OPS[:7], {"xflip": 0.75, "rotate90": 0.6, "xint_x": 0.8, "xint_y": 0.4, "rotate_pre": 0.55,
               "rotate_post": 0.3}, {"scale": 0.5, "aniso": -0.8, "xfrac_x": 0.2, "xfrac_y": 0.5}),
])
@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_geometric_ops_sample_where_the_reference_matrix_says(ops, uniforms, normals, channels, size):
    x, coefficients = ramp(1, channels, size)
    out = only(*ops)(x, scripted(1, uniforms, normals))[0]
    values = {**NEUTRAL_UNIFORMS, **uniforms, "scale": 0.0, "aniso": 0.0, "xfrac_x": 0.0, "xfrac_y": 0.0, **normals}
    g = reference_inverse_transform(values, size, size)
    centre = (size - 1) / 2
    ys, xs = np.meshgrid(np.arange(size) - centre, np.arange(size) - centre, indexing="ij")
    col = g[0, 0] * xs + g[0, 1] * ys + g[0, 2] + centre
    row = g[1, 0] * xs + g[1, 1] * ys + g[1, 2] + centre
    inside = torch.from_numpy((col >= 0) & (col <= size - 1) & (row >= 0) & (row <= size - 1))
    assert inside.float().mean() > 0.3
    for channel, (a, b, c) in enumerate(coefficients):
        expected = torch.from_numpy(a * col + b * row + c).float()
        torch.testing.assert_close(out[channel][inside], expected[inside], atol=2e-5, rtol=0)
    assert not torch.equal(out, x[0])


def test_reflection_fills_what_lies_outside():
    """Zoomed out by 2 (s = 2^(-5 * 0.2) = 1/2): no zeros at the borders, every value from the image."""
    x = torch.rand(1, 1, 16, 16) + 1  # values in [1, 2)
    out = only("scale")(x, scripted(1, normals={"scale": -5.0}))  # s = 1/2
    assert out.min() >= 1 and out.max() < 2


# ---------------------------------------------------------------------------------------------------------
# Colour.


@pytest.mark.parametrize("channels", [1, 3])
def test_brightness_adds_and_contrast_multiplies(channels):
    x = torch.randn(2, channels, 16, 16)
    out = only("brightness")(x, scripted(2, normals={"brightness": torch.tensor([1.5, -1.0])}))
    torch.testing.assert_close(out, x + torch.tensor([0.3, -0.2]).view(2, 1, 1, 1), atol=1e-6, rtol=0)
    out = only("contrast")(x, scripted(2, normals={"contrast": torch.tensor([1.0, -2.0])}))
    torch.testing.assert_close(out, x * torch.tensor([2**0.5, 0.5]).view(2, 1, 1, 1), atol=1e-6, rtol=1e-6)


def test_colour_ops_compose_in_the_reference_order():
    """brightness, then contrast, then the luma flip: -(c (x + b)), on one channel."""
    x = torch.randn(1, 1, 16, 16)
    out = only("brightness", "contrast", "lumaflip")(
        x, scripted(1, {"lumaflip": 0.75}, {"brightness": 1.0, "contrast": 2.0}))
    torch.testing.assert_close(out, -(2.0 * (x + 0.2)), atol=1e-6, rtol=1e-6)


def test_luma_flip_negates_gray_and_reflects_colour_across_the_gray_axis():
    gray = torch.randn(2, 1, 16, 16)
    out = only("lumaflip")(gray, scripted(2, {"lumaflip": torch.tensor([0.75, 0.25])}))
    assert torch.equal(out[0], -gray[0]) and torch.equal(out[1], gray[1])
    rgb = torch.randn(1, 3, 16, 16)
    out = only("lumaflip")(rgb, scripted(1, {"lumaflip": 0.75}))
    luma = rgb.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out, rgb - 2 * luma, atol=1e-6, rtol=0)  # (I - 2 v v^T) x


def test_hue_rotation_by_a_third_of_a_turn_cycles_the_channels():
    x = torch.randn(1, 3, 16, 16)
    out = only("hue")(x, scripted(1, {"hue": 5 / 6}))  # theta = (2u - 1) pi = 2 pi / 3
    torch.testing.assert_close(out, x.roll(1, dims=1), atol=1e-5, rtol=0)  # red -> green -> blue


def test_saturation_scales_the_distance_to_gray():
    x = torch.randn(2, 3, 16, 16)
    out = only("saturation")(x, scripted(2, normals={"saturation": torch.tensor([1.0, -30.0])}))
    luma = x.mean(dim=1, keepdim=True)
    torch.testing.assert_close(out[0], (luma + 2 * (x - luma))[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], luma[1].expand(3, -1, -1), atol=1e-5, rtol=0)  # s = 2^-30: gray


def test_hue_and_saturation_are_the_identity_for_one_channel():
    x = torch.randn(2, 1, 16, 16)
    out = only("hue", "saturation")(x, scripted(2, {"hue": 0.9}, {"saturation": 1.0}))
    assert torch.equal(out, x)


def test_one_channel_gets_what_three_equal_channels_get():
    """The reference's one-channel rule: the colour matrix applied to a gray pixel, averaged back."""
    gray = torch.randn(3, 1, 16, 16)
    draws = scripted(3, {"lumaflip": torch.tensor([0.75, 0.25, 0.9]), "hue": torch.tensor([0.1, 0.7, 0.4])},
                     {"brightness": torch.tensor([0.5, -1.0, 2.0]), "contrast": torch.tensor([1.0, 0.3, -0.5]),
                      "saturation": torch.tensor([0.4, -0.6, 1.1])})
    augment = AdaptiveAugment("color", p=1.0, target=None)
    one = augment(gray, draws)
    three = augment(gray.expand(3, 3, 16, 16), draws)
    torch.testing.assert_close(three, one.expand(3, 3, 16, 16), atol=1e-5, rtol=1e-5)


def test_colour_ops_refuse_two_channels_and_geometric_ops_take_them():
    x = torch.randn(2, 2, 16, 16)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        AdaptiveAugment("bgc", p=0.5)(x, seeded_draws())
    assert AdaptiveAugment("bg", p=0.5)(x, seeded_draws()).shape == x.shape


# ---------------------------------------------------------------------------------------------------------
# Probabilities, draws, ranks.


def test_each_op_applies_with_probability_multiplier_times_p():
    """Over 20000 samples at p = 0.4: an x-flip (drawn 1 half the time) in p / 2 of them; a rotation
    (before or after aniso) in p; integer translation in p * 63/64 (at 32 px, t = round(U[-4, 4]) is 0 with
    probability 1/8 on each axis); multiplier 0.5 halves it."""
    batch, p = 20000, 0.4
    draws = seeded_draws(7)
    u, n = draws.uniform(batch, len(UNIFORM_COLUMNS)), draws.normal(batch, len(NORMAL_COLUMNS))
    eye = torch.eye(3)
    changed = lambda augment: (augment.geometric_transform(u, n, 32, 32) != eye).any(dim=(1, 2)).float().mean()  # noqa: E731
    assert abs(changed(AdaptiveAugment({"xflip": 1}, p=p)) - p / 2) < 0.015
    assert abs(changed(AdaptiveAugment({"rotate": 1}, p=p)) - p) < 0.015
    assert abs(changed(AdaptiveAugment({"xint": 1}, p=p)) - p * 63 / 64) < 0.015
    assert abs(changed(AdaptiveAugment({"rotate": 0.5}, p=p)) - p / 2) < 0.015


def test_every_call_draws_the_same_amount_whatever_p_and_the_pipeline():
    draws = CountingDraws(seeded_draws())
    for augment in (AdaptiveAugment("bgc", p=0.0), AdaptiveAugment("bgc", p=1.0), AdaptiveAugment("blit", p=0.3)):
        augment(torch.randn(4, 1, 16, 16), draws)
    assert draws.calls == [("uniform", 4, (21,)), ("normal", 4, (7,))] * 3


def test_the_same_seed_gives_the_same_output_and_another_seed_another():
    x = torch.randn(8, 3, 16, 16)
    augment = AdaptiveAugment("bgc", p=0.7)
    assert torch.equal(augment(x, seeded_draws(1)), augment(x, seeded_draws(1)))
    assert not torch.equal(augment(x, seeded_draws(1)), augment(x, seeded_draws(2)))


def test_two_ranks_of_b_augment_as_one_process_of_2b():
    x = torch.randn(8, 1, 28, 28)
    augment = AdaptiveAugment("bgc", p=0.7)
    whole = augment(x, seeded_draws(3))
    halves = [augment(x[4 * r:4 * (r + 1)], seeded_draws(3, r, 2)) for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)


def test_unknown_pipelines_and_ops_name_the_key():
    with pytest.raises(ValueError, match=r"augment\.pipeline.*'bgcfnc'.*bgc"):
        AdaptiveAugment("bgcfnc")
    with pytest.raises(ValueError, match=r"augment\.pipeline.*\['cutout'\]"):
        AdaptiveAugment({"xflip": 1, "cutout": 1})


# ---------------------------------------------------------------------------------------------------------
# Derivatives and host syncs.


@pytest.mark.parametrize("channels", [1, 3])
def test_first_and_second_derivatives_are_right(channels):
    """gradgradcheck in float64 at p = 1 with general parameters (fractional positions, reflection)."""
    torch.manual_seed(0)
    x = torch.randn(2, channels, 16, 16, dtype=torch.float64, requires_grad=True)
    augment = AdaptiveAugment("bgc", p=1.0, target=None)
    draws = seeded_draws(4)
    u, n = draws.uniform(2, len(UNIFORM_COLUMNS)), draws.normal(2, len(NORMAL_COLUMNS))
    fixed = ScriptedDraws(u, n)
    out = augment(x, fixed)
    assert out.dtype == torch.float64 and not torch.equal(out, x)
    assert torch.autograd.gradcheck(lambda images: augment(images, fixed), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda images: augment(images, fixed), (x,), fast_mode=True)


@pytest.mark.parametrize("channels", [1, 3])
def test_an_r1_penalty_back_propagates_through_the_augmentation_without_host_sync(channels):
    D = tiny_discriminator(channels)
    x = torch.randn(4, channels, 16, 16)
    D(x)  # materialise the lazy layer
    augment = AdaptiveAugment("bgc", p=0.8)
    with NoHostSync():
        grad, penalty = r1_step(D, augment, x, seeded_draws())
        augment.accumulate(D(augment(x, seeded_draws(1))).detach())
        stats = augment.adjust(lambda t: t, batch_size_global=4)
    assert grad.abs().sum() > 0 and torch.isfinite(penalty) and set(stats) == {"augment_p", "augment_r_t"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())


def test_the_sync_detector_catches_a_sync():
    with pytest.raises(AssertionError, match="host sync"), NoHostSync():
        torch.ones(2).sum().item()


def test_rotation_matrices_use_angles_in_the_documented_range():
    """rotate_max = 1: u -> (2u - 1) pi, so u = 0.75 turns the sampling grid by +pi / 2 exactly enough to
    match rot90 on a 16 px image up to float rounding."""
    x = torch.randn(1, 1, 16, 16)
    out = only("rotate")(x, scripted(1, {"rotate_pre": 0.75, "rotate_post": 0.5}))
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    assert math.isclose((0.75 * 2 - 1) * math.pi, math.pi / 2)
