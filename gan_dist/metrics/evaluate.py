"""Evaluate a generator in a feature space: FID, KID, IS, precision/recall, density/coverage, classes, and for
a conditional generator class accuracy and intra-FID; every number with its protocol.

Feature space (eval.feature_net, gan_dist/registry/feature_nets.py): the dataset's classifier (the default for
labeled datasets), `inception` (the standard of published numbers: eval.resize, eval.inception_weights), or a
file of your own. Every number is measured against the reference split (eval.reference_split: test by default,
train for stylegan2-ada's "full train set" numbers), or a statistics file (eval.reference_stats), and printed
beside its floor: the same metric for as many real images of the *other* split as generated ones. The floor is
what a perfect generator would get (FID is biased upwards for finite N; precision/recall never reach 1 on real
data either).

  fid              Fréchet distance of Gaussians fitted to the features (float64; fid.py)
  kid, kid_std     Kernel Inception Distance (unbiased MMD^2, cubic kernel): mean and std over 100 subsets of
                   min(1000, N, N_ref) samples, torch-fidelity's draws (kid.py); needs the reference's features
  inception_score  the classifier: one split of all samples; inception: torch-fidelity's IS, 10 shuffled
  (+ _std)         splits (seed 2020), mean and std (classes.py)
  precision, recall, density, coverage   k-NN manifolds (prdc.py); need the reference's features
  classes_covered, class_kl_uniform      the predicted-class histogram (a network whose classes are the
                                         dataset's; not Inception's ImageNet classes)

Conditional generators (`sampling.num_classes_of(G) > 0`) get balanced labels (`sampling.class_labels`:
sample i asks for class i % K) and two more metrics:
  class_accuracy  share of samples the feature network classifies as the class they were asked for
                  (1/K for a G that ignores its labels); only when the network knows the dataset's classes
  intra_fid       FID of each class's samples against the reference images of that class, averaged over
                  classes (Miyato & Koyama 2018); N / K samples per class, so it sits above FID
Their floor uses real images with their own labels, as many per class as G gets.

Distributed: construction and `Evaluator.evaluate` are collective. Every rank draws the same full noise (and
label) tensor from `seed`, takes its share through accelerate's sharded data loader, and the features are
gathered with `gather_for_metrics` together with each sample's row number, then put back in row order: the
union and its order, and so every metric (KID's subsets and IS's splits depend on the order) up to float
summation, are the same for any number of processes. Real images are read the same way: each rank extracts
the features of its share of the reference split (whole shards per rank) and of the floor's images, and the
rows are gathered and sorted by sample index; so a 50k Inception reference costs each of N ranks 1/N of it and
no rank waits on another for longer than its share. The main process computes the metrics and broadcasts
them, so every rank returns the same dict.

Caches (eval.reference_stats aside): the reference (features, labels, mu, sigma) as .npz, keyed by the
dataset's fingerprint, the split and its size, the feature network's sha256 and the resize; the floor as .json,
keyed by the same and its split and sample count. A reference .npz is also a valid eval.reference_stats file.

The protocol (`Evaluator.protocol()`: feature network and weights sha256, resize, sample counts, reference
split or file, IS splits, KID subsets) is returned with every result: `gan-dist eval`'s JSON, the run's
evals.jsonl, and the tracker's keys (`eval/<protocol tag>/<metric>`, `Evaluator.tracker_scalars`).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from gan_dist.config import ConfigError
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.loader import split_batches
from gan_dist.data.sources import DataError
from gan_dist.distributed import build_accelerator, first_error, release_accelerator, run_on_main
from gan_dist.files import atomic_write, sha256_file
from gan_dist.metrics.classes import (
    class_accuracy,
    class_fractions,
    class_histogram,
    inception_score,
    inception_score_splits,
)
from gan_dist.metrics.fid import (
    class_statistics,
    feature_statistics,
    frechet_distance,
    intra_fid,
    intra_fid_note,
    left_out_classes,
)
from gan_dist.metrics.kid import KID_SEED, KID_SUBSET_SIZE, KID_SUBSETS, kid
from gan_dist.metrics.prdc import DC_K, PR_K, check_enough_samples, prdc
from gan_dist.registry.datasets import dataset_spec
from gan_dist.registry.feature_nets import FeatureNetSpec, feature_net, is_path
from gan_dist.sampling import class_labels, latent_noise, num_classes_of, sample_images

if TYPE_CHECKING:
    from accelerate import Accelerator

    from gan_dist.checkpoint import GeneratorInfo
    from gan_dist.config import Config
    from gan_dist.data.datasets import ResolvedDataset

# Bump when a metric's definition or a cached file's content changes: it is part of the cache key.
# 2: the reference holds the test labels (intra-FID), the floor the class metrics.
# 3: KID; the reference split is a setting (eval.reference_split), the floor reads the other one; resize in the key.
# 4: intra-FID leaves out classes without 2 images on a side (null per class, a note), never NaN.
METRICS_VERSION = 4
# Metrics in the order of the printed table (kid_std, inception_score_std and the class_frac_* keys follow in
# the JSON).
TABLE_KEYS = ("fid", "kid", "intra_fid", "class_accuracy", "inception_score", "precision", "recall", "density",
              "coverage", "classes_covered", "class_kl_uniform")
LOWER_IS_BETTER = {"fid", "kid", "intra_fid", "class_kl_uniform"}
SPLIT_ORDER = ("test", "train")  # eval.reference_split -> the floor reads the other one

T = TypeVar("T")


def metrics_cache_dir() -> Path:
    """$GAN_DIST_METRICS_CACHE, else $XDG_CACHE_HOME/gan_dist/metrics (~/.cache/gan_dist/metrics)."""
    if os.environ.get("GAN_DIST_METRICS_CACHE"):
        return Path(os.environ["GAN_DIST_METRICS_CACHE"]).expanduser()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "gan_dist" / "metrics"


def floor_split(reference_split: str) -> str:
    """The split the real-data floor reads: the one that is not the reference."""
    return SPLIT_ORDER[1 - SPLIT_ORDER.index(reference_split)]


@dataclasses.dataclass
class Reference:
    """What generated samples are compared with: a split (or a statistics file) in feature space."""

    features: torch.Tensor | None  # (N, D) float32, CPU; None: a statistics file without features
    labels: torch.Tensor | None  # (N,) int64 (-1 when unlabeled); None when unknown
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64
    class_stats: dict[int, tuple[np.ndarray, np.ndarray]]  # {class: (mu, sigma)}; empty when unlabeled
    num_images: int


REFERENCE_STATS_KEYS = ("mu", "sigma", "features", "labels", "num_images")  # what a statistics file may hold


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an .npz, read from the .npy headers inside the zip: no array data is
    read and nothing is unpickled. DataError (one line naming eval.reference_stats) when the file is missing,
    not an .npz, or a header is unreadable."""
    import zipfile

    from numpy.lib import format as npy

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"eval.reference_stats={path}: no such file")
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                with archive.open(member) as stream:
                    version = npy.read_magic(stream)
                    read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = read(stream)
                headers[member.removesuffix(".npy")] = (tuple(shape), dtype)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # not a zip, truncated, a bad header
        message = " ".join(str(error).split())
        raise DataError(f"eval.reference_stats={path}: not a readable .npz of arrays ({message})") from None
    return headers


