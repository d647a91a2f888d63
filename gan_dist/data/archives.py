"""Readers of the benchmark datasets in their official file formats, streaming chunk by chunk.

  cifar10   cifar-10-binary.tar.gz (the *binary* version; never the pickled python one): in
            cifar-10-batches-bin/, data_batch_1..5.bin (train) and test_batch.bin (test), each a run of
            records of 1 label byte (0..9) + 3072 pixel bytes (R, G, B planes of 32x32, row-major);
            batches.meta.txt holds the class names. data_batch_1..k with k < 5 is read as a (partial) train
            split, which the official counts then refuse unless they are not checked (tiny test archives).
  cifar100  cifar-100-binary.tar.gz: in cifar-100-binary/, train.bin and test.bin, records of 2 label bytes
            (coarse 0..19, fine 0..99) + 3072 pixel bytes; fine_label_names.txt, coarse_label_names.txt.
            The chunks carry the fine labels; the coarse ones are read and counted (`coarse_label_counts`).
  stl10     stl10_binary.tar.gz: in stl10_binary/, train_X.bin / train_y.bin (5000), test_X.bin /
            test_y.bin (8000), unlabeled_X.bin (100000). An image is 3 planes of 96x96 bytes, each stored
            COLUMN-major (byte k of a plane is row k % 96, column k // 96): a transpose gives (H, W, 3).
            Labels are bytes 1..10 in the file, 0..9 here; the unlabeled split's labels are -1.
  celeba    img_align_celeba.zip: img_align_celeba/000001.jpg .. 202599.jpg, 178 x 218 (W x H) JPEGs; the
            splits come from list_eval_partition.txt (`000001.jpg 0`: 0 train, 1 valid, 2 test) when it
            sits next to the zip (or inside it), else from the official partition's id ranges (the file's
            content: train 1..162770, valid 162771..182637, test 182638..202599). Unlabeled (-1).

Where from (`open_archive(name, path)`): the official archive file (tar.gz read member by member, never
extracted to disk; CelebA's zip), or the folder it extracts to (either its parent or the folder itself).
Every split's size is known when the archive is opened, from file sizes alone (tar headers, stat, the zip
directory, the partition list), before any pixel is read; a file whose size is no whole number of records
is refused by name. A gzip stream has no index: opening a .tar.gz split decompresses the archive up to its
members (STL-10: up to 2.6 GB per split read); the extracted folder reads only what it needs.

`ArchiveSplit.chunks(n)` yields (images uint8 (n, H, W, 3), labels int64 (n,)) of exactly n samples
(the last one fewer), holding one chunk at a time: the 2.7 GB STL-10 unlabeled split streams in ~28 MB
chunks of 1000. Any chunk size gives the same samples in the same order.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
from PIL import Image

from gan_dist.data.folder import default_workers, ordered_map
from gan_dist.data.sources import SourceError

ARCHIVE_FORMATS = ("cifar10", "cifar100", "stl10", "celeba")
DEFAULT_CHUNK = 1000  # samples per chunk

CIFAR_SIDE = 32
CIFAR_PIXEL_BYTES = 3 * CIFAR_SIDE * CIFAR_SIDE  # 3072: R, G, B planes, row-major
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
CIFAR10_NAMES_FILE = "batches.meta.txt"
CIFAR100_FOLDER = "cifar-100-binary"
CIFAR100_FILES = {"train": ("train.bin",), "test": ("test.bin",)}
CIFAR100_NAMES_FILE = "fine_label_names.txt"
CIFAR100_COARSE_NAMES_FILE = "coarse_label_names.txt"
CIFAR100_NUM_COARSE = 20

STL10_SIDE = 96
STL10_PIXEL_BYTES = 3 * STL10_SIDE * STL10_SIDE  # 27648: 3 planes, each column-major
STL10_FOLDER = "stl10_binary"
STL10_FILES = {"train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
               "unlabeled": ("unlabeled_X.bin", None)}
STL10_NAMES_FILE = "class_names.txt"

CELEBA_ZIP = "img_align_celeba.zip"
CELEBA_FOLDER = "img_align_celeba"
CELEBA_PARTITION_FILE = "list_eval_partition.txt"
CELEBA_SIZE = (178, 218)  # (W, H) of every aligned image
CELEBA_SPLITS = ("train", "valid", "test")  # partition 0, 1, 2
CELEBA_PARTITION_LAST_IDS = (162770, 182637, 202599)  # last image id of partitions 0, 1, 2 (official)
_CELEBA_NAME_RE = re.compile(r"^(\d{6})\.jpg$")
_DECOMPRESS_ERRORS = (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError)


# --- the files of an archive: a tar[.gz], a folder, or a zip ------------------------------------------


class ArchiveFiles(ABC):
    """Named files of an official archive, read as streams. Names are POSIX paths inside the archive
    (for a folder: relative to it); `find` tries the official path, then the bare file name."""

    kind = ""  # tar | folder | zip

    def __init__(self, path: Path) -> None:
        self.path = path

    @abstractmethod
    def size(self, name: str) -> int | None:
        """Bytes of file `name`, None when absent."""

    @abstractmethod
    def open(self, name: str) -> IO[bytes]:
        """A binary stream of file `name`."""

    def close(self) -> None:  # noqa: B027 (a default: only a zip holds an open file)
        """Release what the reader holds open."""

    def where(self, name: str) -> str:
        """How to name file `name` in a message: the archive and the member, or the path on disk."""
        return str(self.path / name) if self.kind == "folder" else f"{self.path}:{name}"

    def find(self, *candidates: str) -> str | None:
        """The first of `candidates` that exists."""
        for name in candidates:
            if self.size(name) is not None:
                return name
        return None

    def read(self, name: str) -> bytes:
        try:
            with self.open(name) as stream:
                return stream.read()
        except _DECOMPRESS_ERRORS as error:
            raise SourceError(f"{self.where(name)}: unreadable ({type(error).__name__}: {error})") from error


class _TarFiles(ArchiveFiles):
    """A tar archive (gzip, bzip2, xz or plain), read in place. Members are found by scanning headers in
    archive order, only as far as needed; seen headers are kept, so each member is located once."""

    kind = "tar"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._tar = tarfile.open(path, "r:*")  # seekable: extractfile streams one member
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
            raise SourceError(f"{path}: not a readable tar archive ({type(error).__name__}: {error})") from error
        self._members: dict[str, tarfile.TarInfo] = {}
        self._complete = False

    def _member(self, name: str) -> tarfile.TarInfo | None:
        while name not in self._members and not self._complete:
            try:
                info = self._tar.next()
            except _DECOMPRESS_ERRORS as error:
                raise SourceError(f"{self.path}: damaged or truncated archive while looking for {name} "
                                  f"({type(error).__name__}: {error})") from error
            if info is None:
                self._complete = True
            elif info.isfile():
                self._members[str(PurePosixPath(info.name))] = info  # "./a/b" -> "a/b"
        return self._members.get(name)

    def size(self, name: str) -> int | None:
        info = self._member(name)
        return None if info is None else int(info.size)

    def open(self, name: str) -> IO[bytes]:
        info = self._member(name)
        if info is None:
            raise FileNotFoundError(name)
        stream = self._tar.extractfile(info)
        assert stream is not None  # a regular file
        return stream

    def close(self) -> None:
        self._tar.close()


class _FolderFiles(ArchiveFiles):
    kind = "folder"

    def size(self, name: str) -> int | None:
        path = self.path / name
        return path.stat().st_size if path.is_file() else None

    def open(self, name: str) -> IO[bytes]:
        return open(self.path / name, "rb")

    def names(self) -> list[str]:
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())


class _ZipFiles(ArchiveFiles):
    kind = "zip"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as error:
            raise SourceError(f"{path}: not a readable zip archive ({error})") from error
        self._infos = {info.filename: info for info in self._zip.infolist() if not info.is_dir()}

    def size(self, name: str) -> int | None:
        info = self._infos.get(name)
        return None if info is None else int(info.file_size)

    def open(self, name: str) -> IO[bytes]:
        return self._zip.open(name)

    def names(self) -> list[str]:
        return sorted(self._infos)

    def close(self) -> None:
        self._zip.close()


def open_files(path: str | os.PathLike) -> ArchiveFiles:
    """The files of a tar[.gz] archive, a zip, or a folder at `path`; SourceError if it is none of them."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _FolderFiles(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such file or folder (data.source=archive:PATH names the official "
                          "archive or the folder it extracts to)")
    if zipfile.is_zipfile(path):
        return _ZipFiles(path)
    return _TarFiles(path)


