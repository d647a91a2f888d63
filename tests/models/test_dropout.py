"""ByteMaskDropout: nn.Dropout's distribution from an eighth of the random numbers on CPUs."""

from __future__ import annotations

import pytest
import torch

from gan_dist.models.base import ByteMaskDropout, dropout_layer


def test_keeps_each_element_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    dropout = ByteMaskDropout(0.25)
    x = torch.ones(400, 1000)
    y = dropout(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.75, abs=0.003)  # 400,000 Bernoulli(0.75): sd 0.0007
    assert torch.all(y[kept] == 1 / 0.75)
    # Columns and rows look alike (no structure from the bytes of one random word).
    assert kept.float().mean(0).std().item() < 0.03 and kept.float().mean(1).std().item() < 0.03
    # Neighbouring elements (bytes of the same word) are independent: P(both kept) = 0.75^2.
    pairs = (kept[:, ::2] & kept[:, 1::2]).float().mean().item()
    assert pairs == pytest.approx(0.5625, abs=0.004)


def test_gradient_is_the_mask_times_the_scale_and_eval_is_the_identity():
    dropout = ByteMaskDropout(0.25)
    x = torch.randn(8, 4, 5, 5, requires_grad=True)
    y = dropout(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.75)
    assert y.dtype == x.dtype and dropout(x.detach().bfloat16()).dtype == torch.bfloat16
    dropout.eval()
    assert torch.equal(dropout(x), x)


def test_same_seed_same_mask_and_other_p_fall_back_to_torch():
    dropout = ByteMaskDropout(0.25)
    torch.manual_seed(3)
    first = dropout(torch.ones(1000))
    torch.manual_seed(3)
    assert torch.equal(dropout(torch.ones(1000)), first)
    odd = ByteMaskDropout(0.3)  # 0.3 * 256 is not an integer: torch's own dropout, same numbers
    torch.manual_seed(5)
    expected = torch.nn.functional.dropout(torch.ones(1000), 0.3, True)
    torch.manual_seed(5)
    assert torch.equal(odd(torch.ones(1000)), expected)
    assert isinstance(dropout_layer(0.0), torch.nn.Identity)