def check_reference_stats(path: str | Path, feature_dim: int | None = None) -> dict[str, tuple[tuple[int, ...],
                                                                                               np.dtype]]:
    """The headers of a reference statistics file (`npz_headers`), checked without reading its arrays: mu (D,)
    and sigma (D, D) present, D = feature_dim when given, features (N, D) and labels (N,) if present, no array
    of Python objects (pickled: refused, never unpickled). DataError in one line naming the file otherwise.
    Cheap (a 50k x 2048 features array is not read): training calls it at start-up."""
    path = Path(path).expanduser()
    headers = npz_headers(path)
    where = f"eval.reference_stats={path}"
    pickled = sorted(name for name, (_, dtype) in headers.items() if dtype.hasobject)
    if pickled:
        raise DataError(f"{where}: array(s) {', '.join(pickled)} hold pickled Python objects: refused (never "
                        "unpickled); a statistics file holds numbers only")
    if "mu" not in headers or "sigma" not in headers:
        raise DataError(f"{where}: needs arrays 'mu' (D,) and 'sigma' (D, D); it has "
                        f"{', '.join(sorted(headers)) or 'none'}")
    mu, sigma = headers["mu"][0], headers["sigma"][0]
    dim = feature_dim if feature_dim is not None else (mu[0] if len(mu) == 1 else -1)
    if mu != (dim,) or sigma != (dim, dim):
        network = f"the feature network's {feature_dim} features" if feature_dim is not None else "each other"
        raise DataError(f"{where}: mu {mu} and sigma {sigma} do not fit {network} (eval.feature_net): statistics "
                        "of another network?")
    if "features" in headers:
        features = headers["features"][0]
        if len(features) != 2 or features[1] != dim:
            raise DataError(f"{where}: features {features} are not (N, {dim})")
    if "labels" in headers and ("features" not in headers or headers["labels"][0] != headers["features"][0][:1]):
        raise DataError(f"{where}: labels {headers['labels'][0]} need features with as many rows")
    return headers


