"""The benchmark datasets, declared (official archive, URL, checksums, protocol), and their shards written
straight from the official archives (gan_dist.data.archives reads them; this module decides what each split
means for GAN training and writes exactly the shards and manifest.json the MNIST / folder datasets have).

Protocols (name: train split | test split, pixels, classes):
  cifar10        the 50,000 train images | the 10,000 test images; 32x32 as stored; 10 classes
  cifar100       the 50,000 train images | the 10,000 test images; 32x32 as stored; the 100 fine classes
                 (the 20 coarse labels are read, counted and recorded in manifest.json, not used)
  stl10          the 100,000 unlabeled images | the 8,000 test images (labels dropped); 48x48 (default) or
                 96x96; unlabeled. SNGAN's protocol (Miyato et al. 2018: STL-10's unlabeled set at 48x48)
  stl10_labeled  the 5,000 labeled train images | the 8,000 test images; 48 or 96; 10 classes
  celeba         partitions 0 + 1 (train + valid: 182,637) | partition 2 (test: 19,962, identities disjoint
                 from train) of list_eval_partition.txt; the central 108x108 square (DCGAN-tensorflow's crop,
                 carpedm20/DCGAN-tensorflow utils.center_crop with `--input_height=108 --crop`), resized to
                 64 (default) or 128; unlabeled. crop=140 or 178 are options (at 128, 108 is an upscale).
Resizing follows the folder source's rule (gan_dist.data.folder.resize_and_crop: Pillow, Lanczos, which is
antialiased when shrinking); a split's images keep the archive's order.

Checks, before a shard is kept: the archive's sha256 (the official digests below; for an extracted folder,
those of its files), refused in one line naming the file unless verify_checksums=False (one warning, and
manifest.json records what did not match); the split sizes from the file sizes before reading, and each
labeled split's per-class counts after reading, against the official ones (verify_official_counts=False
admits tiny test archives). Shard bytes are a function of the archive's pixels and the protocol settings.

Where the digests come from: TensorFlow Datasets' url_checksums (cifar10.txt, cifar100.txt, stl10.txt,
celeb_a.txt: size and sha256 of each official URL), each matched by independent projects that verify
downloads with them (MLDatasets.jl, gomlx, torchvision-ruby, PyTorch tutorials); the md5s are those the
official pages and torchvision publish (recorded, not checked). Per-file digests of an extracted folder:
CIFAR sha256s from torchvision-ruby's CIFAR10/CIFAR100; STL-10 md5s from torchvision's STL10.train_list /
test_list (md5 is all that is published for those files: checked as md5).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gan_dist.data.archives import (
    CELEBA_PARTITION_FILE,
    CELEBA_ZIP,
    OpenedArchive,
    open_archive,
)
from gan_dist.data.datasets import DatasetSpec
from gan_dist.data.download import download_file, file_digest
from gan_dist.data.folder import default_workers, ordered_map, resize_and_crop
from gan_dist.data.shards import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    _finish,
    _sample_format,
    _store,
    encode_png,
    shard_name,
    tar_samples,
)
from gan_dist.data.sources import SPLITS, DataError, SourceError, _atomic_write, _report, sources_cache_dir

ARCHIVE_SOURCE = "archive:"  # data.source=archive:PATH
DOWNLOAD_SOURCE = "download"
PROTOCOL_NOTE_NAME = "protocol.txt"  # written next to manifest.json
DEFAULT_CHUNK = 1000  # samples read from the archive at a time


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

    spec: DatasetSpec  # the registry entry (name, title, classes, official counts per gan_dist split, sources)
    archive_format: str  # gan_dist.data.archives reader: cifar10 | cifar100 | stl10 | celeba
    archive: OfficialArchive
    splits: dict[str, tuple[str, ...]]  # gan_dist split (train | test) -> official splits, in this order
    labeled: bool  # False: shards carry no .cls (num_classes 0, labels -1)
    image_sizes: tuple[int, ...]  # allowed data.image_size values; the first is the default
    crops: tuple[int, ...]  # allowed center-crop sides before resizing (first: default); () for none
    official_split_sizes: dict[str, int]  # per official split
    official_label_counts: dict[str, tuple[int, ...]]  # per labeled official split
    reference: str  # where the protocol comes from
    note: str  # what the splits are, in words (manifest.json and protocol.txt)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes if self.labeled and self.spec.num_classes else 0

    def settings(self, image_size: int | None = None, crop: int | None = None) -> tuple[int, int | None]:
        """(image size, crop) with the defaults filled in; DataError naming the key when not offered."""
        size = self.image_sizes[0] if image_size is None else int(image_size)
        if size not in self.image_sizes:
            raise DataError(f"data.image_size={size} is not offered for data.dataset={self.name} "
                            f"({' | '.join(map(str, self.image_sizes))})")
        if not self.crops:
            if crop is not None:
                raise DataError(f"data.dataset={self.name} has no crop option (got crop={crop})")
            return size, None
        side = self.crops[0] if crop is None else int(crop)
        if side not in self.crops:
            raise DataError(f"crop={side} is not offered for data.dataset={self.name} "
                            f"({' | '.join(map(str, self.crops))})")
        return size, side


# --- declarations ------------------------------------------------------------------------------------

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
    filename=CELEBA_ZIP,
    url="https://s3.amazonaws.com/pytorch-tutorial-assets/img_align_celeba.zip",
    official_url="https://drive.google.com/uc?export=download&id=0B7EVK8r0v71pZjFTYXZWM3FlRnM",
    size_bytes=1443490838,
    sha256="46fb89443c578308acf364d7d379fe1b9efb793042c0af734b6112e4fd3a8c74",
    md5="00d2c5bc6d35e252742224ab0c1e8fcb",
    companion_digests={
        # Google Drive id 0B7EVK8r0v71pY0NSMzRuSXJEVkk, 2,836,386 bytes (md5 d32c9cbf5e040fd4025c592c306e6668)
        CELEBA_PARTITION_FILE: ("sha256", "fc955bcb3ef8fbdf7d5640d9a8693a8431b5f2ee291a5c1449a1549e7e073fe7"),
    },
)

_ARCHIVE_SOURCES = ("archive:PATH", DOWNLOAD_SOURCE)

CIFAR10 = DatasetSpec(
    name="cifar10", title="CIFAR-10", kind="archive", image_shape=(3, 32, 32), num_classes=10,
    class_names=CIFAR10_CLASSES, official_label_counts={"train": (5000,) * 10, "test": (1000,) * 10},
    official_sha256={CIFAR10_ARCHIVE.filename: CIFAR10_ARCHIVE.sha256}, feature_net=None, sources=_ARCHIVE_SOURCES)
CIFAR100 = DatasetSpec(
    name="cifar100", title="CIFAR-100", kind="archive", image_shape=(3, 32, 32), num_classes=100,
    class_names=CIFAR100_CLASSES, official_label_counts={"train": (500,) * 100, "test": (100,) * 100},
    official_sha256={CIFAR100_ARCHIVE.filename: CIFAR100_ARCHIVE.sha256}, feature_net=None,
    sources=_ARCHIVE_SOURCES)
STL10 = DatasetSpec(
    name="stl10", title="STL-10", kind="archive", image_shape=None, num_classes=0, class_names=(),
    official_label_counts=None, official_sha256={STL10_ARCHIVE.filename: STL10_ARCHIVE.sha256}, feature_net=None,
    sources=_ARCHIVE_SOURCES)
STL10_LABELED = DatasetSpec(
    name="stl10_labeled", title="STL-10 (labeled)", kind="archive", image_shape=None, num_classes=10,
    class_names=STL10_CLASSES, official_label_counts={"train": (500,) * 10, "test": (800,) * 10},
    official_sha256={STL10_ARCHIVE.filename: STL10_ARCHIVE.sha256}, feature_net=None, sources=_ARCHIVE_SOURCES)
CELEBA = DatasetSpec(
    name="celeba", title="CelebA", kind="archive", image_shape=None, num_classes=0, class_names=(),
    official_label_counts=None, official_sha256={CELEBA_ARCHIVE.filename: CELEBA_ARCHIVE.sha256}, feature_net=None,
    sources=_ARCHIVE_SOURCES)

_CIFAR_SIZES = {"train": 50000, "test": 10000}
PROTOCOLS: dict[str, BenchmarkProtocol] = {protocol.name: protocol for protocol in (
    BenchmarkProtocol(
        spec=CIFAR10, archive_format="cifar10", archive=CIFAR10_ARCHIVE,
        splits={"train": ("train",), "test": ("test",)}, labeled=True, image_sizes=(32,), crops=(),
        official_split_sizes=_CIFAR_SIZES, official_label_counts=dict(CIFAR10.official_label_counts or {}),
        reference="Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html (binary version)",
        note="train = the 50,000 images of data_batch_1..5.bin, test = the 10,000 of test_batch.bin, in file "
             "order; 32x32 RGB as stored (no resize); labels 0..9 in batches.meta.txt order."),
    BenchmarkProtocol(
        spec=CIFAR100, archive_format="cifar100", archive=CIFAR100_ARCHIVE,
        splits={"train": ("train",), "test": ("test",)}, labeled=True, image_sizes=(32,), crops=(),
        official_split_sizes=_CIFAR_SIZES, official_label_counts=dict(CIFAR100.official_label_counts or {}),
        reference="Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html (binary version)",
        note="train = the 50,000 images of train.bin, test = the 10,000 of test.bin, in file order; 32x32 RGB "
             "as stored; labels = the 100 fine labels (fine_label_names.txt order); every record also carries "
             "one of 20 coarse labels, counted in manifest.json and not written to the shards."),
    BenchmarkProtocol(
        spec=STL10, archive_format="stl10", archive=STL10_ARCHIVE,
        splits={"train": ("unlabeled",), "test": ("test",)}, labeled=False, image_sizes=(48, 96), crops=(),
        official_split_sizes={"train": 5000, "test": 8000, "unlabeled": 100000}, official_label_counts={},
        reference="SNGAN, Miyato et al. 2018 (STL-10's unlabeled images at 48x48); Coates et al. 2011",
        note="train = the 100,000 images of unlabeled_X.bin, test = the 8,000 of test_X.bin (labels dropped), "
             "in file order; each 96x96 image transposed from the file's column-major planes, then resized to "
             "SxS (48 by default, 96 = as stored) with Pillow's Lanczos filter; unconditional (no labels)."),
    BenchmarkProtocol(
        spec=STL10_LABELED, archive_format="stl10", archive=STL10_ARCHIVE,
        splits={"train": ("train",), "test": ("test",)}, labeled=True, image_sizes=(48, 96), crops=(),
        official_split_sizes={"train": 5000, "test": 8000, "unlabeled": 100000},
        official_label_counts={"train": (500,) * 10, "test": (800,) * 10},
        reference="Coates et al. 2011, https://cs.stanford.edu/~acoates/stl10/ (binary version)",
        note="train = the 5,000 labeled images of train_X.bin, test = the 8,000 of test_X.bin, in file order; "
             "resized to SxS (48 by default, 96 = as stored) with Pillow's Lanczos filter; labels 1..10 in the "
             "files become 0..9 (class_names.txt order)."),
    BenchmarkProtocol(
        spec=CELEBA, archive_format="celeba", archive=CELEBA_ARCHIVE,
        splits={"train": ("train", "valid"), "test": ("test",)}, labeled=False, image_sizes=(64, 128),
        crops=(108, 140, 178), official_split_sizes=CELEBA_SPLIT_SIZES, official_label_counts={},
        reference="crop: carpedm20/DCGAN-tensorflow utils.center_crop (--input_height=108 --crop), used by many "
                  "GAN papers at 64x64; splits: Liu et al. 2015, list_eval_partition.txt",
        note="train = partitions 0 (train) + 1 (valid) of list_eval_partition.txt = 182,637 images, test = "
             "partition 2 = 19,962 images (identities disjoint from train), in file-name order; each 178x218 "
             "JPEG: the central CxC square (C = 108 by default: rows 55..162, columns 35..142, DCGAN-tensorflow's "
             "crop; 140 or 178 are options), resized to SxS (64 by default, or 128) with Pillow's Lanczos filter; "
             "unconditional (no labels)."),
)}


def benchmark_protocol(name: str) -> BenchmarkProtocol:
    """The protocol of benchmark dataset `name`; DataError naming the choices otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise DataError(f"unknown benchmark dataset {name!r} (data.dataset: {' | '.join(PROTOCOLS)})") from None


