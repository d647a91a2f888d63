"""Evaluate a generator in the MNIST feature space: FID, IS, precision/recall, density/coverage, classes.

Every number is measured against the MNIST test split and printed beside its floor: the same metric
for as many real *train* images as generated ones. The floor is what a perfect generator would get
(FID is biased upwards for finite N; precision/recall never reach 1 on real data either).

Distributed: `Evaluator.evaluate` is collective. Every rank draws the same full noise tensor from
`seed`, takes its share of it through accelerate's sharded data loader, and the features are gathered
with `gather_for_metrics` (which drops the padding of an uneven last batch). So the union of the
generated samples, and every metric up to float summation order, is the same for any number of
processes. The main process computes the metrics and broadcasts them, so every rank returns the same
dict. The reference (test features and their mean/covariance) and the floor are computed once and
cached on disk, keyed by the feature network's sha256 and the shards' manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

from gan_dist.metrics.classes import class_fractions, class_histogram, inception_score
from gan_dist.metrics.features import load_feature_network
from gan_dist.metrics.fid import feature_statistics, frechet_distance
from gan_dist.metrics.prdc import DC_K, PR_K, prdc

if TYPE_CHECKING:
    from accelerate import Accelerator

    from gan_dist.config import Config, DataConfig

# Bump when a metric's definition changes: it is part of the cache key of the reference and the floor.
METRICS_VERSION = 1
# Metrics in the order of the printed table (the class_frac_* keys follow in the JSON).
TABLE_KEYS = ("fid", "inception_score", "precision", "recall", "density", "coverage", "classes_covered",
              "class_kl_uniform")
LOWER_IS_BETTER = {"fid", "class_kl_uniform"}

T = TypeVar("T")


def metrics_cache_dir() -> Path:
    """$GAN_DIST_METRICS_CACHE, else $XDG_CACHE_HOME/gan_dist/metrics (~/.cache/gan_dist/metrics)."""
    if os.environ.get("GAN_DIST_METRICS_CACHE"):
        return Path(os.environ["GAN_DIST_METRICS_CACHE"]).expanduser()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "gan_dist" / "metrics"


def data_fingerprint(data: DataConfig) -> str:
    """sha256 of the shards' manifest.json (prepares the shards if allowed); of the test URLs if none."""
    from gan_dist.data.shards import ensure_shards, test_urls

    data_dir = ensure_shards(data)
    manifest = Path(data_dir) / "manifest.json"
    if manifest.is_file() and not data.test_urls:
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    return hashlib.sha256(test_urls(data).encode()).hexdigest()


@dataclasses.dataclass
class Reference:
    """The test split in feature space: what generated samples are compared with."""

    features: torch.Tensor  # (N_test, D) float32, CPU
    mu: np.ndarray  # (D,) float64
    sigma: np.ndarray  # (D, D) float64


def compute_metrics(features: torch.Tensor, logits: torch.Tensor, reference: Reference) -> dict[str, float]:
    """All metrics of one sample set: features (N, D) and class logits (N, 10) against the reference."""
    mu, sigma = feature_statistics(features)
    metrics = {"fid": frechet_distance(mu, sigma, reference.mu, reference.sigma),
               "inception_score": inception_score(logits)}
    metrics.update(prdc(reference.features.to(features.device), features, pr_k=PR_K, dc_k=DC_K))
    metrics.update(class_histogram(logits))
    return metrics