def load_reference_stats(path: str | Path, feature_dim: int, num_classes: int = 0) -> Reference:
    """A reference statistics file (.npz: mu (D,), sigma (D, D), optionally features (N, D) and labels (N,)):
    checked first from its headers (`check_reference_stats`: a file holding pickled objects is refused, never
    unpickled), then its arrays read with numpy's allow_pickle=False. DataError naming the file and what is
    wrong, in one line."""
    path = Path(path).expanduser()
    headers = check_reference_stats(path, feature_dim)
    try:
        with np.load(path, allow_pickle=False) as stats:
            arrays = {key: stats[key] for key in REFERENCE_STATS_KEYS if key in headers}
    except (OSError, ValueError, EOFError) as error:  # damaged data behind a readable header
        message = " ".join(str(error).split())
        raise DataError(f"eval.reference_stats={path}: not a readable .npz of arrays ({message})") from None
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"eval.reference_stats={path}: mu or sigma holds inf or nan")
    features = torch.from_numpy(arrays["features"].astype(np.float32)) if "features" in arrays else None
    labels = torch.from_numpy(arrays["labels"].astype(np.int64)) if "labels" in arrays else None
    stats = (class_statistics(features, labels, num_classes)
             if num_classes and features is not None and labels is not None else {})
    count = len(features) if features is not None else int(arrays["num_images"]) if "num_images" in arrays else 0
    return Reference(features, labels, mu, sigma, stats, count)


def compute_metrics(features: torch.Tensor, logits: torch.Tensor, reference: Reference, *,
                    is_splits: int = 1, with_class_histogram: bool = True,
                    kid_cache: dict[Any, float] | None = None) -> dict[str, float]:
    """The unconditional metrics of one sample set: features (N, D) and logits (N, K) vs the reference.

    is_splits: 1 = the one-split Inception Score; k > 1 = torch-fidelity's (k shuffled splits: mean and std;
    nan when N < k). KID and the k-NN metrics need the reference's features (absent from a stats file that has
    only mu and sigma: then they are left out); kid_cache: kid's y_cache for this reference (kept by the
    evaluator: the reference's side of KID is then computed once)."""
    mu, sigma = feature_statistics(features)
    metrics = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma)}
    if is_splits == 1:
        metrics["inception_score"] = inception_score(logits)
    elif len(logits) >= is_splits:
        metrics["inception_score"], metrics["inception_score_std"] = inception_score_splits(logits, splits=is_splits)
    else:
        metrics["inception_score"] = metrics["inception_score_std"] = float("nan")
    if reference.features is not None:
        metrics.update(kid(features, reference.features, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE,
                           seed=KID_SEED, device=features.device, y_cache=kid_cache))
        metrics.update(prdc(reference.features.to(features.device), features, pr_k=PR_K, dc_k=DC_K))
    if with_class_histogram:
        metrics.update(class_histogram(logits))
    return metrics


def conditional_metrics(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, reference: Reference,
                        num_classes: int, with_accuracy: bool, class_names: tuple[str, ...] | list[str] = ()
                        ) -> tuple[dict[str, float], list[float | None], str]:
    """intra_fid (and class_accuracy when `with_accuracy`: the network's classes are the dataset's) of
    samples that belong to `labels` (N,); also returns the per-class FIDs (None: left out) and a note
    saying which classes intra-FID left out and why ('' when none; no intra_fid at all when every class was)."""
    mean, per_class = intra_fid(features, labels, reference.class_stats, num_classes)
    if reference.labels is None:  # a statistics file without labels (eval.reference_stats): no class statistics
        note = "the reference statistics (eval.reference_stats) have no labels: no intra-FID"
    else:
        note = intra_fid_note(left_out_classes(labels, reference.labels, num_classes), num_classes, class_names)
    metrics = {} if mean is None else {"intra_fid": mean}
    if with_accuracy:
        metrics["class_accuracy"] = class_accuracy(logits, labels)
    return metrics, per_class, note


