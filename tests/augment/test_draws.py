"""GeneratorDraws: shapes and ranges, rank slices of the global draw, exact resume from the generator state."""

from __future__ import annotations

import pytest
import torch

from gan_dist.augment.draws import Draws, GeneratorDraws, uniform_integers


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_draws_have_the_asked_shape_dtype_and_range():
    draws = GeneratorDraws(seeded())
    assert isinstance(draws, Draws)
    u, n = draws.uniform(8, 3), draws.normal(8, 2, 5)
    assert u.shape == (8, 3) and n.shape == (8, 2, 5)
    assert u.dtype == n.dtype == torch.float32 and u.device == n.device == torch.device("cpu")
    assert 0 <= u.min() and u.max() < 1


def test_two_ranks_get_the_two_halves_of_one_process_with_twice_the_batch():
    whole = GeneratorDraws(seeded(), rank=0, world_size=1)
    ranks = [GeneratorDraws(seeded(), rank=r, world_size=2) for r in range(2)]
    for _ in range(3):  # successive calls stay aligned
        expected_u, expected_n = whole.uniform(8, 5), whole.normal(8, 2)
        halves_u = torch.cat([draws.uniform(4, 5) for draws in ranks])
        halves_n = torch.cat([draws.normal(4, 2) for draws in ranks])
        assert torch.equal(halves_u, expected_u) and torch.equal(halves_n, expected_n)
    assert not torch.equal(ranks[0].uniform(4, 5), ranks[1].uniform(4, 5))  # ranks differ


def test_setting_back_the_generator_state_repeats_the_draws():
    generator = seeded(3)
    draws = GeneratorDraws(generator)
    draws.uniform(4, 2)
    state = generator.get_state()
    first = (draws.uniform(4, 21), draws.normal(4, 7))
    generator.set_state(state)
    again = (draws.uniform(4, 21), draws.normal(4, 7))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0)])
def test_a_bad_rank_is_refused(rank, world_size):
    with pytest.raises(ValueError, match="rank"):
        GeneratorDraws(seeded(), rank=rank, world_size=world_size)


def test_uniform_integers_cover_0_to_n_minus_1():
    u = torch.tensor([0.0, 0.5, 1 - 2**-24], dtype=torch.float32)  # 1 - 2^-24: the largest float32 below 1
    assert uniform_integers(u, 65).tolist() == [0.0, 32.0, 64.0]
    counts = torch.bincount(uniform_integers(torch.rand(40000, generator=seeded()), 4).long(), minlength=4)
    assert counts.shape == (4,) and (counts - 10000).abs().max() < 400  # uniform over 0..3
