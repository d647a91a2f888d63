"""DiffAugment: equal to a transcription of the reference given the same random numbers; deterministic in
the draws; rank-independent; differentiable twice; no host sync."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gan_dist.augment.diffaugment import DiffAugment
from gan_dist.augment.draws import GeneratorDraws
from tests.augment.common import CountingDraws, NoHostSync, ScriptedDraws, r1_step, tiny_discriminator

# ---------------------------------------------------------------------------------------------------------
# The reference (mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py), transcribed with its random
# numbers passed in: torch.rand(B, 1, 1, 1) -> r (B,); torch.randint(lo, hi, [B, 1, 1]) -> a (B, 1, 1) long.


def ref_brightness(x, r):
    return x + (r.view(-1, 1, 1, 1) - 0.5)


def ref_saturation(x, r):
    x_mean = x.mean(dim=1, keepdim=True)
    return (x - x_mean) * (r.view(-1, 1, 1, 1) * 2) + x_mean


def ref_contrast(x, r):
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - x_mean) * (r.view(-1, 1, 1, 1) + 0.5) + x_mean


def ref_translation(x, translation_x, translation_y):
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long), torch.arange(x.size(2), dtype=torch.long),
        torch.arange(x.size(3), dtype=torch.long), indexing="ij")
    grid_x = torch.clamp(grid_x + translation_x + 1, 0, x.size(2) + 1)
    grid_y = torch.clamp(grid_y + translation_y + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[grid_batch, grid_x, grid_y].permute(0, 3, 1, 2).contiguous()


def ref_cutout(x, offset_x, offset_y, ratio=0.5):
    cutout_size = int(x.size(2) * ratio + 0.5), int(x.size(3) * ratio + 0.5)
    grid_batch, grid_x, grid_y = torch.meshgrid(
        torch.arange(x.size(0), dtype=torch.long), torch.arange(cutout_size[0], dtype=torch.long),
        torch.arange(cutout_size[1], dtype=torch.long), indexing="ij")
    grid_x = torch.clamp(grid_x + offset_x - cutout_size[0] // 2, min=0, max=x.size(2) - 1)
    grid_y = torch.clamp(grid_y + offset_y - cutout_size[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype)
    mask[grid_batch, grid_x, grid_y] = 0
    return x * mask.unsqueeze(1)


def randint_from(u, low, high):
    """The reference's randint(low, high, [B, 1, 1]) from uniforms u (B,), as DiffAugment derives it."""
    return (torch.floor(u * (high - low)).clamp(max=high - low - 1).long() + low).view(-1, 1, 1)


def ref_diffaugment(x, policy, u):
    """The reference's DiffAugment with the uniforms u (B, n) consumed in DiffAugment's column order."""
    column = 0

    def take(count):
        nonlocal column
        column += count
        return u[:, column - count:column]

    for name in policy.split(","):
        if name == "color":
            x = ref_brightness(x, take(1)[:, 0])
            x = ref_saturation(x, take(1)[:, 0])
            x = ref_contrast(x, take(1)[:, 0])
        elif name == "translation":
            shift_x, shift_y = int(x.size(2) * 0.125 + 0.5), int(x.size(3) * 0.125 + 0.5)
            t = take(2)
            x = ref_translation(x, randint_from(t[:, 0], -shift_x, shift_x + 1),
                                randint_from(t[:, 1], -shift_y, shift_y + 1))
        elif name == "cutout":
            size = int(x.size(2) * 0.5 + 0.5), int(x.size(3) * 0.5 + 0.5)
            t = take(2)
            x = ref_cutout(x, randint_from(t[:, 0], 0, x.size(2) + (1 - size[0] % 2)),
                           randint_from(t[:, 1], 0, x.size(3) + (1 - size[1] % 2)))
    assert column == u.shape[1]
    return x


# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["color,translation,cutout", "cutout,color", "translation,translation"])
@pytest.mark.parametrize("shape", [(16, 1, 28, 28), (8, 3, 32, 32), (8, 3, 16, 16), (6, 1, 18, 18)])
def test_equals_the_reference_given_the_same_random_numbers(policy, shape):
    """(18 px: an odd cutout size, 9.) Uniforms include the ends of their range."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    augment = DiffAugment(policy)
    u = torch.rand(shape[0], augment.draws_per_sample)
    u[0], u[1] = 0.0, 1 - 2**-24  # extreme shifts and cutout positions
    assert torch.equal(augment(x, ScriptedDraws(u)), ref_diffaugment(x, policy, u))


def test_every_shift_and_cutout_position_matches_the_reference():
    """All 9 x 9 translations of a 32 px image (s = 4) and all 17 x 17 cutout centres of a 16 px one."""
    x = torch.randn(81, 2, 32, 32)
    grid = (torch.arange(9.0) + 0.5) / 9
    u = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(81, 2)
    assert torch.equal(DiffAugment("translation")(x, ScriptedDraws(u)), ref_diffaugment(x, "translation", u))
    x = torch.randn(289, 1, 16, 16)
    grid = (torch.arange(17.0) + 0.5) / 17
    u = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), dim=-1).reshape(289, 2)
    out = DiffAugment("cutout")(x, ScriptedDraws(u))
    assert torch.equal(out, ref_diffaugment(x, "cutout", u))
    assert ((out == 0).sum(dim=[1, 2, 3]) > 0).all()  # every centre cuts something


def test_the_same_seed_gives_the_same_output_and_another_seed_another():
    x = torch.randn(8, 3, 16, 16)
    augment = DiffAugment()
    run = lambda seed: augment(x, GeneratorDraws(torch.Generator().manual_seed(seed)))  # noqa: E731
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_two_ranks_of_b_augment_as_one_process_of_2b():
    x = torch.randn(8, 3, 16, 16)
    augment = DiffAugment()
    whole = augment(x, GeneratorDraws(torch.Generator().manual_seed(5)))
    halves = [augment(x[4 * r:4 * (r + 1)], GeneratorDraws(torch.Generator().manual_seed(5), r, 2))
              for r in range(2)]
    assert torch.equal(torch.cat(halves), whole)


def test_each_call_draws_one_fixed_block_of_uniforms():
    draws = CountingDraws(GeneratorDraws(torch.Generator().manual_seed(0)))
    augment = DiffAugment("color,translation,cutout")
    augment(torch.randn(4, 3, 16, 16), draws)
    augment(torch.randn(4, 1, 28, 28), draws)
    assert draws.calls == [("uniform", 4, (7,))] * 2
    empty = CountingDraws(draws.inner)
    x = torch.randn(2, 1, 16, 16)
    assert DiffAugment("")(x, empty) is x and empty.calls == []


def test_an_unknown_policy_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"augment\.policy.*'colour'.*color, translation, cutout"):
        DiffAugment("colour,cutout")


def test_saturation_is_the_identity_for_one_channel():
    x = torch.randn(4, 1, 16, 16)
    u = torch.rand(4, 3)
    expected = ref_contrast(ref_brightness(x, u[:, 0]), u[:, 2])
    assert torch.equal(DiffAugment("color")(x, ScriptedDraws(u)), expected)


def test_first_and_second_derivatives_are_right():
    """gradgradcheck in float64: the augmentation is linear in the images for fixed draws, so its
    backward (gather's scatter-add, masks, means) must itself be differentiable."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    augment = DiffAugment()
    draws = ScriptedDraws(torch.rand(2, augment.draws_per_sample))
    assert torch.autograd.gradcheck(lambda images: augment(images, draws), (x,), fast_mode=True)
    assert torch.autograd.gradgradcheck(lambda images: augment(images, draws), (x,), fast_mode=True)


def test_an_r1_penalty_back_propagates_through_the_augmentation_without_host_sync():
    D = tiny_discriminator(1)
    x = torch.randn(4, 1, 16, 16)
    D(x)  # materialise the lazy layer
    draws = GeneratorDraws(torch.Generator().manual_seed(0))
    with NoHostSync():
        grad, penalty = r1_step(D, DiffAugment(), x, draws)
    assert grad.abs().sum() > 0 and torch.isfinite(penalty)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())