def _sample_index(key: str) -> int:
    """The position of a sample in its split from its shard key (`test-000123` -> 123)."""
    try:
        return int(key.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise DataError(f"shard sample key {key!r} is not <split>-<index> (shards not written by gan-dist "
                        "prepare-data?)") from None


class SplitReader:
    """One rank's share of a split (its whole shards, or every world_size-th sample), read in order of sample
    index as far as asked, through a feature network: `read(bound)` gives the features of this rank's samples
    with index < bound that were not read yet."""

    def __init__(self, net: nn.Module, dataset: ResolvedDataset, split: str, batch_size: int,
                 device: torch.device | str, rank: int = 0, world_size: int = 1) -> None:
        self.net, self.device = net, device
        self.batches = split_batches(dataset, split, batch_size, rank, world_size, with_keys=True)
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # read past the last bound
        self.exhausted = False

    @torch.no_grad()
    def read(self, bound: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features (n, D), logits (n, K), labels (n,), sample indices (n,)) on the CPU; bound None: all."""
        parts: list[tuple[torch.Tensor, ...]] = []
        while True:
            if self.pending is None:
                try:
                    images, labels, keys = next(self.batches)
                except StopIteration:
                    self.exhausted = True
                    break
                self.pending = (images, labels, torch.tensor([_sample_index(k) for k in keys], dtype=torch.int64))
            images, labels, indices = self.pending
            # Indices increase along a rank's share (shards in order, keys in order inside a shard).
            take = len(indices) if bound is None else int((indices < bound).cumprod(0).sum())
            if take:
                f, lg = self.net.features_and_logits(images[:take].to(self.device))  # (b, D), (b, K)
                parts.append((f.float().cpu(), lg.float().cpu(), labels[:take], indices[:take]))
            if take < len(indices):
                self.pending = (images[take:], labels[take:], indices[take:])
                break
            self.pending = None
        if not parts:
            dim, classes = int(self.net.feature_dim), int(self.net.num_classes)
            return torch.empty(0, dim), torch.empty(0, classes), torch.empty(0, dtype=torch.int64), \
                torch.empty(0, dtype=torch.int64)
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


def gather_rows(accelerator: Accelerator, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's rows of each tensor (the counts may differ between ranks), concatenated in rank order, on
    every rank, on the CPU (collective)."""
    if accelerator.num_processes == 1:
        return [t.cpu() for t in tensors]
    import torch.distributed as dist

    device = accelerator.device
    world = accelerator.num_processes
    counts = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(tensors[0])], dtype=torch.int64, device=device))
    sizes = [int(c) for c in counts]
    most = max(max(sizes), 1)
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((most, *tensor.shape[1:]), device=device)
        padded[:len(tensor)] = tensor.to(device)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        gathered.append(torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]).cpu())
    return gathered


DATA_ERRORS = ("DataError", "SourceError", "ShardError")  # raised as DataError on the ranks that did not fail


def raise_first_error(accelerator: Accelerator, error: BaseException | None, what: str) -> None:
    """Collective: when any rank failed, every rank raises (the failing one its own error, the others a
    DataError (for a data problem: exit 1) or RuntimeError naming the rank and message), so that no rank waits
    on a collective forever."""
    message = first_error(accelerator, None if error is None else f"{type(error).__name__}: {error}")
    if message is None:
        return
    if error is not None:
        raise error
    text = message.split(": ", 1)[1] if message.startswith("rank ") else message  # "rank R: Kind: ..."
    kind = DataError if text.split(":", 1)[0] in DATA_ERRORS else RuntimeError
    raise kind(f"{what} failed on {message if message.startswith('rank ') else 'rank 0: ' + message}")


@torch.no_grad()
def real_features(net: nn.Module, dataset: ResolvedDataset, split: str, batch_size: int,
                  device: torch.device | str, *, limit: int | None = None,
                  class_quota: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, D), logits (N, K) and labels (N,) (-1 when unlabeled) of a split's images in the
    shards' order, on CPU, in this process alone (the Evaluator reads them distributed).

    Reads the whole split, or stops once `limit` images are read and every class c has `class_quota[c]`
    of them (the split may end first).
    """
    reader = SplitReader(net, dataset, split, batch_size, device)
    features, logits, labels, _ = _read_prefix(lambda bound: (list(reader.read(bound)), reader.exhausted), limit,
                                               class_quota)
    if not len(features):
        raise RuntimeError(f"no images in the {split} split of {dataset.describe()}")
    return features, logits, labels


def _enough(labels: torch.Tensor, limit: int, class_quota: list[int]) -> bool:
    if len(labels) < limit:
        return False
    if not class_quota:
        return True
    counts = torch.bincount(labels.clamp(min=0), minlength=len(class_quota))[:len(class_quota)]
    return bool((counts >= torch.tensor(class_quota)).all())


def _read_prefix(read: Callable[[int | None], tuple[list[torch.Tensor], bool]], limit: int | None,
                 class_quota: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The shortest prefix of a split (in sample index) that holds `limit` images and `class_quota[c]` of each
    class c (or the whole split: limit None, or when it ends first), read in rounds whose index bound doubles;
    (features, logits, labels, indices) sorted by index. read(bound) -> ([features, logits, labels, indices] of
    the samples with index < bound not read yet (every rank's, when distributed), whether the split ended)."""
    rounds: list[list[torch.Tensor]] = []
    bound = limit
    while True:
        parts, exhausted = read(bound)
        rounds.append(parts)
        labels = torch.cat([r[2] for r in rounds])
        if bound is None or exhausted or _enough(labels, limit or 0, class_quota or []):
            break
        bound *= 2
    features, logits, labels, indices = (torch.cat(column) for column in zip(*rounds, strict=True))
    order = indices.argsort()
    return features[order], logits[order], labels[order], indices[order]


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


def feature_net_spec(config: Config) -> FeatureNetSpec:
    """The registry entry eval.feature_net selects for data.dataset."""
    return feature_net(config.eval.feature_net, dataset_spec(config.data.dataset).default_feature_net)


