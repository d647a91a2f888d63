"""Kernel Inception Distance (Bińkowski et al. 2018) in any feature space: the unbiased estimate of MMD^2
with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets, in float64.

Computed as torch-fidelity computes it (`metric_kid.kid_features_to_metric`, itself from the MMD-GAN code):
`subsets` subsets (default 100) of `subset_size` samples (default 1000; here clipped to the smaller set)
drawn without replacement by one np.random.RandomState(seed), set 1 then set 2 for each subset; the mean and
the population std (ddof 0) of the subsets' MMD^2. With the same features, seed and sizes the subsets, and so
the numbers, are torch-fidelity's (its default seed is 2020, as here). Unlike FID it has an unbiased
estimator: its expected value does not depend on the sample count, and it can be slightly negative.

The kernel matrices are computed with torch in float64 on the features' device (3 (m, m) matrices per
subset; 100 subsets of 1000 in 2048-d is ~1.2 TFLOP: seconds on a GPU, about a minute on one CPU core).
"""

from __future__ import annotations

import numpy as np
import torch

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's rng_seed default


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> torch.Tensor:
    """(x y^T * gamma + coef0)^degree for x (m, d), y (n, d): (m, n); gamma defaults to 1 / d."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: torch.Tensor, k_xy: torch.Tensor, k_yy: torch.Tensor) -> float:
    """Unbiased MMD^2 from the three (m, m) kernel matrices: the diagonals of K_XX and K_YY are left out,
    K_XY is averaged whole (the MMD-GAN / torch-fidelity "unbiased" estimator)."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())
    return float(within / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def _as_float64(features: np.ndarray | torch.Tensor, device: torch.device | None) -> torch.Tensor:
    tensor = torch.as_tensor(features).detach()
    if tensor.ndim != 2:
        raise ValueError(f"KID needs (N, D) features, got shape {tuple(tensor.shape)}")
    return tensor.to(device=device if device is not None else tensor.device, dtype=torch.float64)


@torch.no_grad()
def kid(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor, *,
        subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = KID_SEED,
        degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
        device: torch.device | str | None = None) -> dict[str, float]:
    """{"kid": mean, "kid_std": std} of the unbiased MMD^2 over `subsets` random subsets.

    features1 (N1, D), features2 (N2, D): any feature space (Inception's 2048-d pool3, the packaged LeNet's
    128-d). The order matters only for which draws go to which set: torch-fidelity's input1 (generated)
    first to get its numbers. subset_size is min(subset_size, N1, N2) (torch-fidelity refuses sets smaller
    than subset_size instead). The kernel runs on `device`, else where features1 is.
    """
    x_all = _as_float64(features1, torch.device(device) if device is not None else None)  # (N1, D)
    y_all = _as_float64(features2, x_all.device)  # (N2, D)
    if x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"KID feature dimensions differ: {x_all.shape[1]} vs {y_all.shape[1]}")
    n1, n2 = len(x_all), len(y_all)
    m = min(subset_size, n1, n2)
    if m < 2 or subsets < 1:
        raise ValueError(f"KID needs at least 2 samples per set and 1 subset: got {n1} and {n2} samples, "
                         f"subset_size={subset_size}, subsets={subsets}")
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for i in range(subsets):
        x = x_all[torch.from_numpy(rng.choice(n1, m, replace=False)).to(x_all.device)]  # (m, D)
        y = y_all[torch.from_numpy(rng.choice(n2, m, replace=False)).to(x_all.device)]  # (m, D)
        values[i] = mmd2_unbiased(polynomial_kernel(x, x, degree, gamma, coef0),
                                  polynomial_kernel(x, y, degree, gamma, coef0),
                                  polynomial_kernel(y, y, degree, gamma, coef0))
    return {"kid": float(values.mean()), "kid_std": float(values.std())}
