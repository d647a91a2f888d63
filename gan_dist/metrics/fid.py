"""Fréchet distance between Gaussians fitted to features (FID, Heusel et al. 2017), in float64.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)).

The trace term uses tr((S1 S2)^(1/2)) = sum_i sqrt(lambda_i(A)) with A = S1^(1/2) S2 S1^(1/2), which is
symmetric positive semi-definite: two `eigh` calls, no complex numbers, and none of the small imaginary
parts that `scipy.linalg.sqrtm(S1 @ S2)` returns on near-singular covariances (the reason pytorch-fid
needs an `eps` retry and an imaginary-part check). Tiny negative eigenvalues from rounding are clipped.
"""

from __future__ import annotations

import numpy as np
import torch


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, both float64."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)  # (N, D)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features for a covariance, got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative rounding noise clipped to 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2, via the eigenvalues of S1^(1/2) S2 S1^(1/2)."""
    root1 = _sqrt_psd(np.asarray(sigma1, dtype=np.float64))
    inner = root1 @ np.asarray(sigma2, dtype=np.float64) @ root1  # (D, D), symmetric PSD
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); >= 0 (rounding clipped)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature dimensions differ: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


def fid_from_features(features1: np.ndarray | torch.Tensor, features2: np.ndarray | torch.Tensor) -> float:
    """FID between two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


MIN_CLASS_SAMPLES = 2  # a covariance needs 2 samples: intra-FID leaves out a class with fewer on either side


def intra_fid(features: torch.Tensor, labels: torch.Tensor, reference_stats: dict[int, tuple[np.ndarray, np.ndarray]],
              num_classes: int) -> tuple[float | None, list[float | None]]:
    """Intra-FID (Miyato & Koyama 2018): the FID of each class's samples against that class's reference
    statistics, averaged over classes. Returns (mean, per-class list).

    features: (N, D); labels: (N,) int64, the class each sample belongs to (for generated images: the
    class requested from G). reference_stats: {class: (mu (D,), sigma (D, D))}, for the classes with at least
    MIN_CLASS_SAMPLES reference images (`class_statistics`). A class with fewer than MIN_CLASS_SAMPLES samples
    or no reference statistics has no covariance: it is left out (None in the list, never NaN), and the mean
    is over the classes that have both (None when none has; `left_out_classes` says which and why). Each
    class's FID is biased upwards by its small sample count (N / K): compare with the floor of the same size.
    """
    labels = labels.cpu()
    per_class: list[float | None] = []
    for c in range(num_classes):
        chosen = features[labels == c]  # (N_c, D)
        if len(chosen) < MIN_CLASS_SAMPLES or c not in reference_stats:
            per_class.append(None)
            continue
        per_class.append(frechet_distance(*feature_statistics(chosen), *reference_stats[c]))
    defined = [value for value in per_class if value is not None]
    return (float(np.mean(defined)) if defined else None), per_class


def left_out_classes(labels: torch.Tensor, reference_labels: torch.Tensor, num_classes: int) -> dict[int, str]:
    """{class: why} for the classes `intra_fid` leaves out: fewer than MIN_CLASS_SAMPLES samples (`labels`) or
    reference images (`reference_labels`), e.g. {3: '1 sample, 0 reference images'}."""
    samples = torch.bincount(labels.cpu().long(), minlength=num_classes)[:num_classes].tolist()
    reference = torch.bincount(reference_labels.cpu().long().clamp(min=0), minlength=num_classes)[:num_classes].tolist()
    if (reference_labels < 0).any():  # an unlabeled reference (-1): no class has reference images
        reference = [0] * num_classes
    return {c: f"{samples[c]} sample{'s' if samples[c] != 1 else ''}, {reference[c]} reference "
               f"image{'s' if reference[c] != 1 else ''}"
            for c in range(num_classes) if min(samples[c], reference[c]) < MIN_CLASS_SAMPLES}


def intra_fid_note(left_out: dict[int, str], num_classes: int, class_names: list[str] | tuple[str, ...] = ()) -> str:
    """One line saying over which classes intra-FID was computed and which were left out, and why ('' when
    none was)."""
    if not left_out:
        return ""
    names = [f"{class_names[c] if c < len(class_names) else c} ({why})" for c, why in sorted(left_out.items())]
    kept = num_classes - len(left_out)
    over = f"over {kept} of {num_classes} classes" if kept else f"not computed (no class of {num_classes} qualifies)"
    return (f"intra-FID {over}: left out, fewer than {MIN_CLASS_SAMPLES} images on a side: {', '.join(names)}")


def class_statistics(features: torch.Tensor, labels: torch.Tensor,
                     num_classes: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{class: (mu, sigma)} of the (N, D) features of each class with at least 2 samples."""
    labels = labels.cpu()
    return {c: feature_statistics(features[labels == c]) for c in range(num_classes) if int((labels == c).sum()) >= 2}