def evaluation_preview(config: Config) -> dict[str, Any]:
    """The protocol a run would evaluate with, from the config alone (nothing loaded, fetched or read): for
    `gan-dist train --dry-run`."""
    e = config.eval
    if e.eval_every == -1:
        return {"eval_every": -1, "note": "evaluation off (eval.eval_every=-1)"}
    spec = feature_net_spec(config)
    preview: dict[str, Any] = {
        "eval_every": e.eval_every, "feature_net": f"classifier:{e.feature_net}" if is_path(e.feature_net) else spec.name,
        "num_generated": e.num_samples,
        "reference": {"file": e.reference_stats} if e.reference_stats else {"split": e.reference_split},
        "floor_split": floor_split(e.reference_split), "inception_score_splits": spec.inception_score_splits,
        "kid_subsets": KID_SUBSETS,
    }
    if spec.resizes:
        preview["resize"] = e.resize
    if spec.fetches_weights:
        preview["weights"] = importlib.import_module(spec.module).weights_status(e)
    return preview


def ensure_feature_net(config: Config, accelerator: Accelerator) -> None:
    """Start-up check of a run that will evaluate (collective): the feature network's weights are fetched and
    verified now (on each node's main process first; the others then find them in the cache), and
    eval.reference_stats exists and its headers fit (`check_reference_stats`), so that a missing or refused
    file stops the run before it starts, in one line (exit 1), never at its first evaluation. Call it before the data is prepared (a
    benchmark's download can take a while: a missing weights file should not wait for it)."""
    if config.eval.eval_every == -1:
        return
    error: BaseException | None = None
    spec = feature_net_spec(config)
    stats = config.eval.reference_stats
    if stats and not Path(stats).expanduser().is_file():
        error = FileNotFoundError(f"eval.reference_stats={stats}: no such file (a .npz with mu, sigma and "
                                  "optionally features and labels; README \"Comparing with papers\")")
    elif stats and accelerator.is_local_main_process:
        try:  # its headers only (a 50k-image features array is not read now)
            check_reference_stats(stats, spec.feature_dim)
        except DataError as exc:
            error = exc
    fetch = importlib.import_module(spec.module).ensure_weights if spec.fetches_weights else None
    if error is None and fetch is not None and accelerator.is_local_main_process:
        try:
            fetch(config.eval)
        except Exception as exc:  # noqa: BLE001 - every rank learns of it below (no rank waits forever)
            error = exc
    message = first_error(accelerator, None if error is None else str(error))
    if message is not None:
        if error is not None:
            raise error
        raise FileNotFoundError(f"the feature network or eval.reference_stats is unavailable ({message})")
    if fetch is not None and not accelerator.is_local_main_process:
        fetch(config.eval)  # in the cache now: verified, not fetched


