"""The bytes of a shard and of manifest.json: names, fixed encoder settings, and the atomic writes that put
them on disk. Shard bytes are a function of the images only (fixed PNG settings, tar mtime/owner/mode), so every
source and every writer (IDX arrays, an image folder, an official archive) gives byte-identical shards for the
same pixels. gan_dist.data.shards (prepare / verify) and gan_dist.data.benchmarks both write through here.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gan_dist.files import atomic_write, sha256_file, write_text_atomic

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SHARD_NAME = "{dataset}-{split}-{index:06d}.tar"
SHARD_NAME_RE = re.compile(r"^(?P<dataset>[a-z0-9_]+)-(?P<split>train|test)-(?P<index>\d{6})\.tar$")
# Fixed encoder settings: the same pixels always give the same bytes (with the same Pillow/zlib).
PNG_COMPRESS_LEVEL = 9
TAR_MTIME = 0  # seconds since the epoch, for every member
TAR_OWNER = "gan_dist"
TAR_MODE = 0o444


def shard_name(split: str, index: int, dataset: str = "mnist") -> str:
    """File name of shard `index` of `split`, e.g. mnist-train-000003.tar."""
    return SHARD_NAME.format(dataset=dataset, split=split, index=index)


# --- encoding ----------------------------------------------------------------------------------------


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W) -> grayscale (mode L) PNG, (H, W, 3) -> RGB PNG; fixed settings (no metadata, zlib level)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def tar_samples(samples: Iterable[dict[str, Any]]) -> bytes:
    """One shard's tar bytes from {__key__, png, [cls], [path]} samples: members in key, then extension
    order, fixed headers."""
    import webdataset as wds  # imports torch: keep it out of module import

    buffer = io.BytesIO()
    with wds.TarWriter(buffer, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE, mtime=TAR_MTIME,
                       encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    return buffer.getvalue()


def encode_shard(split: str, images: np.ndarray, labels: np.ndarray | None, first_index: int) -> bytes:
    """One shard's tar bytes: keys `{split}-{first_index + i:06d}`, members .cls (unless labels is None)
    then .png."""
    samples = []
    for offset, image in enumerate(images):
        sample = {"__key__": f"{split}-{first_index + offset:06d}", "png": encode_png(image)}
        if labels is not None:
            sample["cls"] = str(int(labels[offset])).encode("ascii")
        samples.append(sample)
    return tar_samples(samples)


def sample_format(image_shape: tuple[int, int, int], num_classes: int, folder: bool) -> dict[str, str]:
    """manifest.json's description of one sample's members."""
    channels, height, width = image_shape
    kind = "grayscale (mode L)" if channels == 1 else "RGB (mode RGB)"
    sample_format = {"png": f"{height}x{width} {kind} PNG, uint8 pixels"}
    if num_classes > 0:
        sample_format["cls"] = f"label 0-{num_classes - 1} as ASCII"
    if folder:
        sample_format["path"] = "the source image's path relative to the folder, UTF-8 (else the name's bytes)"
    return sample_format


# --- writing -----------------------------------------------------------------------------------------


def store_shard(out: Path, split: str, name: str, data: bytes, num_samples: int) -> dict[str, Any]:
    """Write one shard atomically unless the file already holds these bytes; its manifest entry."""
    digest = hashlib.sha256(data).hexdigest()
    path = out / name
    if not (path.is_file() and path.stat().st_size == len(data) and sha256_file(path) == digest):
        atomic_write(path, lambda stream: stream.write(data), len(data))
    return {"split": split, "name": name, "num_samples": num_samples, "sha256": digest, "size_bytes": len(data)}


def finish_shards(out: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Remove this dataset's shards that the manifest does not list (an older layout), write the manifest."""
    listed = {entry["name"] for entry in manifest["shards"]}
    for path in out.glob(f"{manifest['dataset']}-*.tar"):
        match = SHARD_NAME_RE.match(path.name)
        if match and match["dataset"] == manifest["dataset"] and path.name not in listed:
            path.unlink(missing_ok=True)  # from an older layout (other samples_per_shard)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    write_text_atomic(out / MANIFEST_NAME, text)
    return manifest
