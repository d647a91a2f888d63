"""k-NN manifold metrics: precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

Each sample's manifold ball has the radius of its k-th nearest neighbour within its own set.
- precision: fraction of fake samples inside at least one real ball (k=3)      -> fidelity
- recall:    fraction of real samples inside at least one fake ball (k=3)      -> diversity
- density:   real balls (k=5) containing each fake sample, averaged, / k       -> fidelity, ~1 for equal
             distributions, can exceed 1, robust to real outliers
- coverage:  fraction of real samples whose ball (k=5) contains a fake sample -> diversity, ~1 - 2^-k
             (0.97 for k=5) for equal distributions of equal size

Distances are Euclidean, computed in row chunks so that no (N, M) matrix is ever held whole
(10,000 x 10,000 float32 would be 400 MB).
"""

from __future__ import annotations

import torch

from gan_dist.config import ConfigError

PR_K = 3
DC_K = 5


def _chunks(n: int, size: int) -> range:
    return range(0, n, size)


def knn_radii(x: torch.Tensor, ks: tuple[int, ...], chunk: int = 1024) -> dict[int, torch.Tensor]:
    """Distance of each row of x (N, D) to its k-th nearest other row, for each k in ks: {k: (N,)}."""
    kmax = max(ks)
    if len(x) <= kmax:
        raise ValueError(f"need more than {kmax} samples for k={kmax} nearest neighbours, got {len(x)}")
    parts: list[torch.Tensor] = []
    for start in _chunks(len(x), chunk):
        d = torch.cdist(x[start:start + chunk], x)  # (c, N); the row's own 0 is its first neighbour
        parts.append(d.topk(kmax + 1, dim=1, largest=False).values)  # (c, kmax + 1), ascending
    nearest = torch.cat(parts)  # (N, kmax + 1)
    return {k: nearest[:, k] for k in ks}


@torch.no_grad()
def prdc(real: torch.Tensor, fake: torch.Tensor, pr_k: int = PR_K, dc_k: int = DC_K,
         chunk: int = 1024) -> dict[str, float]:
    """precision, recall (k=pr_k) and density, coverage (k=dc_k) of fake (M, D) against real (N, D)."""
    real, fake = real.float(), fake.float()
    real_radii = knn_radii(real, (pr_k, dc_k), chunk)  # {k: (N,)}
    fake_radius = knn_radii(fake, (pr_k,), chunk)[pr_k]  # (M,)
    in_real_manifold = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    density_hits = torch.zeros((), dtype=torch.float64, device=fake.device)
    nearest_fake = torch.full((len(real),), float("inf"), device=real.device)  # (N,)
    for start in _chunks(len(fake), chunk):
        d = torch.cdist(fake[start:start + chunk], real)  # (c, N)
        in_real_manifold[start:start + chunk] = (d <= real_radii[pr_k]).any(dim=1)
        density_hits += (d <= real_radii[dc_k]).sum(dtype=torch.float64)
        nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    in_fake_manifold = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for start in _chunks(len(real), chunk):
        d = torch.cdist(real[start:start + chunk], fake)  # (c, M)
        in_fake_manifold[start:start + chunk] = (d <= fake_radius).any(dim=1)
    return {
        "precision": in_real_manifold.double().mean().item(),
        "recall": in_fake_manifold.double().mean().item(),
        "density": (density_hits / (dc_k * len(fake))).item(),
        "coverage": (nearest_fake <= real_radii[dc_k]).double().mean().item(),
    }


# The fewest samples each side may have: the k-NN radii of the real set at k = DC_K need more real samples
# than DC_K, those of the fake set at k = PR_K more than PR_K (FID needs 2 of each, which these include).
MIN_REAL = max(PR_K, DC_K) + 1
MIN_FAKE = PR_K + 1


class TooFewSamples(ConfigError):
    """A split too small for the k-NN metrics: evaluation cannot run (the message names the split's size)."""


def check_enough_samples(dataset: str, test_size: int, train_size: int, num_samples: int) -> None:
    """Raise TooFewSamples unless the test split (the reference) and the floor's real train images (as many as
    eval.num_samples, at most the split) are large enough for every metric."""
    if test_size < MIN_REAL:
        raise TooFewSamples(
            f"key 'eval.eval_every': the test split of {dataset} has {test_size} image(s); precision/recall/"
            f"density/coverage measure each sample against its {DC_K} nearest neighbours, so evaluation needs at "
            f"least {MIN_REAL} test images: add images (or raise data.test_fraction), or set eval.eval_every=-1")
    if min(train_size, num_samples) < MIN_FAKE:
        raise TooFewSamples(
            f"key 'eval.eval_every': the train split of {dataset} has {train_size} image(s); the real-data floor "
            f"needs at least {MIN_FAKE}: add images, or set eval.eval_every=-1")