# --- splits ------------------------------------------------------------------------------------------


Chunk = tuple[np.ndarray, np.ndarray]  # (images uint8 (n, H, W, 3), labels int64 (n,))


@dataclass(frozen=True)
class ArchiveSplit:
    """One official split of an opened archive: its size (known before reading) and a chunk reader."""

    name: str  # train | test | unlabeled (stl10) | valid (celeba)
    num_samples: int
    image_hw: tuple[int, int]  # (H, W) of the images as stored
    labeled: bool  # False: labels are -1
    files: tuple[str, ...]  # where the samples come from (archive:member, or paths), for messages
    _read: Callable[[int], Iterator[Chunk]] = field(repr=False, compare=False)

    def chunks(self, chunk_size: int = DEFAULT_CHUNK) -> Iterator[Chunk]:
        """(images uint8 (n, H, W, 3), labels int64 (n,)) with n = chunk_size except for the last chunk."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
        yield from _rechunk(self._read(chunk_size), chunk_size)


def _rechunk(chunks: Iterator[Chunk], size: int) -> Iterator[Chunk]:
    """Regroup chunks of any sizes into chunks of exactly `size` (the last one smaller), in order."""
    pending: list[Chunk] = []
    held = 0
    for images, labels in chunks:
        while len(labels):
            take = min(size - held, len(labels))
            pending.append((images[:take], labels[:take]))
            held += take
            images, labels = images[take:], labels[take:]
            if held == size:
                yield _concat(pending)
                pending, held = [], 0
    if held:
        yield _concat(pending)


def _concat(parts: list[Chunk]) -> Chunk:
    if len(parts) == 1:
        return np.ascontiguousarray(parts[0][0]), np.ascontiguousarray(parts[0][1])
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_exactly(stream: IO[bytes], size: int, where: str) -> bytes:
    parts, left = [], size
    while left:
        try:
            part = stream.read(left)
        except _DECOMPRESS_ERRORS as error:
            raise SourceError(f"{where}: damaged or truncated ({type(error).__name__}: {error})") from error
        if not part:
            raise SourceError(f"{where}: ended {left} bytes early (truncated)")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


@dataclass
class OpenedArchive:
    """An official archive opened for reading: its splits, and what else it says (class names, ...).

    Use as a context manager (or call close()): a tar or zip stays open while its splits are read."""

    format: str  # cifar10 | cifar100 | stl10 | celeba
    path: Path
    files: ArchiveFiles
    splits: dict[str, ArchiveSplit]
    class_names: tuple[str, ...] | None  # as listed in the archive's names file (None: no such file)
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able facts for the manifest
    # CIFAR-100: per split, counts of the 20 coarse labels, filled while the split is read
    coarse_label_counts: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.files.kind

    def member_paths(self, names: tuple[str, ...]) -> list[str]:
        """The archive paths of the given official file names that this archive holds."""
        return [found for name in names if (found := self._find(name)) is not None]

    def _find(self, name: str) -> str | None:
        folder = {"cifar10": CIFAR10_FOLDER, "cifar100": CIFAR100_FOLDER, "stl10": STL10_FOLDER,
                  "celeba": ""}[self.format]
        return self.files.find(f"{folder}/{name}", name) if folder else self.files.find(name)

    def close(self) -> None:
        self.files.close()

    def __enter__(self) -> OpenedArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _names_file(files: ArchiveFiles, name: str | None) -> tuple[str, ...] | None:
    if name is None:
        return None
    text = files.read(name).decode("utf-8", errors="replace")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


# --- CIFAR-10 / CIFAR-100 ----------------------------------------------------------------------------


def _open_cifar(files: ArchiveFiles, path: Path, fmt: str) -> OpenedArchive:
    folder, split_files = (CIFAR10_FOLDER, CIFAR10_FILES) if fmt == "cifar10" else (CIFAR100_FOLDER, CIFAR100_FILES)
    label_bytes = 1 if fmt == "cifar10" else 2
    num_classes = 10 if fmt == "cifar10" else 100
    record = label_bytes + CIFAR_PIXEL_BYTES
    opened = OpenedArchive(format=fmt, path=path, files=files, splits={}, class_names=None)
    for split, names in split_files.items():
        members, count = [], 0
        for position, name in enumerate(names):
            member = files.find(f"{folder}/{name}", name)
            if member is None and members and all(files.find(f"{folder}/{n}", n) is None for n in names[position:]):
                break  # fewer train batches than the official 5 (a partial copy): the split size check says so
            if member is None:
                raise SourceError(f"{path}: no {folder}/{name} (is this the {fmt} *binary* version, "
                                  f"{'cifar-10-binary.tar.gz' if fmt == 'cifar10' else 'cifar-100-binary.tar.gz'}, "
                                  "or the folder it extracts to?)")
            size = files.size(member)
            assert size is not None
            if size == 0 or size % record:
                raise SourceError(f"{files.where(member)}: {size} bytes is not a whole number of {record}-byte "
                                  f"records ({label_bytes} label byte{'s' if label_bytes > 1 else ''} + 3072 "
                                  "pixels): truncated or not a CIFAR binary file")
            members.append(member)
            count += size // record

        def read(chunk_size: int, split: str = split, members: tuple[str, ...] = tuple(members)) -> Iterator[Chunk]:
            coarse = opened.coarse_label_counts.setdefault(split, np.zeros(CIFAR100_NUM_COARSE, dtype=np.int64))
            coarse[:] = 0
            for member in members:
                where = files.where(member)
                with files.open(member) as stream:
                    left = files.size(member) // record  # type: ignore[operator]
                    while left:
                        n = min(chunk_size, left)
                        rows = np.frombuffer(_read_exactly(stream, n * record, where), np.uint8).reshape(n, record)
                        labels = rows[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: the fine label
                        if labels.max() >= num_classes:
                            raise SourceError(f"{where}: label {labels.max()} outside 0..{num_classes - 1}")
                        if label_bytes == 2:
                            if rows[:, 0].max() >= CIFAR100_NUM_COARSE:
                                raise SourceError(f"{where}: coarse label {rows[:, 0].max()} outside 0..19")
                            coarse += np.bincount(rows[:, 0], minlength=CIFAR100_NUM_COARSE)
                        # (n, 3, 32, 32) planes -> (n, 32, 32, 3)
                        images = rows[:, label_bytes:].reshape(n, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
                        yield np.ascontiguousarray(images), labels
                        left -= n

        opened.splits[split] = ArchiveSplit(split, count, (CIFAR_SIDE, CIFAR_SIDE), True,
                                            tuple(files.where(m) for m in members), read)
    names_file = files.find(f"{folder}/{CIFAR10_NAMES_FILE if fmt == 'cifar10' else CIFAR100_NAMES_FILE}",
                            CIFAR10_NAMES_FILE if fmt == "cifar10" else CIFAR100_NAMES_FILE)
    opened.class_names = _names_file(files, names_file)
    if fmt == "cifar100":
        coarse_file = files.find(f"{folder}/{CIFAR100_COARSE_NAMES_FILE}", CIFAR100_COARSE_NAMES_FILE)
        opened.details["coarse_labels"] = {
            "num_classes": CIFAR100_NUM_COARSE,
            "class_names": list(_names_file(files, coarse_file) or ()),
            "note": "every record carries a coarse (0..19) and a fine (0..99) label byte; the fine label is used",
        }
    return opened


# --- STL-10 ------------------------------------------------------------------------------------------


def stl10_images(raw: bytes, n: int) -> np.ndarray:
    """n STL-10 images as stored (3 column-major 96x96 planes each) -> uint8 (n, 96, 96, 3) (H, W, C)."""
    planes = np.frombuffer(raw, np.uint8).reshape(n, 3, STL10_SIDE, STL10_SIDE)  # (n, C, W, H)
    return np.ascontiguousarray(planes.transpose(0, 3, 2, 1))  # (n, H, W, C)


def _open_stl10(files: ArchiveFiles, path: Path) -> OpenedArchive:
    opened = OpenedArchive(format="stl10", path=path, files=files, splits={}, class_names=None)
    for split, (x_name, y_name) in STL10_FILES.items():
        x_member = files.find(f"{STL10_FOLDER}/{x_name}", x_name)
        y_member = None if y_name is None else files.find(f"{STL10_FOLDER}/{y_name}", y_name)
        if x_member is None or (y_name is not None and y_member is None):
            missing = x_name if x_member is None else y_name
            raise SourceError(f"{path}: no {STL10_FOLDER}/{missing} (is this stl10_binary.tar.gz, the binary "
                              "version, or the folder it extracts to?)")
        size = files.size(x_member)
        assert size is not None
        if size == 0 or size % STL10_PIXEL_BYTES:
            raise SourceError(f"{files.where(x_member)}: {size} bytes is not a whole number of 96x96x3 images "
                              f"({STL10_PIXEL_BYTES} bytes each): truncated or not an STL-10 binary file")
        count = size // STL10_PIXEL_BYTES
        if y_member is not None and files.size(y_member) != count:
            raise SourceError(f"{files.where(y_member)}: {files.size(y_member)} labels for {count} images in "
                              f"{x_name}: the two files do not belong together")

        def read(chunk_size: int, x_member: str = x_member, y_member: str | None = y_member,
                 count: int = count) -> Iterator[Chunk]:
            if y_member is None:
                all_labels = np.full(count, -1, dtype=np.int64)
            else:  # read whole first (1 byte per image): the images are then one sequential read
                raw_labels = np.frombuffer(files.read(y_member), np.uint8)
                if raw_labels.min() < 1 or raw_labels.max() > 10:
                    raise SourceError(f"{files.where(y_member)}: labels outside 1..10 (min {raw_labels.min()}, "
                                      f"max {raw_labels.max()})")
                all_labels = raw_labels.astype(np.int64) - 1  # 1..10 -> 0..9
            where = files.where(x_member)
            with files.open(x_member) as stream:
                for start in range(0, count, chunk_size):
                    n = min(chunk_size, count - start)
                    raw = _read_exactly(stream, n * STL10_PIXEL_BYTES, where)
                    yield stl10_images(raw, n), all_labels[start:start + n]

        members = (x_member,) if y_member is None else (x_member, y_member)
        opened.splits[split] = ArchiveSplit(split, count, (STL10_SIDE, STL10_SIDE), y_member is not None,
                                            tuple(files.where(m) for m in members), read)
    opened.class_names = _names_file(files, files.find(f"{STL10_FOLDER}/{STL10_NAMES_FILE}", STL10_NAMES_FILE))
    return opened


# --- CelebA ------------------------------------------------------------------------------------------


def celeba_official_partition(image_id: int) -> int:
    """The partition (0 train, 1 valid, 2 test) of image `image_id` in the official list_eval_partition.txt."""
    for partition, last in enumerate(CELEBA_PARTITION_LAST_IDS):
        if image_id <= last:
            return partition
    raise ValueError(f"CelebA has no image {image_id:06d} (ids 1..{CELEBA_PARTITION_LAST_IDS[-1]})")


def _parse_partition(text: str, where: str) -> dict[str, int]:
    partition = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2") or not _CELEBA_NAME_RE.match(fields[0]):
            raise SourceError(f"{where}: line {number} is {line.strip()!r}, expected '000001.jpg 0' "
                              "(file name, then 0 train | 1 valid | 2 test)")
        partition[fields[0]] = int(fields[1])
    return partition


def decode_celeba(data: bytes, where: str) -> np.ndarray:
    """One aligned CelebA JPEG -> uint8 (218, 178, 3); SourceError naming it unless decodable at that size."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            pixels = np.asarray(image, dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 - Pillow raises many types for a bad file
        raise SourceError(f"{where}: not a readable JPEG ({type(error).__name__}: {error})") from error
    width, height = CELEBA_SIZE
    if pixels.shape != (height, width, 3):
        raise SourceError(f"{where}: {pixels.shape[1]}x{pixels.shape[0]} pixels, every aligned CelebA image is "
                          f"{width}x{height}")
    return pixels