# --- the source: archive:PATH | download -------------------------------------------------------------


def archive_cache_dir() -> Path:
    """Where `download` puts official archives: <user cache>/gan_dist/sources/archives."""
    return sources_cache_dir() / "archives"


def _checksum_entry(where: str, algorithm: str, expected: str, actual: str) -> dict[str, Any]:
    return {"file": where, "algorithm": algorithm, "expected": expected, "actual": actual, "match": expected == actual}


def _archive_checksums(protocol: BenchmarkProtocol, opened: OpenedArchive,
                       include_archive: bool = True) -> list[dict[str, Any]]:
    """Digest entries of what this archive's check covers: the archive file itself (include_archive), else
    (an extracted folder) each of its files that the protocol reads; plus the companion files used."""
    declared = protocol.archive
    entries = []
    if include_archive and opened.kind == "folder":
        wanted = set()
        for official in {s for splits in protocol.splits.values() for s in splits}:
            wanted.update(Path(f).name for f in opened.splits[official].files)
        for member in opened.member_paths(tuple(sorted(wanted))):
            algorithm, expected = declared.member_digests.get(Path(member).name, (None, None))
            if algorithm is None:
                raise SourceError(f"{opened.files.where(member)}: no official digest is declared for this file")
            actual = file_digest(opened.files.path / member, algorithm)
            entries.append(_checksum_entry(opened.files.where(member), algorithm, expected, actual))
    elif include_archive:
        entries.append(_checksum_entry(str(opened.path), "sha256", declared.sha256, file_digest(opened.path)))
    partition_source = opened.details.get("partition", {}).get("source", "")
    for name, (algorithm, expected) in declared.companion_digests.items():
        if partition_source.endswith(name) and Path(partition_source).is_file():
            entries.append(_checksum_entry(partition_source, algorithm, expected,
                                           file_digest(partition_source, algorithm)))
    return entries


