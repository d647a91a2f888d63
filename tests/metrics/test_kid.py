"""KID on synthetic features: equal to torch-fidelity's computation for the same features and subsets, to a
brute-force transcription of the estimator, and usable in any feature space (milliseconds, no network)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from gan_dist.metrics.kid import kid, mmd2_unbiased, polynomial_kernel


def _features(n: int, d: int, shift: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.normal(loc=shift, scale=1.0, size=(n, d)))  # (n, d) float64


def test_kid_equals_torch_fidelity_for_the_same_features_and_seed() -> None:
    from torch_fidelity import metric_kid
    f1, f2 = _features(70, 24, 0.0, 1), _features(50, 24, 0.3, 2)
    ours = kid(f1, f2, subsets=12, subset_size=40, seed=7)
    theirs = metric_kid.kid_features_to_metric(f1, f2, kid_subsets=12, kid_subset_size=40, rng_seed=7,
                                               verbose=False)
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-10)
    assert ours["kid_std"] == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-8)
    assert ours["kid"] > 0.05 and ours["kid_std"] > 0  # a real difference, several distinct subsets
    other_seed = kid(f1, f2, subsets=12, subset_size=40, seed=8)
    assert other_seed["kid"] != ours["kid"]  # the seed reaches the subset draws


def test_unbiased_mmd2_matches_its_definition_term_by_term() -> None:
    x, y = _features(6, 5, 0.0, 3), _features(6, 5, 0.5, 4)
    d, m = x.shape[1], len(x)

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a @ b / d + 1.0) ** 3)

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    expected = xx + yy - 2 * xy
    got = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y))
    assert got == pytest.approx(expected, rel=1e-12)
    # Whole sets as one subset: kid() is that number, whatever the seed (std 0).
    assert kid(x, y, subsets=3, subset_size=m, seed=0) == pytest.approx({"kid": expected, "kid_std": 0.0},
                                                                        rel=1e-12, abs=1e-15)


def test_subset_size_is_clipped_to_the_smaller_set() -> None:
    f1, f2 = _features(30, 8, 0.0, 5), _features(12, 8, 0.0, 6)
    assert kid(f1, f2, subsets=4, subset_size=1000, seed=1) == kid(f1, f2, subsets=4, subset_size=12, seed=1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid(f1[:1], f2, subsets=4)
    with pytest.raises(ValueError, match="dimensions differ"):
        kid(f1, f2[:, :4])


def test_kid_in_the_packaged_lenet_feature_space_is_near_zero_for_one_distribution() -> None:
    # 128-d like gan_dist's LeNet features, float32 in (as FeatureNet gives): computed in float64.
    same1 = _features(400, 128, 0.0, 7).float().relu()
    same2 = _features(400, 128, 0.0, 8).float().relu()
    other = _features(400, 128, 0.2, 9).float().relu()
    null = kid(same1, same2, subsets=20, subset_size=100, seed=0)
    shifted = kid(same1, other, subsets=20, subset_size=100, seed=0)
    assert abs(null["kid"]) < 3 * null["kid_std"] + 1e-3  # unbiased: zero in expectation, may be negative
    assert shifted["kid"] > 10 * max(abs(null["kid"]), null["kid_std"])
    assert kid(same1.numpy(), other.numpy(), subsets=20, subset_size=100, seed=0) == shifted  # numpy in too