def _open_celeba(files: ArchiveFiles, path: Path, workers: int | None) -> OpenedArchive:
    zip_path = path
    if files.kind == "folder":  # the folder holding img_align_celeba.zip (torchvision's celeba/ layout too)
        zip_path = path / CELEBA_ZIP
        if not zip_path.is_file():
            raise SourceError(f"{path}: no {CELEBA_ZIP} in it (data.source=archive:PATH names the zip or its folder)")
        folder = files
        files = _ZipFiles(zip_path)
        partition_path: Path | None = folder.path / CELEBA_PARTITION_FILE
    elif files.kind == "zip":
        partition_path = path.parent / CELEBA_PARTITION_FILE
    else:
        raise SourceError(f"{path}: CelebA is read from {CELEBA_ZIP} (a zip), not from a tar archive")
    images = {}
    for name in files.names():
        match = _CELEBA_NAME_RE.match(PurePosixPath(name).name)
        if match and PurePosixPath(name).parent.name in (CELEBA_FOLDER, ""):
            images[PurePosixPath(name).name] = name
    if not images:
        raise SourceError(f"{zip_path}: no {CELEBA_FOLDER}/NNNNNN.jpg images in it (is this {CELEBA_ZIP}?)")
    details: dict[str, Any] = {}
    if partition_path is not None and partition_path.is_file():
        partition = _parse_partition(partition_path.read_text(errors="replace"), str(partition_path))
        details["partition"] = {"source": str(partition_path)}
    elif files.find(CELEBA_PARTITION_FILE, f"{CELEBA_FOLDER}/{CELEBA_PARTITION_FILE}"):
        member = files.find(CELEBA_PARTITION_FILE, f"{CELEBA_FOLDER}/{CELEBA_PARTITION_FILE}")
        assert member is not None
        partition = _parse_partition(files.read(member).decode(errors="replace"), files.where(member))
        details["partition"] = {"source": files.where(member)}
    else:
        partition = {name: celeba_official_partition(int(name[:6])) for name in images}
        details["partition"] = {"source": "the official id ranges (no list_eval_partition.txt found next to "
                                          f"{zip_path.name}): train 1..{CELEBA_PARTITION_LAST_IDS[0]}, valid .."
                                          f"{CELEBA_PARTITION_LAST_IDS[1]}, test ..{CELEBA_PARTITION_LAST_IDS[2]}"}
    unlisted = sorted(set(images) - set(partition))
    missing = sorted(set(partition) - set(images))
    if unlisted or missing:
        problem = (f"{len(missing)} listed image(s) missing from {zip_path.name} (e.g. {missing[0]})" if missing
                   else f"{len(unlisted)} image(s) not in the partition list (e.g. {unlisted[0]})")
        raise SourceError(f"{details['partition']['source']}: {problem}: the list and the zip do not belong together")
    opened = OpenedArchive(format="celeba", path=zip_path, files=files, splits={}, class_names=None, details=details)
    thread_count = default_workers() if workers is None else max(1, workers)
    for index, split in enumerate(CELEBA_SPLITS):
        members = tuple(images[name] for name in sorted(images) if partition[name] == index)

        def read(chunk_size: int, members: tuple[str, ...] = members) -> Iterator[Chunk]:
            for start in range(0, len(members), chunk_size):
                batch = members[start:start + chunk_size]
                raw = [(files.read(member), files.where(member)) for member in batch]  # sequential zip reads
                decoded = list(ordered_map(lambda item: decode_celeba(*item), raw, thread_count))
                yield np.stack(decoded), np.full(len(batch), -1, dtype=np.int64)

        width, height = CELEBA_SIZE
        opened.splits[split] = ArchiveSplit(split, len(members), (height, width), False,
                                            (str(zip_path),), read)
    return opened


# --- entry point -------------------------------------------------------------------------------------


def open_archive(archive_format: str, path: str | os.PathLike, *, workers: int | None = None) -> OpenedArchive:
    """Open the official archive (or its extracted folder) of `archive_format` (cifar10 | cifar100 | stl10 |
    celeba) at `path`: split sizes, class names and file checks now, pixels when a split's chunks are read.

    workers: JPEG decoding threads (CelebA; default: the usable CPUs, at most 8).
    """
    if archive_format not in ARCHIVE_FORMATS:
        raise ValueError(f"unknown archive format {archive_format!r} ({' | '.join(ARCHIVE_FORMATS)})")
    path = Path(path).expanduser()
    files = open_files(path)
    try:
        if archive_format in ("cifar10", "cifar100"):
            return _open_cifar(files, path, archive_format)
        if archive_format == "stl10":
            return _open_stl10(files, path)
        return _open_celeba(files, path, workers)
    except BaseException:
        files.close()
        raise
