"""Kernel Inception Distance (Bińkowski et al. 2018) in any feature space: the unbiased estimate of MMD^2
with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets, in float64.

Computed as torch-fidelity computes it (`metric_kid.kid_features_to_metric`, itself from the MMD-GAN code):
`subsets` subsets (default 100) of `subset_size` samples (default 1000; here clipped to the smaller set)
drawn without replacement by one np.random.RandomState(seed), set 1 then set 2 for each subset; the mean and
the population std (ddof 0) of the subsets' MMD^2. With the same features, seed and sizes the subsets, and so
the numbers, are torch-fidelity's (its default seed is 2020, as here). Unlike FID it has an unbiased
estimator: its expected value does not depend on the sample count, and it can be slightly negative.

The kernel matrices are computed with torch in float64 on the features' device: each of K_XX, K_XY, K_YY
once for the whole sets when it is small enough (MAX_KERNEL_ENTRIES), else as one (m, m) block per subset
(100 subsets of 1000 in 2048-d, all per subset, is ~1.2 TFLOP: seconds on a GPU, about a minute on one CPU
core). The sums differ from torch-fidelity's only in summation order (~1e-15 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 2020  # torch-fidelity's rng_seed default
# A kernel matrix between two whole sets is computed once when it has at most this many entries (256 MiB of
# float64), and each subset's sum is read from it (two matrix-vector products): 100 subsets of 1000 then cost
# one (N1, N2) kernel instead of 100 (1000, 1000) ones; a larger one (a 10k reference with itself) is computed
# per subset.
MAX_KERNEL_ENTRIES = 2**25


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
        device: torch.device | str | None = None, y_cache: dict[Any, float] | None = None) -> dict[str, float]:
    """{"kid": mean, "kid_std": std} of the unbiased MMD^2 over `subsets` random subsets.

    features1 (N1, D), features2 (N2, D): any feature space (Inception's 2048-d pool3, the packaged LeNet's
    128-d). The order matters only for which draws go to which set: torch-fidelity's input1 (generated)
    first to get its numbers. subset_size is min(subset_size, N1, N2) (torch-fidelity refuses sets smaller
    than subset_size instead). The kernel runs on `device`, else where features1 is.

    y_cache: a dict kept by a caller that compares many sets with the same features2 (the evaluator and its
    fixed reference): the sums over features2's subsets, which depend only on the draws (the same for the same
    sizes and seed), are computed once.
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
    gamma = 1.0 / x_all.shape[1] if gamma is None else gamma

    def block_sum(a: torch.Tensor, b: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]:
        """sum of k(a[i], b[j]) over index sets i, j (without the diagonal: i and j are the same set). From the
        whole matrix computed once when it is small enough, as w_i^T K w_j with 0/1 indicator vectors (a
        subset is drawn without replacement), else from the subset's own (m, m) block."""
        if len(a) * len(b) > MAX_KERNEL_ENTRIES:
            def subset_block(i: torch.Tensor, j: torch.Tensor, diagonal: bool) -> torch.Tensor:
                block = polynomial_kernel(a[i], b[j], degree, gamma, coef0)  # (m, m)
                return block.sum() - (block.diagonal().sum() if diagonal else 0.0)
            return subset_block
        held: list[torch.Tensor] = []  # the whole matrix, computed at the first call (never, when cached)

        def from_whole(i: torch.Tensor, j: torch.Tensor, diagonal: bool) -> torch.Tensor:
            if not held:
                held.append(polynomial_kernel(a, b, degree, gamma, coef0))  # (len(a), len(b))
            whole = held[0]
            rows = whole.new_zeros(len(a)).index_fill_(0, i, 1.0)  # (len(a),) indicator of i
            cols = whole.new_zeros(len(b)).index_fill_(0, j, 1.0)
            return rows @ whole @ cols - (whole.diagonal()[i].sum() if diagonal else 0.0)
        return from_whole

    sum_xx, sum_xy, sum_yy = block_sum(x_all, x_all), block_sum(x_all, y_all), block_sum(y_all, y_all)
    rng = np.random.RandomState(seed)
    values = np.zeros(subsets)
    for s in range(subsets):
        ix = torch.from_numpy(rng.choice(n1, m, replace=False)).to(x_all.device)  # (m,) rows of set 1
        iy = torch.from_numpy(rng.choice(n2, m, replace=False)).to(x_all.device)  # (m,) rows of set 2
        key = (n1, n2, m, seed, s, degree, gamma, coef0)
        if y_cache is None or key not in y_cache:
            y_sum = float(sum_yy(iy, iy, True))
            if y_cache is not None:
                y_cache[key] = y_sum
        within = sum_xx(ix, ix, True) + (y_cache[key] if y_cache is not None else y_sum)
        values[s] = float(within / (m * (m - 1)) - 2.0 * sum_xy(ix, iy, False) / (m * m))
    return {"kid": float(values.mean()), "kid_std": float(values.std())}