class Evaluator:
    """Collective evaluator: construct it on every rank, call `evaluate` on every rank.

    Construction refuses a split too small for the metrics (TooFewSamples, a ConfigError naming its size),
    then loads the verified feature network for `dataset` on every rank (eval.feature_net through its registry
    entry; FeatureNetworkMissing when there is none) and computes (or finds in the cache) the reference and the
    floor, reading the real images distributed across ranks. `evaluate(G, seed)` returns the same dict on every
    rank; `protocol()` says what the numbers depend on.
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
        self.spec = feature_net(config.eval.feature_net, dataset.spec.default_feature_net)
        loader = importlib.import_module(self.spec.module).load_feature_net
        self.net, self.weights_record = loader(dataset, config.eval, accelerator.device)
        # class_accuracy needs the network's classes to be the dataset's (a user's network may not be).
        self.classifies_dataset = dataset.num_classes > 0 and self.net.num_classes == dataset.num_classes
        self.reference_split = config.eval.reference_split
        self.floor_split = floor_split(self.reference_split)
        self.reference_file = Path(config.eval.reference_stats).expanduser() if config.eval.reference_stats else None
        self.reference_file_sha256 = sha256_file(self.reference_file) if self.reference_file else None
        self._reference: Reference | None = None  # main process only
        self._kid_cache: dict[Any, float] = {}  # KID's sums over the reference's subsets (main process)
        self.last_class_fractions: list[float] = []  # of the last evaluate(), main process only
        self.last_intra_fid_per_class: list[float | None] = []  # of the last evaluate() of a conditional G
        self.floor_intra_fid_per_class: list[float | None] = []
        self.last_intra_fid_note = ""  # which classes intra-FID left out, and why ('' when none)
        self.floor_intra_fid_note = ""
        self._prepare_reference()
        self._floor_record: dict[str, Any] = self._compute_floor()
        self._floor: dict[str, float] = self._floor_record["metrics"]

    # -- collective helpers -------------------------------------------------------------------

    def _on_main(self, fn: Callable[[], T]) -> T:
        """Run fn on the main process, broadcast its result; an error there is raised on every rank."""
        return run_on_main(self.accelerator, fn, what="evaluation")

    def _read_split(self, split: str, limit: int | None = None,
                    class_quota: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, logits, labels) of a split's first images (all, or the prefix `_read_prefix` describes) in
        sample order, on every rank; each rank extracts its share (collective)."""
        acc = self.accelerator
        reader: SplitReader | None = None
        error: BaseException | None = None
        try:
            reader = SplitReader(self.net, self.dataset, split, self.batch_size, acc.device, acc.process_index,
                                 acc.num_processes)
        except Exception as exc:  # noqa: BLE001 - every rank learns of it below
            error = exc
        raise_first_error(acc, error, f"reading the {split} split")
        assert reader is not None

        def read(bound: int | None) -> tuple[list[torch.Tensor], bool]:
            """Every rank its share up to `bound`, then the rows of all ranks (a read error on one rank is
            raised on every rank before the next collective)."""
            failure: BaseException | None = None
            parts: list[torch.Tensor] = []
            try:
                parts = list(reader.read(bound))
            except Exception as exc:  # noqa: BLE001 - every rank learns of it below
                failure = exc
            raise_first_error(acc, failure, f"reading the {split} split")
            flag = torch.tensor([int(reader.exhausted)], dtype=torch.int64)
            *rows, exhausted = gather_rows(acc, [*parts, flag])
            return rows, bool(exhausted.all())

        features, logits, labels, _ = _read_prefix(read, limit, class_quota)
        if not len(features):
            raise DataError(f"no images in the {split} split of {self.dataset.describe()}")
        return features, logits, labels

    # -- keys, protocol --------------------------------------------------------------------------------

    def _cache_key(self) -> str:
        """Dataset name (for people), metrics version, weights sha256 [and resize] and dataset fingerprint."""
        resize = f"-{self.config.eval.resize}" if self.spec.resizes else ""
        return (f"{self.dataset.name}-v{METRICS_VERSION}-w{self.weights_record['sha256'][:16]}{resize}"
                f"-d{self.dataset.fingerprint[:16]}")

    def _reference_id(self) -> str:
        """The reference in file names: <split><size> or file<sha256 prefix>."""
        if self.reference_file_sha256:
            return f"file{self.reference_file_sha256[:16]}"
        size = {"train": self.dataset.train_size, "test": self.dataset.test_size}[self.reference_split]
        return f"{self.reference_split}{size}"

    def reference_path(self) -> Path:
        return self.cache_dir / f"reference-{self._cache_key()}-{self._reference_id()}.npz"

    def floor_path(self) -> Path:
        return (self.cache_dir / f"floor-{self._cache_key()}-{self.floor_split}-n{self.num_samples}"
                f"-vs-{self._reference_id()}.json")

    def protocol(self) -> dict[str, Any]:
        """What every number depends on: printed, and saved beside each number (JSON, evals.jsonl)."""
        record = self.weights_record
        official = record.get("weights_official")
        net = (f"classifier:{self.config.eval.feature_net}" if is_path(self.config.eval.feature_net)
               else self.spec.name)
        protocol: dict[str, Any] = {
            "feature_net": net,
            "feature_net_title": record.get("feature_net", self.spec.title),
            "weights_sha256": record["sha256"],
            "resize": self.config.eval.resize if self.spec.resizes else "none (images at their own size)",
            "num_generated": self.num_samples,
            "reference": ({"file": str(self.reference_file), "sha256": self.reference_file_sha256}
                          if self.reference_file else {"split": self.reference_split}),
            "num_reference_images": self._floor_record.get("num_reference_images"),
            "floor": {"split": self.floor_split, "num_images": self._floor_record.get("num_floor_images")},
            "inception_score_splits": self.spec.inception_score_splits,
            # KID's subsets (torch-fidelity's draws); the size is clipped to the smaller set; None: the reference
            # has no features (a statistics file with mu and sigma only), nor do precision/recall/density/coverage
            "kid": None if not self._floor_record.get("reference_has_features", True) else {
                "subsets": KID_SUBSETS, "seed": KID_SEED,
                "subset_size": min(KID_SUBSET_SIZE, self.num_samples,
                                   self._floor_record.get("num_reference_images") or KID_SUBSET_SIZE)},
            "dataset": self.dataset.name,
            "dataset_fingerprint": self.dataset.fingerprint,
            "metrics_version": METRICS_VERSION,
        }
        if official is not None:
            protocol["weights_official"] = bool(official)
        return protocol

    def protocol_tag(self) -> str:
        """A short name of the protocol for tracker keys: numbers of two protocols never share a key.
        e.g. inception-tf-n10000-test, classifier-n50000-train, inception-unofficial-clean-n500-file1a2b3c4d."""
        parts = [self.spec.name]
        if self.weights_record.get("weights_official") is False:
            parts.append("unofficial")
        if self.spec.resizes:
            parts.append(self.config.eval.resize)
        parts.append(f"n{self.num_samples}")
        parts.append(f"file{self.reference_file_sha256[:8]}" if self.reference_file_sha256 else self.reference_split)
        return "-".join(parts)

    def describe_protocol(self) -> str:
        """One line for the console."""
        p = self.protocol()
        official = p.get("weights_official")
        weights = f"weights {p['weights_sha256'][:12]}" + ("" if official is None else
                                                          " (official)" if official else
                                                          " (NOT the official Inception weights: not an "
                                                          "Inception FID)")
        against = (f"the statistics in {p['reference']['file']}" if "file" in p["reference"] else
                   f"the {p['num_reference_images']} {p['reference']['split']} images")
        resize = f", resize {p['resize']}" if self.spec.resizes else ""
        return (f"protocol: {p['feature_net']} ({weights}){resize}; {self.num_samples} generated vs {against}; "
                f"floor: {p['floor']['num_images']} {self.floor_split} images; IS over "
                f"{p['inception_score_splits']} split(s); KID over {KID_SUBSETS} subsets")

    def tracker_scalars(self, metrics: dict[str, float], prefix: str = "eval") -> dict[str, float]:
        """`{prefix}/{protocol tag}/{metric}`: the tracker's keys carry the protocol."""
        tag = self.protocol_tag()
        return {f"{prefix}/{tag}/{key}": value for key, value in metrics.items()}

    def table(self, metrics: dict[str, float]) -> str:
        """The protocol line, then metric | value | real-data floor."""
        return self.describe_protocol() + "\n" + format_table(metrics, self.floor())

    # -- reference and floor ---------------------------------------------------------------------------

    def _prepare_reference(self) -> None:
        """Load (main process) or compute (every rank its share) the reference; cached on disk."""
        if self.reference_file is not None:
            self._on_main(self._load_reference_file)
            return
        path = self.reference_path()
        cached = self._on_main(lambda: path.is_file())
        computed = None if cached else self._read_split(self.reference_split)

        def on_main() -> None:
            if computed is None:
                with np.load(path, allow_pickle=False) as stored:
                    features, labels = torch.from_numpy(stored["features"]), torch.from_numpy(stored["labels"])
                    mu, sigma = stored["mu"], stored["sigma"]
            else:
                features, _, labels = computed
                mu, sigma = feature_statistics(features)
                atomic_write(path, lambda stream: np.savez(stream, features=features.numpy(), labels=labels.numpy(),
                                                           mu=mu, sigma=sigma))
            num_classes = self.dataset.num_classes
            stats = class_statistics(features, labels, num_classes) if num_classes else {}
            self._reference = Reference(features, labels, mu, sigma, stats, len(features))

        self._on_main(on_main)

    def _load_reference_file(self) -> None:
        assert self.reference_file is not None
        self._reference = load_reference_stats(self.reference_file, int(self.net.feature_dim),
                                               self.dataset.num_classes)

    def reference(self) -> Reference:
        """The reference (main process only: the other ranks hold none)."""
        if self._reference is None:
            raise RuntimeError("the reference lives on the main process only")
        return self._reference

    def class_quota(self) -> list[int]:
        """Samples per class that a conditional G gets from `evaluate` (balanced labels i % K)."""
        labels = class_labels(self.num_samples, self.dataset.num_classes)
        return [] if labels is None else torch.bincount(labels, minlength=self.dataset.num_classes).tolist()

    def _compute_floor(self) -> dict[str, Any]:
        path = self.floor_path()

        def cached() -> dict[str, Any] | None:
            if not path.is_file():
                return None
            record = json.loads(path.read_text())
            self.floor_intra_fid_per_class = record.get("intra_fid_per_class", [])
            self.floor_intra_fid_note = record.get("intra_fid_note", "")
            return record

        record = self._on_main(cached)
        if record is not None:
            return record
        quota = self.class_quota()
        features, logits, labels = self._read_split(self.floor_split, limit=self.num_samples, class_quota=quota)

        def on_main() -> dict[str, Any]:
            reference = self.reference()
            device = self.accelerator.device
            metrics = compute_metrics(features[:self.num_samples].to(device), logits[:self.num_samples], reference,
                                      is_splits=self.spec.inception_score_splits,
                                      with_class_histogram=self.spec.class_histogram, kid_cache=self._kid_cache)
            record: dict[str, Any] = {"num_floor_images": min(len(features), self.num_samples),
                                      "num_reference_images": reference.num_images, "floor_split": self.floor_split,
                                      "reference_has_features": reference.features is not None}
            if quota:  # the class metrics of real images, as many per class as a conditional G gets
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
            return record

        return self._on_main(on_main)

    def floor(self) -> dict[str, float]:
        """The metrics of `eval.num_samples` real images of the other split vs the reference (same on every
        rank). With a labeled dataset it has intra_fid (real vs reference, per class) too, and class_accuracy
        (the network's accuracy on real images) when the network's classes are the dataset's."""
        return dict(self._floor)

    # -- generated samples (all ranks) --------------------------------------------------------------

    @torch.no_grad()
    def generated_features(self, G: nn.Module, seed: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Features (N, D), logits (N, K) and requested labels (N,) (None for an unconditional G) of
        num_samples generated images, gathered on every rank, in sample order.

        Sample i's noise (and label) is row i of one tensor drawn by `gan_dist.sampling` from `seed`, the
        same on every rank; G is called through `sampling.sample_images` (eval mode: BatchNorm on running
        statistics), so a sample does not depend on which rank or batch produced it, and the rows are put back
        in sample order after gathering (so KID's subsets and IS's splits see the same rows for any process
        count). Pass the unwrapped G (not a DDP wrapper): its num_classes decides the labels.
        """
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader, TensorDataset

        acc = self.accelerator
        latent_dim = int(getattr(G, "latent_dim", self.config.model.latent_dim))
        noise = latent_noise(self.num_samples, latent_dim, seed)  # (N, latent_dim)
        labels = class_labels(self.num_samples, num_classes_of(G))  # (N,) or None
        rows = torch.arange(self.num_samples)  # (N,) each sample's row: its place after gathering
        columns = (noise, rows) if labels is None else (noise, rows, labels)
        # Not accelerator.prepare: that would register the loader in the Accelerator's checkpoint state.
        loader = prepare_data_loader(DataLoader(TensorDataset(*columns), batch_size=self.batch_size),
                                     device=acc.device, num_processes=acc.num_processes,
                                     process_index=acc.process_index, put_on_device=True, even_batches=True)
        features, logits, order, requested = [], [], [], []
        for batch in loader:
            batch_labels = None if labels is None else batch[2]  # (b,) on the device
            images = sample_images(G, batch[0], batch_labels)  # (b, C, H, W) float32 in [-1, 1], eval mode
            f, lg = self.net.features_and_logits(images)
            outputs = (f, lg, batch[1]) if labels is None else (f, lg, batch[1], batch_labels)
            gathered = acc.gather_for_metrics(outputs)  # (<= b * processes, D), (.., K), (..,) [, (..,)]
            features.append(gathered[0])
            logits.append(gathered[1])
            order.append(gathered[2])
            if labels is not None:
                requested.append(gathered[3])
        index = torch.cat(order).argsort()
        return (torch.cat(features)[index], torch.cat(logits)[index],
                torch.cat(requested)[index] if requested else None)

    def evaluate(self, G: nn.Module, seed: int = 0) -> dict[str, float]:
        """FID, KID & co of G's samples, + class_accuracy and intra_fid for a conditional G (collective; the
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
            metrics = compute_metrics(features, logits, reference,
                                      is_splits=self.spec.inception_score_splits,
                                      with_class_histogram=self.spec.class_histogram, kid_cache=self._kid_cache)
            if requested is not None:
                class_metrics, per_class, note = conditional_metrics(features, logits, requested, reference,
                                                                     num_classes, self.classifies_dataset,
                                                                     self.dataset.class_names)
                metrics.update(class_metrics)
                self.last_intra_fid_per_class, self.last_intra_fid_note = per_class, note
            self.last_class_fractions = class_fractions(logits).tolist() if self.spec.class_histogram else []
            metrics["eval_seconds"] = time.perf_counter() - start
            return metrics

        return self._on_main(on_main)


def format_table(metrics: dict[str, float], floor: dict[str, float]) -> str:
    """metric | value | real-data floor, for the console (KID and IS with their std over subsets / splits)."""
    lines = [f"{'metric':<18}{'value':>12}{'real floor':>12}"]
    for key in TABLE_KEYS:
        if key in metrics:
            better = "lower" if key in LOWER_IS_BETTER else "higher"
            spread = {"kid": "kid_std", "inception_score": "inception_score_std"}.get(key)
            std = f"  (std {metrics[spread]:.4f})" if spread and spread in metrics else ""
            lines.append(f"{key:<18}{metrics[key]:>12.4f}{floor.get(key, float('nan')):>12.4f}   "
                         f"({better} is better){std}")
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
        ensure_feature_net(config, accelerator)
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
              "feature_network_sha256": evaluator.weights_record["sha256"], "protocol": evaluator.protocol(),
              "protocol_tag": evaluator.protocol_tag(), "protocol_line": evaluator.describe_protocol(),
              "metrics": metrics, "floor": floor, "class_fractions": evaluator.last_class_fractions}
    if info.num_classes:
        result["intra_fid_per_class"] = evaluator.last_intra_fid_per_class  # null: left out (see the notes)
        result["floor_intra_fid_per_class"] = evaluator.floor_intra_fid_per_class
        result["intra_fid_note"] = evaluator.last_intra_fid_note
        result["floor_intra_fid_note"] = evaluator.floor_intra_fid_note
    return result, is_main
