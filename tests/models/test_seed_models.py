"""At 28x28x1 and conditioning none, every model is the seed's: same state_dict names and shapes, same
initial values under the same seed, same forward outputs (pinned in seed_fingerprints.py from the code
before conditioning and other image sizes were added)."""

from __future__ import annotations

import pytest
import torch

from gan_dist.config import ModelConfig
from gan_dist.models.base import ByteMaskDropout
from gan_dist.models.build import build_models
from tests.models.fingerprint import state_fingerprint, tensor_fingerprint
from tests.models.seed_fingerprints import SEED_FINGERPRINTS

# Initial values come from the same RNG draws, so their float64 sums agree to the 9 decimals pinned;
# forward outputs may differ in the last bits between CPU kernels (SIMD width), hence the looser tolerance.
STATE_TOL = {"rel": 1e-13, "abs": 2e-9}
FORWARD_TOL = {"rel": 1e-5, "abs": 1e-5}


def build(key: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    name, norm = key.split("/")
    torch.manual_seed(0)
    return build_models(ModelConfig(name=name, g_norm=norm, d_norm=norm), (1, 28, 28), num_classes=10)


def assert_state_matches(module: torch.nn.Module, pinned: dict) -> None:
    actual = state_fingerprint(module)
    assert list(actual) == list(pinned)  # names, in state_dict order
    for name, (shape, abs_sum, ramp_sum) in pinned.items():
        assert actual[name][0] == tuple(shape), name
        assert actual[name][1:] == pytest.approx((abs_sum, ramp_sum), **STATE_TOL), name


@pytest.mark.parametrize("key", list(SEED_FINGERPRINTS))
def test_initial_state_is_the_seeds(key: str) -> None:
    g, d = build(key)  # num_classes=10 with conditioning none: still unconditional
    assert g.num_classes == 0 and d.num_classes == 0
    assert_state_matches(g, SEED_FINGERPRINTS[key]["g_state"])
    assert_state_matches(d, SEED_FINGERPRINTS[key]["d_state"])


@pytest.mark.parametrize("key", list(SEED_FINGERPRINTS))
def test_forward_is_the_seeds(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The seed's dropout masks came from torch's bernoulli; ByteMaskDropout draws the same distribution from
    # another random stream (tests/models/test_dropout.py), so the pinned train-mode outputs use torch's.
    monkeypatch.setattr(ByteMaskDropout, "forward", torch.nn.Dropout.forward)
    pinned = SEED_FINGERPRINTS[key]
    g, d = build(key)
    inputs = torch.Generator().manual_seed(123)
    z = torch.randn(6, 100, generator=inputs)
    x = torch.rand(6, 1, 28, 28, generator=inputs) * 2 - 1
    torch.manual_seed(7)  # dropout masks
    with torch.no_grad():
        fake = g(z)
        actual = {"g_train": tensor_fingerprint(fake), "d_train": tensor_fingerprint(d(x)),
                  "d_fake_train": tensor_fingerprint(d(fake))}
        g.eval()
        d.eval()
        actual |= {"g_eval": tensor_fingerprint(g(z)), "d_eval": tensor_fingerprint(d(x))}
    for name, value in actual.items():
        assert value == pytest.approx(pinned[name], **FORWARD_TOL), name


@pytest.mark.parametrize("change", ["swap", "nudge"])
def test_fingerprint_detects_a_swap_or_a_tiny_change(change: str) -> None:
    """The pin can fail: swapping two weights, or moving one by 1e-7, breaks it."""
    g, _ = build("keras_dcgan/batch")
    pinned = SEED_FINGERPRINTS["keras_dcgan/batch"]["g_state"]
    assert_state_matches(g, pinned)
    with torch.no_grad():
        w = g.conv1.weight.view(-1)
        if change == "swap":
            w[[10, 90_000]] = w[[90_000, 10]]
        else:
            w[1000] += 1e-7
    with pytest.raises(AssertionError):
        assert_state_matches(g, pinned)
