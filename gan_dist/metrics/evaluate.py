"""Evaluate a generator in its dataset's feature space: FID, IS, precision/recall, density/coverage, classes,
and for a conditional generator class accuracy and intra-FID.

Every number is measured against the dataset's test split and printed beside its floor: the same metric
for as many real *train* images as generated ones. The floor is what a perfect generator would get
(FID is biased upwards for finite N; precision/recall never reach 1 on real data either).

Conditional generators (`sampling.num_classes_of(G) > 0`) get balanced labels (`sampling.class_labels`:
sample i asks for class i % K) and two more metrics:
  class_accuracy  share of samples the feature network classifies as the class they were asked for
                  (1/K for a G that ignores its labels); only when the network knows the dataset's classes
  intra_fid       FID of each class's samples against the test images of that class, averaged over
                  classes (Miyato & Koyama 2018); N / K samples per class, so it sits above FID
Their floor uses real train images with their own labels, as many per class as G gets.

Distributed: `Evaluator.evaluate` is collective. Every rank draws the same full noise (and label) tensor
from `seed`, takes its share of it through accelerate's sharded data loader, and the features are
gathered with `gather_for_metrics` (which drops the padding of an uneven last batch). So the union of the
generated samples, and every metric up to float summation order, is the same for any number of
processes. The main process computes the metrics and broadcasts them, so every rank returns the same
dict. The reference (test features, labels and statistics) and the floor are computed once and cached on
disk, keyed by the feature network's sha256 and the dataset's fingerprint (two datasets never collide).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from gan_dist.config import ConfigError
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.loader import split_batches
from gan_dist.distributed import build_accelerator, release_accelerator, run_on_main
from gan_dist.files import atomic_write
from gan_dist.metrics.classes import class_accuracy, class_fractions, class_histogram, inception_score
from gan_dist.metrics.fid import (
    class_statistics,
    feature_statistics,
    frechet_distance,
    intra_fid,
    intra_fid_note,
    left_out_classes,
)
from gan_dist.metrics.prdc import DC_K, PR_K, check_enough_samples, prdc
from gan_dist.registry.feature_nets import feature_net
from gan_dist.sampling import class_labels, latent_noise, num_classes_of, sample_images

if TYPE_CHECKING:
    from accelerate import Accelerator

    from gan_dist.checkpoint import GeneratorInfo
    from gan_dist.config import Config
    from gan_dist.data.datasets import ResolvedDataset

# Bump when a metric's definition or a cached file's content changes: it is part of the cache key.
# 2: the reference holds the test labels (intra-FID), the floor the class metrics.
# 3: intra-FID leaves out classes without 2 images on a side (null per class, a note), never NaN.
METRICS_VERSION = 3
# Metrics in the order of the printed table (the class_frac_* keys follow in the JSON).
TABLE_KEYS = ("fid", "intra_fid", "class_accuracy", "inception_score", "precision", "recall", "density",
              "coverage", "classes_covered", "class_kl_uniform")
LOWER_IS_BETTER = {"fid", "intra_fid", "class_kl_uniform"}

T = TypeVar("T")


def metrics_cache_dir() -> Path:
    """$GAN_DIST_METRICS_CACHE, else $XDG_CACHE_HOME/gan_dist/metrics (~/.cache/gan_dist/metrics)."""
    if os.environ.get("GAN_DIST_METRICS_CACHE"):
        return Path(os.environ["GAN_DIST_METRICS_CACHE"]).expanduser()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "gan_dist" / "metrics"


@dataclasses.dataclass
class Reference:
    """The test split in feature space: what generated samples are compared with."""

    features: torch.Tensor  # (N_test, D) float32, CPU
    labels: torch.Tensor  # (N_test,) int64 (all 0 for an unlabeled dataset)
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    class_stats: dict[int, tuple[np.ndarray, np.ndarray]]  # {class: (mu, sigma)}; empty when unlabeled


def compute_metrics(features: torch.Tensor, logits: torch.Tensor, reference: Reference) -> dict[str, float]:
    """The unconditional metrics of one sample set: features (N, D) and class logits (N, K) vs the reference."""
    mu, sigma = feature_statistics(features)
    metrics = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma),
               "inception_score": inception_score(logits)}
    metrics.update(prdc(reference.features.to(features.device), features, pr_k=PR_K, dc_k=DC_K))
    metrics.update(class_histogram(logits))
    return metrics


def conditional_metrics(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, reference: Reference,
                        num_classes: int, with_accuracy: bool, class_names: tuple[str, ...] | list[str] = ()
                        ) -> tuple[dict[str, float], list[float | None], str]:
    """intra_fid (and class_accuracy when `with_accuracy`: the network's classes are the dataset's) of
    samples that belong to `labels` (N,); also returns the per-class FIDs (None: left out) and a note
    saying which classes intra-FID left out and why ('' when none; no intra_fid at all when every class was)."""
    mean, per_class = intra_fid(features, labels, reference.class_stats, num_classes)
    note = intra_fid_note(left_out_classes(labels, reference.labels, num_classes), num_classes, class_names)
    metrics = {} if mean is None else {"intra_fid": mean}
    if with_accuracy:
        metrics["class_accuracy"] = class_accuracy(logits, labels)
    return metrics, per_class, note


@torch.no_grad()
def real_features(net: nn.Module, dataset: ResolvedDataset, split: str, batch_size: int,
                  device: torch.device | str, *, limit: int | None = None,
                  class_quota: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, D), logits (N, K) and labels (N,) (-1 when unlabeled) of a split's images in the
    shards' order, on CPU.

    Reads the whole split, or stops once `limit` images are read and every class c has `class_quota[c]`
    of them (the split may end first).
    """
    features, logits, labels = [], [], []
    seen = 0
    quota = torch.tensor(class_quota or [], dtype=torch.int64)  # (K,) or empty
    counts = torch.zeros_like(quota)
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = split_batches(dataset, split, batch_size)
    for images, batch_labels in batches:
        f, lg = net.features_and_logits(images.to(device))  # (b, D), (b, K)
        features.append(f.cpu())
        logits.append(lg.cpu())
        labels.append(batch_labels.cpu())
        seen += len(images)
        if len(quota):
            counts += torch.bincount(batch_labels, minlength=len(quota))[:len(quota)]
        if limit is not None and seen >= limit and bool((counts >= quota).all()):
            break
    if not features:
        raise RuntimeError(f"no images in the {split} split of {dataset.describe()}")
    return torch.cat(features), torch.cat(logits), torch.cat(labels)