def _judge(entries: list[dict[str, Any]], verify_checksums: bool) -> None:
    """Raise (one line, naming the first file) or warn once about every digest that does not match."""
    bad = [entry for entry in entries if not entry["match"]]
    if not bad:
        return
    first = bad[0]
    line = (f"{first['file']}: {first['algorithm']} {first['actual']} differs from the official "
            f"{first['expected']} (a re-packed, different or damaged copy)")
    if verify_checksums:
        more = f" ({len(bad) - 1} more file(s) differ)" if len(bad) > 1 else ""
        raise SourceError(f"{line}{more}; verify_checksums=False (data.verify_checksums=false) uses it anyway, "
                          "recording the mismatch in manifest.json")
    others = "".join(f"; {e['file']}: {e['algorithm']} {e['actual']}" for e in bad[1:])
    warnings.warn(f"{line}{others}; used anyway (verify_checksums=False), recorded in manifest.json",
                  UserWarning, stacklevel=3)


def resolve_archive(protocol: BenchmarkProtocol, source: str, *, cache_dir: Path | None = None,
                    verify_checksums: bool = True, progress: bool = True) -> tuple[Path, str, list[dict[str, Any]]]:
    """(local archive path or folder, the source as recorded in manifest.json, checksum entries already made).

    source: archive:PATH (the official archive file or the folder it extracts to) | download (the official
    URL into cache_dir, default `archive_cache_dir()`, verified while it arrives)."""
    if source.startswith(ARCHIVE_SOURCE) and len(source) > len(ARCHIVE_SOURCE):
        path = Path(source[len(ARCHIVE_SOURCE):]).expanduser().resolve()
        return path, f"{ARCHIVE_SOURCE}{path}", []
    if source == DOWNLOAD_SOURCE:
        declared = protocol.archive
        dest = (archive_cache_dir() if cache_dir is None else Path(cache_dir)) / declared.filename
        done = download_file(declared.url, dest, digest=declared.sha256, size_bytes=declared.size_bytes,
                             verify_checksum=verify_checksums, progress=progress)
        entry = _checksum_entry(str(dest), "sha256", declared.sha256, done.digest)
        return dest, f"{DOWNLOAD_SOURCE}:{declared.url}", [entry]
    raise DataError(f"data.source={source!r} is not a source of data.dataset={protocol.name} "
                    f"(archive:PATH | download)")