@torch.no_grad()
def real_features(net: nn.Module, urls: str, batch_size: int, device: torch.device | str,
                  limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, D) and logits (N, 10) of the first `limit` images of a split (all if None), on CPU."""
    from gan_dist.data.loader import eval_batches

    features, logits, seen = [], [], 0
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = eval_batches(urls, batch_size, 0, 1)
    for images, _labels in batches:
        if limit is not None:
            images = images[: limit - seen]
        f, lg = net.features_and_logits(images.to(device))
        features.append(f.cpu())
        logits.append(lg.cpu())
        seen += len(images)
        if limit is not None and seen >= limit:
            break
    return torch.cat(features), torch.cat(logits)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


class Evaluator:
    """Collective evaluator: construct it on every rank, call `evaluate` on every rank.

    Construction loads the verified feature network on every rank and, on the main process, the
    reference and the floor (cached on disk; the first time it reads the test split and
    `eval.num_samples` train images). `evaluate(G, seed)` returns the same dict on every rank.
    """

    def __init__(self, config: Config, accelerator: Accelerator, cache_dir: str | Path | None = None,
                 weights: str | Path | None = None) -> None:
        self.config = config
        self.accelerator = accelerator
        self.num_samples = config.eval.num_samples
        self.batch_size = config.eval.batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else metrics_cache_dir()
        self.net, self.weights_record = load_feature_network(weights, device=accelerator.device)
        self._reference: Reference | None = None  # main process only
        self.last_class_fractions: list[float] = []  # of the last evaluate(), main process only
        self._floor: dict[str, float] = self._on_main(self._compute_floor)

    # -- collective helpers -------------------------------------------------------------------

    def _on_main(self, fn: Callable[[], T]) -> T:
        """Run fn on the main process, broadcast its result; an error there is raised on every rank."""
        from accelerate.utils import broadcast_object_list

        outcome: list[Any] = [None]
        error: BaseException | None = None
        if self.accelerator.is_main_process:
            try:
                outcome = [("ok", fn())]
            except Exception as exc:  # re-raised below, after the other ranks are told (no hang)
                error = exc
                outcome = [("error", f"{type(exc).__name__}: {exc}")]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(outcome, from_process=0)
        if error is not None:
            raise error
        status, value = outcome[0]
        if status == "error":
            raise RuntimeError(f"evaluation failed on the main process: {value}")
        return value

    # -- reference and floor (main process) ---------------------------------------------------------

    def _cache_key(self) -> str:
        return (f"v{METRICS_VERSION}-w{self.weights_record['sha256'][:16]}"
                f"-d{data_fingerprint(self.config.data)[:16]}")

    def reference(self) -> Reference:
        """The test split's features and statistics (main process; cached on disk)."""
        if self._reference is None:
            path = self.cache_dir / f"reference-{self._cache_key()}.npz"
            if path.is_file():
                with np.load(path) as cached:
                    self._reference = Reference(torch.from_numpy(cached["features"]), cached["mu"],
                                                cached["sigma"])
            else:
                from gan_dist.data.shards import test_urls

                features, _ = real_features(self.net, test_urls(self.config.data), self.batch_size,
                                            self.accelerator.device)
                mu, sigma = feature_statistics(features)
                self._reference = Reference(features, mu, sigma)

                def write(tmp: Path) -> None:
                    with open(tmp, "wb") as handle:
                        np.savez(handle, features=features.numpy(), mu=mu, sigma=sigma)

                _atomic_write(path, write)
        return self._reference

    def _compute_floor(self) -> dict[str, float]:
        reference = self.reference()
        path = self.cache_dir / f"floor-{self._cache_key()}-n{self.num_samples}.json"
        if path.is_file():
            return json.loads(path.read_text())["metrics"]
        from gan_dist.data.shards import train_urls

        features, logits = real_features(self.net, train_urls(self.config.data), self.batch_size,
                                         self.accelerator.device, limit=self.num_samples)
        metrics = compute_metrics(features.to(self.accelerator.device), logits, reference)
        record = {"metrics": metrics, "num_train_images": len(features),
                  "num_test_images": len(reference.features)}
        _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2)))
        return metrics

    def floor(self) -> dict[str, float]:
        """The metrics of `eval.num_samples` real train images vs the test split (same on every rank)."""
        return dict(self._floor)

    # -- generated samples (all ranks) --------------------------------------------------------------

    @torch.no_grad()
    def generated_features(self, G: nn.Module, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, D) and logits (N, 10) of num_samples generated images, gathered on every rank.

        Sample i's noise is row i of one (N, latent_dim) tensor drawn from `seed`, the same on every rank;
        G runs in eval mode (BatchNorm on running statistics), so a sample does not depend on which
        rank or batch produced it. The row order after gathering depends on the process count.
        """
        from accelerate.data_loader import prepare_data_loader
        from torch.utils.data import DataLoader, TensorDataset

        acc = self.accelerator
        latent_dim = int(getattr(G, "latent_dim", self.config.model.latent_dim))
        noise = torch.randn(self.num_samples, latent_dim, generator=torch.Generator().manual_seed(seed))
        # Not accelerator.prepare: that would register the loader in the Accelerator's checkpoint state.
        loader = prepare_data_loader(DataLoader(TensorDataset(noise), batch_size=self.batch_size),
                                     device=acc.device, num_processes=acc.num_processes,
                                     process_index=acc.process_index, put_on_device=True, even_batches=True)
        was_training = G.training
        G.eval()
        features, logits = [], []
        try:
            for (z,) in loader:
                images = G(z).float()  # (b, 1, 28, 28) in [-1, 1]
                f, lg = self.net.features_and_logits(images)
                f, lg = acc.gather_for_metrics((f, lg))  # (<= b * processes, D), (.., 10)
                features.append(f)
                logits.append(lg)
        finally:
            G.train(was_training)
        return torch.cat(features), torch.cat(logits)

    def evaluate(self, G: nn.Module, seed: int = 0) -> dict[str, float]:
        """FID & co of G's samples (collective; the same dict on every rank)."""
        start = time.perf_counter()
        features, logits = self.generated_features(G, seed)

        def on_main() -> dict[str, float]:
            if len(features) != self.num_samples:
                raise RuntimeError(f"gathered {len(features)} generated samples, expected {self.num_samples}")
            metrics = compute_metrics(features, logits, self.reference())
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