def balanced_indices(labels: torch.Tensor, class_quota: list[int]) -> torch.Tensor:
    """Indices (in order) of the first class_quota[c] samples of each class c: (sum of what exists,) int64."""
    chosen = [torch.nonzero(labels == c).flatten()[:quota] for c, quota in enumerate(class_quota)]
    return torch.cat(chosen).sort().values


def check_generator_fits(info: GeneratorInfo, dataset: ResolvedDataset) -> None:
    """Refuse (ConfigError naming data.dataset) a generator trained for another dataset, shape or class count."""
    shape = tuple(dataset.image_shape)
    problems = []
    if info.dataset != dataset.name:
        problems.append(f"it was trained on data.dataset={info.dataset}, the config says {dataset.name}")
    if tuple(info.image_shape) != shape:
        problems.append(f"it makes {'x'.join(map(str, info.image_shape))} images, the dataset has "
                        f"{'x'.join(map(str, shape))}")
    if info.num_classes and info.num_classes != dataset.num_classes:
        problems.append(f"it is conditioned on {info.num_classes} classes, the dataset has {dataset.num_classes}")
    if problems:
        raise ConfigError(f"key 'data.dataset': the generator does not fit the data to evaluate against: "
                          f"{'; '.join(problems)}. Pass the config (or data.* overrides: data.dataset, "
                          f"data.source, data.channels, data.image_size) of the data it was trained on")