# --- conversion --------------------------------------------------------------------------------------


def settings_key(protocol: BenchmarkProtocol, image_size: int | None = None, crop: int | None = None) -> str:
    """A folder name for the shards of `protocol` at these settings (defaults filled in), safe in a
    WebDataset URL: cifar10-32, stl10-48, celeba-64-crop108. Shards of one dataset at two sizes must not
    share a folder (their manifest.json would replace each other's)."""
    size, side = protocol.settings(image_size, crop)
    return f"{protocol.name}-{size}" + (f"-crop{side}" if side is not None else "")


def manifest_problem(manifest: dict[str, Any], protocol: BenchmarkProtocol, image_size: int | None = None,
                     crop: int | None = None, samples_per_shard: int | None = None) -> str | None:
    """Why an existing manifest.json does not describe `protocol`'s shards at these settings, or None."""
    size, side = protocol.settings(image_size, crop)
    benchmark = manifest.get("benchmark") or {}
    wanted = {"dataset": protocol.name, "protocol": protocol.name, "image_size": size, "crop": side}
    found = {"dataset": manifest.get("dataset"), "protocol": benchmark.get("protocol"),
             "image_size": benchmark.get("image_size"), "crop": benchmark.get("crop")}
    if samples_per_shard is not None:
        wanted["samples_per_shard"], found["samples_per_shard"] = samples_per_shard, manifest.get("samples_per_shard")
    changed = [f"{key} {found[key]!r} -> {wanted[key]!r}" for key in wanted if found[key] != wanted[key]]
    return f"the shards were made with other settings ({', '.join(changed)})" if changed else None


