"""Metrics on the feature network's class predictions: Inception Score (one split, or torch-fidelity's
shuffled splits) and the class histogram.

Both are mode-collapse signals that FID folds into one number: a generator that draws only 1s can
have crisp samples (high confidence) but covers one class (IS near 1, KL to uniform near log 10).
"""

from __future__ import annotations

import math

import numpy as np
import torch

# A class counts as covered when it gets at least this fraction of the predictions: a fifth of its
# uniform share. Real MNIST's rarest digit (5) is 9.0% of the train split; a generator that draws a
# digit under 2% of the time has as good as lost that mode.
MIN_CLASS_FRACTION = 0.02


@torch.no_grad()
def inception_score(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over one split of all samples; in [1, num_classes].

    logits: (N, C). 1 for a constant or uninformative prediction, C for confident and balanced ones.
    (The original IS averages 10 splits; one split is the lower-variance estimate and needs no seed.)
    """
    log_p = torch.log_softmax(logits.double(), dim=1)  # (N, C)
    log_marginal = torch.logsumexp(log_p, dim=0) - math.log(len(log_p))  # (C,) log p(y)
    kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)  # (N,)
    return float(kl.mean().exp())


@torch.no_grad()
def inception_score_splits(logits: torch.Tensor, splits: int = 10, shuffle: bool = True,
                           seed: int = 2020) -> tuple[float, float]:
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` consecutive chunks of the samples, after a
    seeded permutation (np.random.RandomState(seed)), in float64: torch-fidelity's IS (its defaults: 10
    splits, shuffled with seed 2020, on logits_unbiased). std is the population std (ddof 0)."""
    n = len(logits)
    if n < splits:
        raise ValueError(f"inception score with {splits} splits needs at least {splits} samples, got {n}")
    logits = logits.detach().cpu().double()  # (N, K)
    if shuffle:
        logits = logits[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    log_p = torch.log_softmax(logits, dim=1)  # (N, K)
    scores = []
    for i in range(splits):
        chunk = log_p[i * n // splits:(i + 1) * n // splits]  # (n_i, K)
        log_marginal = torch.logsumexp(chunk, dim=0) - math.log(len(chunk))  # (K,) log p(y) of the split
        kl = (chunk.exp() * (chunk - log_marginal)).sum(dim=1)  # (n_i,)
        scores.append(float(kl.mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))


@torch.no_grad()
def class_fractions(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of the samples predicted as each class: logits (N, C) -> (C,) float64, sums to 1."""
    counts = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1]).double()  # (C,)
    return counts / counts.sum()


def class_histogram(logits: torch.Tensor, min_fraction: float = MIN_CLASS_FRACTION) -> dict[str, float]:
    """classes_covered (classes with >= min_fraction of the predictions) and class_kl_uniform.

    logits: (N, C). class_kl_uniform is KL(histogram || uniform) in nats: 0 when balanced, log C (2.30
    for 10 classes) when every sample is one class.
    """
    fractions = class_fractions(logits)
    nonzero = fractions[fractions > 0]
    kl = float((nonzero * (nonzero * len(fractions)).log()).sum())
    return {"classes_covered": float((fractions >= min_fraction).sum()), "class_kl_uniform": kl}


@torch.no_grad()
def class_accuracy(logits: torch.Tensor, requested: torch.Tensor) -> float:
    """Share of samples the classifier assigns to the class they were generated for, in [0, 1].

    logits: (N, K) of the feature network; requested: (N,) int64, the labels G was given. 1/K for a
    G that ignores its labels (with balanced labels), 1 for one that always draws the requested class.
    """
    return float((logits.argmax(dim=1) == requested.to(logits.device)).double().mean())


def classes_without_samples(labels: torch.Tensor, num_classes: int) -> list[int]:
    """The classes in [0, num_classes) that no label names (e.g. a class too small to give a test image)."""
    counts = torch.bincount(labels.cpu().long(), minlength=num_classes)[:num_classes]
    return [c for c in range(num_classes) if int(counts[c]) == 0]