def eval_command(run_dir: str | None = None, checkpoint: str | None = None, num_images: int = 10000,
                 out_json: str | None = None, seed: int = 0, batch_size: int = 500) -> dict[str, Any]:
    """`gan-dist eval`: metrics of a trained generator (G_ema when trained), printed and written as JSON.

    Runs under `accelerate launch` on any number of processes. The JSON goes to `out_json`, else
    RUN_DIR/eval_step_N.json, else beside the checkpoint.
    """
    from accelerate import Accelerator

    from gan_dist.checkpoint import load_generator

    G, config, step = load_generator(run_dir=run_dir, checkpoint=checkpoint, use_ema=True)
    config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, num_samples=num_images,
                                                                 batch_size=batch_size))
    accelerator = Accelerator(cpu=config.dist.cpu or not torch.cuda.is_available())
    try:
        G = G.to(accelerator.device)
        evaluator = Evaluator(config, accelerator)
        metrics = evaluator.evaluate(G, seed=seed)
        floor = evaluator.floor()
    finally:
        # Every rank destroys the process group before it exits (a gloo rank leaving with the group
        # still set up can abort with "terminate called without an active exception").
        accelerator.end_training()
    result = {"step": step, "run_dir": run_dir, "checkpoint": checkpoint, "num_images": num_images, "seed": seed,
              "num_processes": accelerator.num_processes,
              "feature_network_sha256": evaluator.weights_record["sha256"], "metrics": metrics, "floor": floor,
              "class_fractions": evaluator.last_class_fractions}
    if accelerator.is_main_process:
        if out_json:
            out = Path(out_json)
        elif run_dir:
            out = Path(run_dir) / f"eval_step_{step}.json"
        else:
            ckpt = Path(checkpoint)  # type: ignore[arg-type]
            out = ckpt / "eval.json" if ckpt.is_dir() else ckpt.with_name(f"{ckpt.stem}.eval.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        source = run_dir or checkpoint
        print(f"gan-dist eval: {source} (step {step}), {num_images} images, seed {seed}, "
              f"{accelerator.num_processes} process(es); floor = {num_images} real train images vs the test split")
        print(format_table(metrics, floor))
        print(f"wrote {out}")
    return result