class Evaluator:
    """Collective evaluator: construct it on every rank, call `evaluate` on every rank.

    Construction refuses a split too small for the metrics (TooFewSamples, a ConfigError naming its size),
    then loads the verified feature network for `dataset` on every rank (eval.feature_net through
    its registry entry; FeatureNetworkMissing when there is none) and, on the main process, the
    reference and the floor (cached on disk; the first time it reads the test split and about
    `eval.num_samples` train images). `evaluate(G, seed)` returns the same dict on every rank.
    """

    def __init__(self, config: Config, accelerator: Accelerator, dataset: ResolvedDataset,
                 cache_dir: str | Path | None = None) -> None:
        self.config = config
        self.accelerator = accelerator
        self.dataset = dataset
        self.num_samples = config.eval.num_samples
        self.batch_size = config.eval.batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else metrics_cache_dir()
        check_enough_samples(dataset.name, dataset.test_size, dataset.train_size, self.num_samples)
        spec = feature_net(config.eval.feature_net, dataset.spec.default_feature_net)
        loader = importlib.import_module(spec.module).load_feature_net
        self.net, self.weights_record = loader(dataset, config.eval, accelerator.device)
        # class_accuracy needs the network's classes to be the dataset's (a user's network may not be).
        self.classifies_dataset = dataset.num_classes > 0 and self.net.num_classes == dataset.num_classes
        self._reference: Reference | None = None  # main process only
        self.last_class_fractions: list[float] = []  # of the last evaluate(), main process only
        self.last_intra_fid_per_class: list[float | None] = []  # of the last evaluate() of a conditional G
        self.floor_intra_fid_per_class: list[float | None] = []
        self.last_intra_fid_note = ""  # which classes intra-FID left out, and why ('' when none)
        self.floor_intra_fid_note = ""
        self._floor: dict[str, float] = self._on_main(self._compute_floor)

    # -- collective helpers -------------------------------------------------------------------

    def _on_main(self, fn: Callable[[], T]) -> T:
        """Run fn on the main process, broadcast its result; an error there is raised on every rank."""
        return run_on_main(self.accelerator, fn, what="evaluation")

    # -- reference and floor (main process) ---------------------------------------------------------

    def _cache_key(self) -> str:
        """Dataset name (for people), metrics version, weights sha256 and dataset fingerprint (for machines)."""
        return (f"{self.dataset.name}-v{METRICS_VERSION}-w{self.weights_record['sha256'][:16]}"
                f"-d{self.dataset.fingerprint[:16]}")

    def _read(self, split: str, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return real_features(self.net, self.dataset, split, self.batch_size, self.accelerator.device, **kwargs)

    def reference(self) -> Reference:
        """The test split's features, labels and statistics (main process; cached on disk)."""
        if self._reference is None:
            path = self.cache_dir / f"reference-{self._cache_key()}.npz"
            if path.is_file():
                with np.load(path) as cached:
                    features, labels = torch.from_numpy(cached["features"]), torch.from_numpy(cached["labels"])
                    mu, sigma = cached["mu"], cached["sigma"]
            else:
                features, _, labels = self._read("test")
                mu, sigma = feature_statistics(features)

                atomic_write(path, lambda stream: np.savez(stream, features=features.numpy(), labels=labels.numpy(),
                                                           mu=mu, sigma=sigma))
            stats = class_statistics(features, labels, self.dataset.num_classes) if self.dataset.num_classes else {}
            self._reference = Reference(features, labels, mu, sigma, stats)
        return self._reference

    def class_quota(self) -> list[int]:
        """Samples per class that a conditional G gets from `evaluate` (balanced labels i % K)."""
        labels = class_labels(self.num_samples, self.dataset.num_classes)
        return [] if labels is None else torch.bincount(labels, minlength=self.dataset.num_classes).tolist()

    def _compute_floor(self) -> dict[str, float]:
        reference = self.reference()
        path = self.cache_dir / f"floor-{self._cache_key()}-n{self.num_samples}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            self.floor_intra_fid_per_class = record.get("intra_fid_per_class", [])
            self.floor_intra_fid_note = record.get("intra_fid_note", "")
            return record["metrics"]
        quota = self.class_quota()
        features, logits, labels = self._read("train", limit=self.num_samples, class_quota=quota)
        device = self.accelerator.device
        metrics = compute_metrics(features[:self.num_samples].to(device), logits[:self.num_samples], reference)
        record: dict[str, Any] = {"num_train_images": min(len(features), self.num_samples),
                                  "num_test_images": len(reference.features)}
        if quota:  # the class metrics of real train images, as many per class as a conditional G gets
            chosen = balanced_indices(labels, quota)
            class_metrics, per_class, note = conditional_metrics(
                features[chosen], logits[chosen], labels[chosen], reference, self.dataset.num_classes,
                self.classifies_dataset, self.dataset.class_names)
            metrics.update(class_metrics)
            self.floor_intra_fid_per_class, self.floor_intra_fid_note = per_class, note
            record["intra_fid_per_class"] = per_class
            record["intra_fid_note"] = note
            record["class_counts"] = torch.bincount(labels[chosen], minlength=len(quota)).tolist()
        record["metrics"] = metrics
        atomic_write(path, lambda stream: stream.write(json.dumps(record, indent=2).encode()))
        return metrics

    def floor(self) -> dict[str, float]:
        """The metrics of `eval.num_samples` real train images vs the test split (same on every rank).
        With a labeled dataset it has class_accuracy (the network's accuracy on real train images) and
        intra_fid (real train vs test, per class) too."""
        return dict(self._floor)

    # -- generated samples (all ranks) --------------------------------------------------------------

    @torch.no_grad()
    def generated_features(self, G: nn.Module, seed: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Features (N, D), logits (N, K) and requested labels (N,) (None for an unconditional G) of
        num_samples generated images, gathered on every rank.

        Sample i's noise (and label) is row i of one tensor drawn by `gan_dist.sampling` from `seed`, the
        same on every rank; G is called through `sampling.sample_images` (eval mode: BatchNorm on running
        statistics), so a sample does not depend on which rank or batch produced it. The row order after
        gathering depends on the process count. Pass the unwrapped G (not a DDP wrapper): its num_classes
        decides the labels.
        """
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader, TensorDataset

        acc = self.accelerator
        latent_dim = int(getattr(G, "latent_dim", self.config.model.latent_dim))
        noise = latent_noise(self.num_samples, latent_dim, seed)  # (N, latent_dim)
        labels = class_labels(self.num_samples, num_classes_of(G))  # (N,) or None
        rows = (noise,) if labels is None else (noise, labels)
        # Not accelerator.prepare: that would register the loader in the Accelerator's checkpoint state.
        loader = prepare_data_loader(DataLoader(TensorDataset(*rows), batch_size=self.batch_size),
                                     device=acc.device, num_processes=acc.num_processes,
                                     process_index=acc.process_index, put_on_device=True, even_batches=True)
        features, logits, requested = [], [], []
        for batch in loader:
            batch_labels = None if labels is None else batch[1]  # (b,) on the device
            images = sample_images(G, batch[0], batch_labels)  # (b, C, H, W) float32 in [-1, 1], eval mode
            f, lg = self.net.features_and_logits(images)
            outputs = (f, lg) if labels is None else (f, lg, batch_labels)
            gathered = acc.gather_for_metrics(outputs)  # (<= b * processes, D), (.., K) [, (..,)]
            features.append(gathered[0])
            logits.append(gathered[1])
            if labels is not None:
                requested.append(gathered[2])
        return torch.cat(features), torch.cat(logits), (torch.cat(requested) if requested else None)

    def evaluate(self, G: nn.Module, seed: int = 0) -> dict[str, float]:
        """FID & co of G's samples, + class_accuracy and intra_fid for a conditional G (collective; the
        same dict on every rank)."""
        start = time.perf_counter()
        num_classes = num_classes_of(G)
        if num_classes and num_classes != self.dataset.num_classes:
            raise ConfigError(f"key 'data.dataset': the generator is conditioned on {num_classes} classes, "
                              f"data.dataset={self.dataset.name} has {self.dataset.num_classes}")
        features, logits, requested = self.generated_features(G, seed)

        def on_main() -> dict[str, float]:
            if len(features) != self.num_samples:
                raise RuntimeError(f"gathered {len(features)} generated samples, expected {self.num_samples}")
            reference = self.reference()
            metrics = compute_metrics(features, logits, reference)
            if requested is not None:
                class_metrics, per_class, note = conditional_metrics(features, logits, requested, reference,
                                                                     num_classes, self.classifies_dataset,
                                                                     self.dataset.class_names)
                metrics.update(class_metrics)
                self.last_intra_fid_per_class, self.last_intra_fid_note = per_class, note
            self.last_class_fractions = class_fractions(logits).tolist()
            metrics["eval_seconds"] = time.perf_counter() - start
            return metrics

        return self._on_main(on_main)


def format_table(metrics: dict[str, float], floor: dict[str, float]) -> str:
    """metric | value | real-data floor, for the console."""
    lines = [f"{'metric':<18}{'value':>12}{'real floor':>12}"]
    for key in TABLE_KEYS:
        if key in metrics:
            better = "lower" if key in LOWER_IS_BETTER else "higher"
            lines.append(f"{key:<18}{metrics[key]:>12.4f}{floor.get(key, float('nan')):>12.4f}   ({better} is better)")
    return "\n".join(lines)


def evaluate_generator(config: Config, G: nn.Module, info: GeneratorInfo,
                       seed: int = 0) -> tuple[dict[str, Any], bool]:
    """Metrics of a loaded generator (`checkpoint.load_generator`) against the data `config` names, on every
    process of an `accelerate launch` (collective): (the record `gan-dist eval` prints and writes, whether
    this is the main process).

    `config` is the caller's: the data locations and eval.* settings. From the generator only its weights,
    model section and dataset identity are used: a shared generator.yaml is untrusted input, and its data
    section (where a `pipe:` URL would run a shell command) is never read. A generator made for another
    dataset, shape or class count is refused (ConfigError naming data.dataset).
    """
    if info.dataset != config.data.dataset:  # before any data is prepared
        raise ConfigError(f"key 'data.dataset': the generator was trained on data.dataset={info.dataset}, the config "
                          f"says {config.data.dataset}; pass data.dataset={info.dataset} (and its data settings)")
    accelerator = build_accelerator(config.dist)  # the same process group setup as training
    num_processes, is_main = accelerator.num_processes, accelerator.is_main_process  # before the release
    try:
        with accelerator.local_main_process_first():
            dataset = resolve_dataset(config.data)
        check_generator_fits(info, dataset)
        G = G.to(accelerator.device)
        evaluator = Evaluator(config, accelerator, dataset)
        metrics = evaluator.evaluate(G, seed=seed)
        floor = evaluator.floor()
    finally:
        # Every rank destroys the process group before it exits (a gloo rank leaving with the group
        # still set up can abort with "terminate called without an active exception").
        release_accelerator(accelerator)
    result = {"step": info.step, "num_images": config.eval.num_samples, "seed": seed,
              "num_processes": num_processes, "is_ema": info.is_ema,
              "model": info.model.name, "conditioning": info.model.conditioning, "num_classes": info.num_classes,
              "dataset": dataset.name, "image_shape": list(dataset.image_shape),
              "dataset_fingerprint": dataset.fingerprint,
              "feature_network_sha256": evaluator.weights_record["sha256"], "metrics": metrics, "floor": floor,
              "class_fractions": evaluator.last_class_fractions}
    if info.num_classes:
        result["intra_fid_per_class"] = evaluator.last_intra_fid_per_class  # null: left out (see the notes)
        result["floor_intra_fid_per_class"] = evaluator.floor_intra_fid_per_class
        result["intra_fid_note"] = evaluator.last_intra_fid_note
        result["floor_intra_fid_note"] = evaluator.floor_intra_fid_note
    return result, is_main
