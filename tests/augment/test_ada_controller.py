"""ADA's p controller: r_t = E[sign(D(real))] over a window, p moved by the reference's step towards the
target, clamped to [0, 1], reduced over ranks, fixed mode, and state that round-trips exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from gan_dist.augment.ada import AdaptiveAugment

IDENTITY = lambda t: t  # noqa: E731  (one process)


def window(augment: AdaptiveAugment, logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """One adjustment window: `interval` D steps of real logits, then adjust with a global batch of 16."""
    for _ in range(augment.interval):
        augment.accumulate(logits)
    return augment.adjust(IDENTITY, batch_size_global=logits.shape[0])


def test_a_memorising_d_raises_p_by_the_reference_step_until_1():
    """16 images x 4 steps / (0.512 kimg * 1000) = 0.125 per window (exact in float32)."""
    augment = AdaptiveAugment("bgc", p=0.0, target=0.6, interval=4, speed_kimg=0.512)
    seen = [window(augment, torch.full((16,), 3.0))["augment_p"].item() for _ in range(10)]
    assert seen == [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.0, 1.0]


def test_the_default_speed_moves_p_by_batch_times_interval_over_500_kimg():
    augment = AdaptiveAugment("bgc", p=0.5)
    stats = window(augment, torch.full((64,), 0.5))
    torch.testing.assert_close(stats["augment_p"], torch.tensor(0.5 + 64 * 4 / 500_000), atol=1e-7, rtol=0)
    assert stats["augment_r_t"].item() == 1.0


def test_a_d_that_calls_reals_fake_lowers_p_until_0():
    augment = AdaptiveAugment("bgc", p=0.3, speed_kimg=0.512)
    seen = [window(augment, -torch.rand(16) - 0.1)["augment_p"] for _ in range(4)]
    torch.testing.assert_close(torch.stack(seen), torch.tensor([0.175, 0.05, 0.0, 0.0]), atol=1e-7, rtol=0)


def test_r_t_at_the_target_leaves_p_alone_and_counts_zero_logits():
    """Signs (7 x +1, 1 x -1, 2 x 0) over 10 logits: r_t = 0.6 = target, p stays; (8 x +1, 1 x -1, 1 x 0):
    r_t = 0.7, p rises."""
    augment = AdaptiveAugment("bgc", p=0.5, target=0.6, speed_kimg=0.512)
    logits = torch.tensor([1.0] * 7 + [-2.0] + [0.0] * 2)
    stats = window(augment, logits)
    torch.testing.assert_close(stats["augment_r_t"], torch.tensor(0.6))
    assert stats["augment_p"].item() == 0.5
    assert window(augment, torch.tensor([1.0] * 8 + [-2.0, 0.0]))["augment_p"].item() > 0.5


def test_an_empty_window_reports_r_t_0_and_moves_nothing():
    augment = AdaptiveAugment("bgc", p=0.25)
    stats = augment.adjust(IDENTITY, batch_size_global=16)
    assert stats["augment_p"].item() == 0.25 and stats["augment_r_t"].item() == 0.0


def test_the_window_is_summed_over_ranks_and_then_reset():
    """Rank 0 sees 16 positive logits, the other rank 48 negative ones: r_t = (16 - 48) / 64."""
    augment = AdaptiveAugment("bgc", p=0.5, speed_kimg=0.512)
    augment.accumulate(torch.ones(16))
    other_rank = torch.tensor([-48.0, 48.0])
    reduced = []
    stats = augment.adjust(lambda t: reduced.append(t.clone()) or t + other_rank, batch_size_global=64)
    assert torch.equal(reduced[0], torch.tensor([16.0, 16.0]))  # one tensor, one all-reduce
    assert stats["augment_r_t"].item() == -0.5
    assert stats["augment_p"].item() == 0.5 - 64 * 4 / 512
    assert augment.sign_sum.item() == 0 and augment.count.item() == 0


def test_fixed_mode_keeps_p_and_still_reports_r_t():
    augment = AdaptiveAugment("bgc", p=0.35, target=None)
    stats = window(augment, torch.ones(16))
    assert stats["augment_p"].item() == pytest.approx(0.35) and stats["augment_r_t"].item() == 1.0
    assert augment.p.item() == pytest.approx(0.35)


def test_state_round_trips_exactly_through_safetensors(tmp_path):
    """p after a few windows and a half-open window: a restored copy continues identically."""
    torch.manual_seed(0)
    first = AdaptiveAugment("bgc", p=0.0, speed_kimg=3.0)
    for _ in range(3):
        window(first, torch.randn(16) + 1)
    first.accumulate(torch.randn(16))
    save_file(first.state_tensors(), str(tmp_path / "augment.safetensors"))
    second = AdaptiveAugment("bgc", p=0.0, speed_kimg=3.0)
    second.load_state_tensors(load_file(str(tmp_path / "augment.safetensors")))
    for name, value in first.state_tensors().items():
        assert torch.equal(second.state_tensors()[name], value), name
    assert first.p.item() > 0 and first.count.item() == 16
    logits = torch.randn(16) + 0.5
    for augment in (first, second):
        augment.accumulate(logits)
    assert torch.equal(first.adjust(IDENTITY, 16)["augment_p"], second.adjust(IDENTITY, 16)["augment_p"])


def test_a_bad_state_is_refused_and_changes_nothing():
    augment = AdaptiveAugment("bgc", p=0.2)
    augment.accumulate(torch.ones(4))
    before = augment.state_tensors()
    good = {"p": torch.tensor(0.5), "sign_sum": torch.tensor(1.0), "count": torch.tensor(2.0)}
    for bad in ({k: v for k, v in good.items() if k != "count"}, {**good, "p": torch.tensor([0.5])},
                {**good, "p": torch.tensor(1.5)}, {**good, "sign_sum": torch.tensor(float("nan"))},
                {**good, "extra": torch.tensor(0.0)}):
        with pytest.raises(ValueError, match="ADA state"):
            augment.load_state_tensors(bad)
        assert all(torch.equal(augment.state_tensors()[k], v) for k, v in before.items())


def test_fixed_mode_keeps_its_configured_p_on_load():
    augment = AdaptiveAugment("bgc", p=0.1, target=None)
    augment.load_state_tensors({"p": torch.tensor(0.9), "sign_sum": torch.tensor(3.0), "count": torch.tensor(4.0)})
    assert augment.p.item() == pytest.approx(0.1) and augment.count.item() == 4.0


def test_the_state_lives_outside_the_state_dict_as_0_dim_float32():
    augment = AdaptiveAugment("bgc", p=0.4)
    assert augment.state_dict() == {}
    assert augment.p.dtype == torch.float32 and augment.p.shape == ()


@pytest.mark.parametrize("kwargs, key", [
    ({"p": 1.5}, "augment.p"), ({"target": 2.0}, "augment.target"), ({"interval": 0}, "augment.interval"),
    ({"speed_kimg": 0.0}, "augment.speed_kimg"), ({"pipeline": {"xflip": -1}}, "augment.pipeline"),
])
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        AdaptiveAugment(**kwargs)
