"""Tiny archives in the official formats of CIFAR-10 / CIFAR-100 (binary), STL-10 (binary) and CelebA
(aligned zip), written by the tests themselves with known pixels (the real files are not reachable here).

The writers encode the formats independently of gan_dist.data.archives (record by record, plane by plane),
so a reader that swaps channels, rows and columns, or label bytes fails the round trip.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")


def random_images(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 (n, H, W, 3); image i carries i in pixel (0, 0) of the red plane."""
    images = np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    return images


def cifar_records(images: np.ndarray, labels: list[tuple[int, ...]]) -> bytes:
    """CIFAR binary records: label byte(s), then the R, G and B planes (each 32x32 row-major) of each image."""
    out = bytearray()
    for image, label in zip(images, labels, strict=True):
        out += bytes(label)
        for channel in range(3):
            for row in range(32):
                out += bytes(int(v) for v in image[row, :, channel])
    return bytes(out)


def stl10_bytes(images: np.ndarray) -> bytes:
    """STL-10 binary images: per image the R, G and B planes, each COLUMN-major (down column 0 first)."""
    out = bytearray()
    for image in images:
        for channel in range(3):
            for column in range(96):
                out += bytes(int(v) for v in image[:, column, channel])
    return bytes(out)


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    """A tar.gz (or plain tar if path does not end in .gz) with `files`, in this order."""
    with tarfile.open(path, "w:gz" if path.suffix == ".gz" else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_archive(path: Path, files: dict[str, bytes], extracted: bool) -> Path:
    """The files as the archive `path` (tar.gz) or, extracted, as a folder at `path` (what tar -x gives)."""
    return _folder(path, files) if extracted else _tar(path, files)


def cifar10_files(batches: list[tuple[np.ndarray, list[int]]], test: tuple[np.ndarray, list[int]],
                  names: tuple[str, ...] = CIFAR10_NAMES) -> dict[str, bytes]:
    """cifar-10-binary.tar.gz's files with the given train batches (any count; the official has 5) and test."""
    folder = "cifar-10-batches-bin"
    files = {f"{folder}/batches.meta.txt": ("\n".join(names) + "\n\n").encode()}
    for index, (images, labels) in enumerate(batches, 1):
        files[f"{folder}/data_batch_{index}.bin"] = cifar_records(images, [(label,) for label in labels])
    files[f"{folder}/test_batch.bin"] = cifar_records(test[0], [(label,) for label in test[1]])
    files[f"{folder}/readme.html"] = b"<html></html>"
    return files


def cifar100_files(train: tuple[np.ndarray, list[int], list[int]],
                   test: tuple[np.ndarray, list[int], list[int]], fine_names: tuple[str, ...]) -> dict[str, bytes]:
    """cifar-100-binary.tar.gz's files: (images, coarse labels, fine labels) per split."""
    folder = "cifar-100-binary"
    coarse_names = [f"coarse_{i}" for i in range(20)]
    return {
        f"{folder}/coarse_label_names.txt": ("\n".join(coarse_names) + "\n").encode(),
        f"{folder}/fine_label_names.txt": ("\n".join(fine_names) + "\n").encode(),
        f"{folder}/train.bin": cifar_records(train[0], list(zip(train[1], train[2], strict=True))),
        f"{folder}/test.bin": cifar_records(test[0], list(zip(test[1], test[2], strict=True))),
    }


def stl10_files(train: tuple[np.ndarray, list[int]], test: tuple[np.ndarray, list[int]],
                unlabeled: np.ndarray) -> dict[str, bytes]:
    """stl10_binary.tar.gz's files; labels given 1..10 as in the files."""
    folder = "stl10_binary"
    return {
        f"{folder}/class_names.txt": ("\n".join(STL10_NAMES) + "\n").encode(),
        f"{folder}/fold_indices.txt": b"0 1 2\n",
        f"{folder}/train_X.bin": stl10_bytes(train[0]),
        f"{folder}/train_y.bin": bytes(train[1]),
        f"{folder}/test_X.bin": stl10_bytes(test[0]),
        f"{folder}/test_y.bin": bytes(test[1]),
        f"{folder}/unlabeled_X.bin": stl10_bytes(unlabeled),
    }


def celeba_jpeg(seed: int) -> bytes:
    """A 178x218 JPEG: smooth gradients plus a few blocks (so crops and resizes differ visibly)."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:218, 0:178]
    image = np.stack([(rows * 255) // 217, (columns * 255) // 177, (rows + columns + seed * 37) % 256], axis=-1)
    for _ in range(4):
        top, left = int(rng.integers(0, 200)), int(rng.integers(0, 160))
        image[top:top + 18, left:left + 18] = rng.integers(0, 256, 3)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_celeba(directory: Path, partitions: list[int], partition_file: bool = True) -> Path:
    """directory/img_align_celeba.zip with len(partitions) JPEGs 000001.jpg.. (stored, like the official zip),
    and (partition_file) directory/list_eval_partition.txt giving image i partition partitions[i]."""
    directory.mkdir(parents=True, exist_ok=True)
    zip_path = directory / "img_align_celeba.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("img_align_celeba/", b"")
        for index in range(len(partitions)):
            archive.writestr(f"img_align_celeba/{index + 1:06d}.jpg", celeba_jpeg(index))
    if partition_file:
        lines = "".join(f"{index + 1:06d}.jpg {p}\n" for index, p in enumerate(partitions))
        (directory / "list_eval_partition.txt").write_text(lines)
    return zip_path