def image_transform(native_hw: tuple[int, int], image_size: int,
                    crop: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 (H, W, 3) as stored -> uint8 (S, S, 3): the central crop x crop square (when crop), then the
    folder source's resize (Lanczos; a no-op when the side is already S)."""
    height, width = native_hw
    if crop is not None and (crop > height or crop > width):
        raise DataError(f"crop={crop} is larger than the {width}x{height} images")
    top, left = ((height - crop) // 2, (width - crop) // 2) if crop is not None else (0, 0)
    side_h, side_w = (crop, crop) if crop is not None else (height, width)

    def transform(image: np.ndarray) -> np.ndarray:
        image = image[top:top + side_h, left:left + side_w]
        if image.shape[:2] == (image_size, image_size):
            return image
        return np.asarray(resize_and_crop(Image.fromarray(image), image_size), dtype=np.uint8)

    return transform


def protocol_note(protocol: BenchmarkProtocol, image_size: int, crop: int | None) -> str:
    """protocol.txt: what the shards are, in words, with the settings used."""
    settings = f"image size {image_size}" + (f", crop {crop}" if crop is not None else "")
    return (f"{protocol.spec.title} ({protocol.name}), {settings}\n{protocol.note}\nreference: {protocol.reference}\n"
            f"archive: {protocol.archive.filename} ({protocol.archive.url}), sha256 {protocol.archive.sha256}\n")


def _check_split_sizes(protocol: BenchmarkProtocol, opened: OpenedArchive) -> None:
    for official in [s for splits in protocol.splits.values() for s in splits]:
        split = opened.splits[official]
        expected = protocol.official_split_sizes[official]
        if split.num_samples != expected:
            raise SourceError(f"{', '.join(split.files)}: {split.num_samples} images in the {official} split, the "
                              f"official {protocol.spec.title} has {expected} (a re-packed or partial copy; "
                              "verify_official_counts=False admits it)")


def _check_class_names(protocol: BenchmarkProtocol, opened: OpenedArchive) -> None:
    names = opened.class_names
    if protocol.labeled and names is not None and names != protocol.spec.class_names:
        raise SourceError(f"{opened.path}: its class names file lists {list(names)[:4]}..., the official "
                          f"{protocol.spec.title} names are {list(protocol.spec.class_names or ())[:4]}...")


def _check_label_counts(protocol: BenchmarkProtocol, opened: OpenedArchive, official: str,
                        counts: np.ndarray) -> None:
    expected = protocol.official_label_counts.get(official)
    if expected is not None and tuple(int(c) for c in counts) != expected:
        split = opened.splits[official]
        raise SourceError(f"{', '.join(split.files)}: per-class counts of the {official} split "
                          f"{[int(c) for c in counts]} differ from the official {list(expected)} (a re-packed or "
                          "modified copy; verify_official_counts=False admits it)")


def _add_counts(total: np.ndarray, more: np.ndarray) -> np.ndarray:
    """total + more for count vectors of possibly different lengths."""
    if len(more) > len(total):
        total = np.concatenate([total, np.zeros(len(more) - len(total), np.int64)])
    total[:len(more)] += more
    return total


def write_archive_shards(out_dir: str | os.PathLike, protocol: BenchmarkProtocol | str, source: str, *,
                         image_size: int | None = None, crop: int | None = None, samples_per_shard: int = 5000,
                         verify_checksums: bool = True, verify_official_counts: bool = True,
                         cache_dir: Path | None = None, workers: int | None = None,
                         chunk_size: int = DEFAULT_CHUNK, progress: bool = True) -> dict[str, Any]:
    """Write `protocol`'s train and test shards + manifest.json (+ protocol.txt) into out_dir from `source`
    (archive:PATH | download); returns the manifest.

    The shards are those of the MNIST / folder datasets (`{dataset}-{split}-{index:06d}.tar`, samples
    `{split}-{i:06d}.png` [+ `.cls`], manifest.json with counts, sha256 and size per shard, and the source),
    plus a "benchmark" section in manifest.json: protocol, settings, official splits used, checksums. The
    archive is read `chunk_size` samples at a time and images are converted and PNG-encoded in `workers`
    threads (default: usable CPUs, at most 8): memory stays bounded, and the bytes depend on neither.
    verify_checksums=False: a digest mismatch warns once instead of refusing (recorded in the manifest).
    verify_official_counts=False: tiny or partial archives are admitted (split sizes and class counts).
    """
    protocol = benchmark_protocol(protocol) if isinstance(protocol, str) else protocol
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0 (data.samples_per_shard / --samples-per-shard), "
                         f"got {samples_per_shard}")
    size, crop_side = protocol.settings(image_size, crop)
    out = Path(out_dir).expanduser()
    archive_path, recorded_source, checksums = resolve_archive(
        protocol, source, cache_dir=cache_dir, verify_checksums=verify_checksums, progress=progress)
    workers = default_workers() if workers is None else max(1, workers)
    with open_archive(protocol.archive_format, archive_path, workers=workers) as opened:
        if not checksums:
            checksums = _archive_checksums(protocol, opened)
            _judge(checksums, verify_checksums)
        else:  # the download checked (and warned about) the archive; a partition file next to it is checked here
            extra = _archive_checksums(protocol, opened, include_archive=False)
            _judge(extra, verify_checksums)
            checksums += extra
        if verify_official_counts:
            _check_split_sizes(protocol, opened)
            _check_class_names(protocol, opened)
        out.mkdir(parents=True, exist_ok=True)
        # From here shards change: a manifest of earlier shards must not outlive a refusal half-way.
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        splits, entries, official_counts = _write_splits(out, protocol, opened, size, crop_side, samples_per_shard,
                                                         workers, chunk_size, progress, verify_official_counts)
        image_shape = (3, size, size)
        benchmark: dict[str, Any] = {
            "protocol": protocol.name,
            "image_size": size,
            "crop": crop_side,
            "resize": "center crop (if any), then gan_dist.data.folder.resize_and_crop (Pillow Lanczos)",
            "splits": {split: list(official) for split, official in protocol.splits.items()},
            "official_split_sizes": {split: opened.splits[split].num_samples for split in opened.splits},
            "official_label_counts": official_counts,
            "archive": {"file": protocol.archive.filename, "path": str(opened.path), "kind": opened.kind,
                        "url": protocol.archive.url, "official_url": protocol.archive.official_url},
            "checksums": {"verify_checksums": verify_checksums, "verified": all(e["match"] for e in checksums),
                          "files": checksums},
            "verify_official_counts": verify_official_counts,
            "details": opened.details,
            "reference": protocol.reference,
            "note": protocol.note,
        }
        if protocol.archive_format == "cifar100":
            benchmark["details"] = {**opened.details, "coarse_label_counts": {
                split: [int(c) for c in counts] for split, counts in opened.coarse_label_counts.items()}}
    note = protocol_note(protocol, size, crop_side)
    _atomic_write(out / PROTOCOL_NOTE_NAME, lambda stream: stream.write(note.encode()))
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": protocol.name,
        "source": recorded_source,
        "samples_per_shard": samples_per_shard,
        "image_shape": list(image_shape),
        "num_classes": protocol.num_classes,
        "class_names": list(protocol.spec.class_names or ()) if protocol.labeled else [],
        "sample_format": _sample_format(image_shape, protocol.num_classes, folder=False),
        "splits": splits,
        "shards": entries,
        "benchmark": benchmark,
    }
    return _finish(out, manifest)


