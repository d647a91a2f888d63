"""`resolve_dataset`: the data config -> one `ResolvedDataset` (spec, manifest, shard URLs, split sizes,
fingerprint), read once and handed to the loader, the evaluator and the trainer. Shards that are missing
are written first (gan_dist.data.shards); what each dataset is lives in gan_dist.registry.datasets.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan_dist.config import DEFAULT_READ_TIMEOUT_S, DataConfig
from gan_dist.data import shards
from gan_dist.data.shards import dataset_dir
from gan_dist.data.sources import DataError
from gan_dist.registry.datasets import SPLITS, DatasetSpec, dataset_spec

# --- the resolved dataset ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedDataset:
    """A dataset with everything downstream needs, read once: nothing later re-reads manifest.json."""

    spec: DatasetSpec
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 0 = unlabeled (labels in batches are then -1)
    class_names: tuple[str, ...]
    directory: Path | None  # local shard folder (None when both url sets are remote and no manifest is known)
    manifest: dict[str, Any] | None
    train_urls: str  # WebDataset URL patterns ("" for a split with no samples)
    test_urls: str
    train_size: int  # samples per split
    test_size: int
    fingerprint: str  # sha256 hex identifying the data: key of metric caches
    on_corrupt: str  # raise | warn (data.on_corrupt)
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S  # data.read_timeout_s: a pipe:/http(s) shard silent this long fails

    @property
    def name(self) -> str:
        return self.spec.name

    def label_counts(self, split: str) -> list[int] | None:
        """Samples per class of `split` from the manifest; None when unknown or unlabeled."""
        if self.manifest is None or self.num_classes == 0:
            return None
        return list(self.manifest["splits"][split]["label_counts"])

    def describe(self) -> str:
        """One line for logs: name, shape, classes, split sizes."""
        channels, height, width = self.image_shape
        classes = f"{self.num_classes} classes" if self.num_classes else "unlabeled"
        return (f"{self.spec.name} ({channels}x{height}x{width}, {classes}, train {self.train_size}, "
                f"test {self.test_size})")


def _fingerprint(manifest_bytes: bytes | None, train_urls: str, test_urls: str, local: bool) -> str:
    if local and manifest_bytes is not None:
        return hashlib.sha256(manifest_bytes).hexdigest()
    return hashlib.sha256(f"{train_urls}\n{test_urls}".encode()).hexdigest()


def _check_url_pattern(pattern: str, key: str) -> None:
    """A configured URL pattern must name at least one shard, and no blank one (checked at start-up, before
    the run folder is written: the loader would otherwise find out at its first batch)."""
    import webdataset as wds

    try:
        url_list = wds.shardlists.expand_urls(pattern)
    except Exception as error:  # noqa: BLE001 - braceexpand raises on unbalanced patterns
        raise DataError(f"{key}={pattern!r} is not a WebDataset URL pattern: {error}") from None
    if not url_list or not all(url.strip() for url in url_list):
        raise DataError(f"{key}={pattern!r} names no shard (an empty or blank URL): give shard URLs, e.g. "
                        "/data/mnist-train-{000000..000011}.tar, or leave it empty to use data.root")


def resolve_dataset(data: DataConfig, prepare: bool = True) -> ResolvedDataset:
    """Resolve `data` once: spec, shards (prepared from data.source when missing or stale and
    data.auto_prepare, if prepare), manifest (read once), URLs, split sizes, fingerprint.

    prepare=False only reads what is there (no checks, no writes). With data.train_urls and data.test_urls
    both set the shards live elsewhere: nothing is checked or written; a manifest.json under data.root, if
    any, still gives the split sizes and classes (required for a folder dataset), else the spec's official
    sizes apply. Call it on every rank inside accelerator.local_main_process_first(): the local main
    process prepares, the others then find valid shards.
    """
    spec = dataset_spec(data.dataset)
    for key, pattern in (("data.train_urls", data.train_urls), ("data.test_urls", data.test_urls)):
        if pattern:
            _check_url_pattern(pattern, key)
    remote = bool(data.train_urls and data.test_urls)
    if data.train_urls and not data.test_urls and not data.auto_prepare:
        # Training from remote train shards, with no local copy to prepare: the test split (needed for
        # evaluation only) comes from a local manifest if there is one, else it is left unset.
        remote = shards.load_manifest(dataset_dir(data)) is None
    directory: Path | None
    loaded: tuple[dict[str, Any], bytes] | None = None
    if remote:
        directory = Path(data.root).expanduser() if data.root else None
        loaded = shards.load_manifest(directory) if directory is not None else None
    else:
        directory = dataset_dir(data)
        if prepare:
            loaded = shards.ensure_dataset_shards(data, directory)
        else:
            loaded = shards.load_manifest(directory)
            if loaded is None:
                raise DataError(f"no readable {directory / shards.MANIFEST_NAME}: run `gan-dist prepare-data "
                                f"--dataset {spec.name} --out {directory}` (or let training prepare it: "
                                "data.auto_prepare=true)")
    manifest, manifest_bytes = loaded if loaded is not None else (None, None)
    if manifest is not None:
        shards.check_manifest_dataset(manifest, spec, directory)
        image_shape = tuple(int(d) for d in manifest["image_shape"])
        num_classes = int(manifest["num_classes"])
        class_names = tuple(manifest["class_names"])
        sizes = {split: int(manifest["splits"][split]["num_samples"]) for split in SPLITS}
    elif spec.image_shape is not None and spec.num_classes is not None and spec.official_split_sizes:
        image_shape, num_classes = spec.image_shape, spec.num_classes
        class_names = spec.class_names or ()
        sizes = spec.official_split_sizes
    else:
        raise DataError(f"data.dataset={spec.name} read from data.train_urls / data.test_urls needs its "
                        "manifest.json (image shape, classes, split sizes): set data.root to a folder holding "
                        "a copy of it")
    urls = {}
    for split, configured in (("train", data.train_urls), ("test", data.test_urls)):
        if configured:
            urls[split] = configured
        elif manifest is None or directory is None:
            if split == "train":
                raise DataError("no shards for the train split: set data.train_urls or data.root")
            urls[split] = ""  # evaluation refuses to run without data.test_urls (split_batches says so)
        else:
            urls[split] = shards.local_shard_urls(directory, manifest, split)
    if sizes["train"] == 0:
        raise DataError(f"{spec.title}: the train split is empty ({directory}); add images or lower "
                        "data.test_fraction")
    local = not data.train_urls and not data.test_urls
    return ResolvedDataset(
        spec=spec, image_shape=image_shape, num_classes=num_classes, class_names=class_names,  # type: ignore[arg-type]
        directory=directory, manifest=manifest, train_urls=urls["train"], test_urls=urls["test"],
        train_size=sizes["train"], test_size=sizes["test"],
        fingerprint=_fingerprint(manifest_bytes, urls["train"], urls["test"], local), on_corrupt=data.on_corrupt,
        read_timeout_s=data.read_timeout_s)
