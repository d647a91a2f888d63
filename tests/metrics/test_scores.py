"""The metric math on synthetic data with known answers (no MNIST, no network: milliseconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan_dist.metrics.classes import class_accuracy, class_fractions, class_histogram, inception_score
from gan_dist.metrics.fid import (
    class_statistics,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    intra_fid,
    intra_fid_note,
    left_out_classes,
    trace_sqrt_product,
)
from gan_dist.metrics.prdc import knn_radii, prdc


def test_fid_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 32))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_diagonal_gaussians_matches_closed_form():
    # For diagonal covariances: |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2, with s the standard deviations.
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 2.0, size=16), rng.uniform(0.1, 2.0, size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1**2), mu2, np.diag(s2**2)) == pytest.approx(expected, rel=1e-10)


def test_fid_trace_term_matches_scipy_sqrtm_on_near_singular_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a = rng.normal(size=(20, 64))  # rank 20 < 64: singular, where sqrtm returns complex noise
    b = rng.normal(size=(40, 64))
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = np.trace(linalg.sqrtm(sigma1 @ sigma2)).real
    assert trace_sqrt_product(sigma1, sigma2) == pytest.approx(reference, rel=1e-6)


def test_fid_grows_with_the_mean_shift_and_is_not_negative():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 8))
    y = rng.normal(size=(2000, 8))
    near, far = fid_from_features(x, y), fid_from_features(x, y + 3.0)
    assert 0.0 <= near < 0.1
    assert far == pytest.approx(8 * 9.0, rel=0.05)  # |shift|^2 = 8 dims x 3^2


def test_feature_statistics_are_float64_and_reject_one_sample():
    mu, sigma = feature_statistics(torch.randn(10, 4))
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (4, 4)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 4)))


def _two_modes(n: int, seed: int, modes: tuple[int, ...] = (0, 1)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-10.0, 0.0], [10.0, 0.0]])
    which = torch.tensor(modes)[torch.randint(len(modes), (n,), generator=g)]
    return centers[which] + torch.randn(n, 2, generator=g)  # (n, 2)


def test_knn_radii_skip_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    radii = knn_radii(x, (1, 2))
    assert radii[1].tolist() == [1.0, 1.0, 2.0, 3.0]
    assert radii[2].tolist() == [3.0, 2.0, 3.0, 5.0]


def test_prdc_of_a_set_with_itself():
    x = _two_modes(500, 0)
    m = prdc(x, x)
    assert m["precision"] == m["recall"] == m["coverage"] == 1.0
    assert m["density"] >= 1.0  # every point is in its own ball, plus its neighbours'


def test_prdc_same_distribution_known_values():
    # Independent samples of one distribution: density ~1 and coverage ~1 - 2^-5 = 0.969 (Naeem et al.
    # 2020, M = N, k = 5); in 2-D the k=3 balls cover nearly all of the support, so precision/recall ~1.
    m = prdc(_two_modes(4000, 1), _two_modes(4000, 2), chunk=700)
    assert m["precision"] > 0.93 and m["recall"] > 0.93
    assert 0.9 < m["density"] < 1.1
    assert 0.95 < m["coverage"] < 0.985


def test_prdc_mode_collapse_keeps_precision_and_halves_recall_and_coverage():
    m = prdc(_two_modes(4000, 3), _two_modes(4000, 4, modes=(1,)))
    assert m["precision"] > 0.93
    assert 0.4 < m["recall"] < 0.6
    assert 0.4 < m["coverage"] < 0.55
    assert 0.8 < m["density"] < 1.25


def test_prdc_disjoint_sets_score_zero():
    m = prdc(_two_modes(300, 5), _two_modes(300, 6) + 1000.0)
    assert m == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_needs_more_samples_than_k():
    with pytest.raises(ValueError, match="more than 5 samples"):
        prdc(torch.randn(5, 2), torch.randn(50, 2))


def _one_hot_logits(labels: torch.Tensor, scale: float = 50.0) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, 10).double() * scale  # (N, 10)


def test_inception_score_bounds():
    balanced = _one_hot_logits(torch.arange(1000) % 10)
    assert inception_score(balanced) == pytest.approx(10.0, rel=1e-6)
    assert inception_score(_one_hot_logits(torch.full((1000,), 7))) == pytest.approx(1.0, abs=1e-9)
    assert inception_score(torch.zeros(1000, 10)) == pytest.approx(1.0, abs=1e-9)  # unsure everywhere
    random = inception_score(torch.randn(1000, 10, generator=torch.Generator().manual_seed(0)) * 3)
    assert 1.0 < random < 10.0


def test_class_histogram_balanced_collapsed_and_rare():
    balanced = class_histogram(_one_hot_logits(torch.arange(1000) % 10))
    assert balanced["classes_covered"] == 10 and balanced["class_kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert class_fractions(_one_hot_logits(torch.arange(1000) % 10)).tolist() == pytest.approx([0.1] * 10)
    collapsed = class_histogram(_one_hot_logits(torch.full((500,), 1)))
    assert collapsed["classes_covered"] == 1 and collapsed["class_kl_uniform"] == pytest.approx(math.log(10))
    # Digit 9 at 1% of the samples does not count as covered (threshold 2%).
    labels = torch.cat([torch.arange(990) % 9, torch.full((10,), 9)])
    assert class_histogram(_one_hot_logits(labels))["classes_covered"] == 9


def test_class_accuracy_counts_the_requested_class():
    requested = torch.arange(1000) % 10
    assert class_accuracy(_one_hot_logits(requested), requested) == 1.0
    assert class_accuracy(_one_hot_logits((requested + 1) % 10), requested) == 0.0
    half = torch.where(torch.arange(1000) < 500, requested, (requested + 3) % 10)
    assert class_accuracy(_one_hot_logits(half), requested) == pytest.approx(0.5)


def _class_clusters(n: int, seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of 4 classes, class c a unit Gaussian around (10 c, 0, 0) (+ shift on every axis)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centers = torch.zeros(4, 3)
    centers[:, 0] = torch.arange(4) * 10.0
    return centers[labels] + torch.randn(n, 3, generator=g) + shift, labels


def test_intra_fid_is_near_zero_for_the_same_classes_and_sees_swapped_labels():
    real, real_labels = _class_clusters(8000, 0)
    stats = class_statistics(real, real_labels, 4)
    fake, fake_labels = _class_clusters(8000, 1)
    mean, per_class = intra_fid(fake, fake_labels, stats, 4)
    assert len(per_class) == 4 and mean < 0.02
    # The same images under swapped labels: the unconditional FID is unchanged, intra-FID is not.
    assert fid_from_features(fake, real) < 0.02
    swapped, _ = intra_fid(fake, (fake_labels + 1) % 4, stats, 4)
    # Classes 1..3 get the images of their left neighbour (10 units away), class 0 those of class 3 (30
    # units away): (3 x 10^2 + 30^2) / 4.
    assert swapped == pytest.approx(300.0, rel=0.05)
    shifted, _ = intra_fid(fake + 2.0, fake_labels, stats, 4)
    assert shifted == pytest.approx(12.0, rel=0.05)  # |(2, 2, 2)|^2


def test_intra_fid_leaves_out_classes_without_a_covariance_and_says_which_and_why():
    real, real_labels = _class_clusters(400, 2)
    real_labels[real_labels == 1] = 0
    real_labels[4] = 1  # class 1 has a single reference image: no covariance
    stats = class_statistics(real, real_labels, 4)
    fake, fake_labels = _class_clusters(400, 3)
    fake_labels[fake_labels == 3] = 2  # class 3 never drawn
    mean, per_class = intra_fid(fake, fake_labels, stats, 4)
    assert per_class[1] is None and per_class[3] is None  # never NaN (the JSON records hold null)
    assert not any(math.isnan(v) for v in (per_class[0], per_class[2]))
    assert mean == pytest.approx(float(np.mean([per_class[0], per_class[2]])))
    left_out = left_out_classes(fake_labels, real_labels, 4)
    assert left_out == {1: "100 samples, 1 reference image", 3: "0 samples, 100 reference images"}
    note = intra_fid_note(left_out, 4, ("a", "b", "c", "d"))
    assert note == ("intra-FID over 2 of 4 classes: left out, fewer than 2 images on a side: "
                    "b (100 samples, 1 reference image), d (0 samples, 100 reference images)")
    assert intra_fid(fake[:1], fake_labels[:1], stats, 4)[0] is None  # no class has both: no number at all
    assert "not computed" in intra_fid_note(left_out_classes(fake_labels[:1], real_labels, 4), 4)