def _write_splits(out: Path, protocol: BenchmarkProtocol, opened: OpenedArchive, size: int, crop: int | None,
                  samples_per_shard: int, workers: int, chunk_size: int, progress: bool,
                  verify_official_counts: bool) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[int]]]:
    """Stream every split into shards; (manifest splits, shard entries, per-class counts per official split)."""
    from tqdm import tqdm

    num_classes = protocol.spec.num_classes or 0
    splits: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    official_counts: dict[str, list[int]] = {}
    for split in SPLITS:
        sources = [opened.splits[official] for official in protocol.splits[split]]
        counts = np.zeros(max(1, num_classes), dtype=np.int64)
        pending: list[dict[str, Any]] = []
        num_samples = 0

        def samples(split: str = split, sources: list = sources) -> Iterator[tuple[np.ndarray, int, Callable]]:
            for archive_split in sources:
                transform = image_transform(archive_split.image_hw, size, crop)
                per_class = np.zeros(len(protocol.official_label_counts.get(archive_split.name, ())), np.int64)
                for images, labels in archive_split.chunks(chunk_size):  # (n, H, W, 3) uint8, (n,) int64
                    if archive_split.labeled:
                        per_class = _add_counts(per_class, np.bincount(labels))
                    for image, label in zip(images, labels.tolist(), strict=True):
                        yield image, label, transform
                if archive_split.labeled:
                    official_counts[archive_split.name] = [int(c) for c in per_class]
                    if verify_official_counts:
                        _check_label_counts(protocol, opened, archive_split.name, per_class)

        def encode(item: tuple[np.ndarray, int, Callable]) -> tuple[bytes, int]:
            image, label, transform = item
            return encode_png(transform(image)), label

        def flush(split: str = split, pending: list[dict[str, Any]] = pending) -> None:
            index = len([e for e in entries if e["split"] == split])
            name = shard_name(split, index, protocol.name)
            entries.append(_store(out, split, name, tar_samples(pending), len(pending)))
            pending.clear()

        total = sum(s.num_samples for s in sources)
        with tqdm(total=total, desc=f"{protocol.name} {split}", unit="img", disable=not progress,
                  mininterval=1.0) as bar:
            for png, label in ordered_map(encode, samples(), workers):
                sample: dict[str, Any] = {"__key__": f"{split}-{num_samples:06d}", "png": png}
                if protocol.labeled:
                    sample["cls"] = str(label).encode("ascii")
                    counts[label] += 1
                pending.append(sample)
                num_samples += 1
                bar.update(1)
                if len(pending) == samples_per_shard:
                    flush()
        if pending:
            flush()
        splits[split] = {"num_samples": num_samples,
                         "num_shards": len([e for e in entries if e["split"] == split]),
                         "label_counts": [int(c) for c in counts] if protocol.labeled else []}
        _report(f"{protocol.name} {split}: {num_samples} images in {splits[split]['num_shards']} shards")
    return splits, entries, official_counts
