"""Write and verify the MNIST WebDataset shards and their manifest.json.

Layout of a shard folder:
  mnist-train-000000.tar ... mnist-test-000001.tar   samples `train-000123.png` (28x28 L) + `.cls` (b"7")
  manifest.json                                      per-shard name, sample count, sha256, size; split
                                                     sizes and label counts; source; format version
Shard bytes are a function of the images only (fixed PNG settings, tar mtime/owner/mode), so every
source gives byte-identical shards. Each file is written under a hidden temp name and renamed into
place, and manifest.json goes last: a killed prepare never leaves a shard that looks valid, and
processes racing on a shared filesystem only ever replace a complete file with an identical one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gan_dist.config import DataConfig, resolved_data_dir
from gan_dist.data.sources import (
    NUM_CLASSES,
    SPLITS,
    DataError,
    MnistArrays,
    _atomic_write,
    _report,
    load_mnist,
    sha256_file,
)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
SHARD_NAME = "mnist-{split}-{index:06d}.tar"
SHARD_NAME_RE = re.compile(r"^mnist-(train|test)-(\d{6})\.tar$")
# Fixed encoder settings: the same pixels always give the same bytes (with the same Pillow/zlib).
PNG_COMPRESS_LEVEL = 9
TAR_MTIME = 0  # seconds since the epoch, for every member
TAR_OWNER = "gan_dist"
TAR_MODE = 0o444
STALE_TEMP_AGE_S = 3600  # leftover temp files of killed writers older than this are removed


class ShardError(DataError):
    """A shard that is missing, corrupt or truncated. The message names the shard (url or file)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`, e.g. mnist-train-000003.tar."""
    return SHARD_NAME.format(split=split, index=index)


def encode_png(image: np.ndarray) -> bytes:
    """(28, 28) uint8 -> grayscale PNG bytes with fixed settings (no metadata, fixed zlib level)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(
        buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def encode_shard(split: str, images: np.ndarray, labels: np.ndarray, first_index: int) -> bytes:
    """One shard's tar bytes: keys `{split}-{first_index + i:06d}`, members .cls then .png, fixed headers."""
    import webdataset as wds  # imports torch: keep it out of module import

    buffer = io.BytesIO()
    with wds.TarWriter(buffer, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE, mtime=TAR_MTIME,
                       encoder=False) as writer:
        for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
            writer.write({"__key__": f"{split}-{first_index + offset:06d}",
                          "png": encode_png(image), "cls": str(int(label)).encode("ascii")})
    return buffer.getvalue()


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """manifest.json of a shard folder, or None if missing, unreadable or of another format version.

    Format: {"format_version", "dataset", "source", "samples_per_shard", "sample_format",
    "splits": {split: {"num_samples", "num_shards", "label_counts"}},
    "shards": [{"split", "name", "num_samples", "sha256", "size_bytes"}, ...]} (train shards first).
    """
    path = Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        entry_keys = ("split", "name", "num_samples", "sha256", "size_bytes")
        if not all(key in entry for entry in manifest["shards"] for key in entry_keys):
            return None
        if not all(int(manifest["splits"][split]["num_samples"]) >= 0 for split in SPLITS):
            return None
        int(manifest["samples_per_shard"])
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def split_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The manifest entries of one split's shards, in order."""
    return [entry for entry in manifest["shards"] if entry["split"] == split]


def _check_shards(directory: Path, manifest: dict[str, Any], full: bool) -> list[tuple[str, str]]:
    """(name, problem) of each shard that is missing, of the wrong size, or (full) of the wrong sha256."""
    problems = []
    for entry in manifest["shards"]:
        path = directory / entry["name"]
        if not path.is_file():
            problems.append((entry["name"], "missing"))
        elif path.stat().st_size != entry["size_bytes"]:
            problems.append((entry["name"], f"size {path.stat().st_size} bytes differs from manifest.json "
                                            f"({entry['size_bytes']}): truncated or replaced"))
        elif full and sha256_file(path) != entry["sha256"]:
            problems.append((entry["name"], "sha256 does not match manifest.json (modified or corrupt)"))
    return problems


def verify_shards(directory: str | os.PathLike) -> list[str]:
    """Names of the shards that are missing or whose sha256 differs from manifest.json
    (["manifest.json"] when the manifest itself is missing or unreadable). Empty means all good."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [MANIFEST_NAME]
    return [name for name, _ in _check_shards(Path(directory), manifest, full=True)]


def _remove_stale_temp_files(directory: Path) -> None:
    """Temp files of killed writers (hidden names, never taken for shards) once they are old enough
    that no live writer can still own them."""
    now = time.time()
    for path in directory.glob(".*.tmp-*"):
        try:
            if now - path.stat().st_mtime > STALE_TEMP_AGE_S:
                path.unlink()
        except OSError:
            pass  # another process removed it first


def write_shards(out_dir: str | os.PathLike, arrays: MnistArrays, samples_per_shard: int = 5000,
                 reuse: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write both splits of `arrays` as shards + manifest.json into out_dir; returns the manifest.

    A shard file whose bytes already equal what would be written is left untouched; `reuse` maps shard
    names to manifest entries already verified on disk (their encoding is skipped). Shards of an older
    layout that the new manifest does not list are removed.
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0 (data.samples_per_shard / --samples-per-shard), "
                         f"got {samples_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reuse = reuse or {}
    splits: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    for split in SPLITS:
        images, labels = arrays.split(split)
        num_shards = math.ceil(len(labels) / samples_per_shard)
        for index in range(num_shards):
            name = shard_name(split, index)
            lo, hi = index * samples_per_shard, min(len(labels), (index + 1) * samples_per_shard)
            if name in reuse and reuse[name]["num_samples"] == hi - lo and reuse[name]["split"] == split:
                entries.append(reuse[name])
                continue
            data = encode_shard(split, images[lo:hi], labels[lo:hi], first_index=lo)
            digest = hashlib.sha256(data).hexdigest()
            path = out / name
            if not (path.is_file() and path.stat().st_size == len(data) and sha256_file(path) == digest):
                _atomic_write(path, lambda stream, data=data: stream.write(data))
            entries.append({"split": split, "name": name, "num_samples": hi - lo, "sha256": digest,
                            "size_bytes": len(data)})
        splits[split] = {
            "num_samples": int(len(labels)),
            "num_shards": num_shards,
            "label_counts": [int(c) for c in np.bincount(labels, minlength=NUM_CLASSES)],
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": "mnist",
        "source": arrays.source,
        "samples_per_shard": samples_per_shard,
        "sample_format": {"png": "28x28 grayscale (mode L) PNG, uint8 pixels", "cls": "label 0-9 as ASCII"},
        "splits": splits,
        "shards": entries,
    }
    listed = {entry["name"] for entry in manifest["shards"]}
    for path in out.glob("mnist-*.tar"):
        if SHARD_NAME_RE.match(path.name) and path.name not in listed:
            path.unlink(missing_ok=True)  # from an older layout (other samples_per_shard)
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _atomic_write(out / MANIFEST_NAME, lambda stream: stream.write(text.encode()))
    return manifest


def prepare_data(out_dir: str | os.PathLike, source: str = "auto", samples_per_shard: int = 5000, *,
                 verify_official_counts: bool = True, cache_dir: Path | None = None) -> dict[str, Any]:
    """Make out_dir hold valid MNIST shards + manifest.json; returns the manifest.

    Idempotent: when manifest.json matches every shard's sha256, nothing is read or written. A shard
    that is missing or whose sha256 differs is reported (one line naming it) and rewritten from
    `source` (auto | idx:DIR | torchvision | wheel). verify_official_counts=False admits tiny test sets.
    """
    out = Path(out_dir).expanduser()
    _remove_stale_temp_files(out)
    manifest = read_manifest(out)
    reuse: dict[str, dict[str, Any]] = {}
    if manifest is not None and manifest["samples_per_shard"] == samples_per_shard:
        problems = _check_shards(out, manifest, full=True)
        if not problems:
            return manifest
        for name, problem in problems:
            _report(f"shard {out / name}: {problem}; rewriting it")
        bad = {name for name, _ in problems}
        reuse = {entry["name"]: entry for entry in manifest["shards"] if entry["name"] not in bad}
    elif manifest is not None:
        _report(f"{out / MANIFEST_NAME} lists {manifest['samples_per_shard']} samples per shard; rewriting "
                f"all shards with {samples_per_shard}")
    arrays = load_mnist(source, data_root=out, cache_dir=cache_dir,
                        verify_official_counts=verify_official_counts)  # verified inside
    _report(f"writing MNIST shards ({samples_per_shard} samples each) to {out} from {arrays.source}")
    if manifest is not None and any(manifest["splits"][s]["num_samples"] != len(arrays.split(s)[1])
                                    for s in SPLITS):
        reuse = {}  # the old shards hold another data set (e.g. a test set): re-encode everything
    return write_shards(out, arrays, samples_per_shard, reuse=reuse)


def _shard_folder_problem(directory: Path) -> str | None:
    """Why directory does not hold a usable shard set (cheap check: manifest + file sizes), or None."""
    manifest = read_manifest(directory)
    if manifest is None:
        return f"no readable {MANIFEST_NAME} (format version {FORMAT_VERSION})"
    problems = _check_shards(directory, manifest, full=False)
    if problems:
        name, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"shard {name}: {problem}{more}"
    return None


def ensure_shards(data: DataConfig) -> Path:
    """The shard folder for `data`, prepared from data.source first if missing or damaged.

    Cheap when the shards are there (manifest + file sizes; `prepare_data` does the full sha256 check).
    Shards of another samples_per_shard are re-written only when data.auto_prepare is true (else used
    as they are). When data.train_urls and data.test_urls are both set, the shards live elsewhere and
    nothing is checked. With several processes per node, call it on the local main process first
    (accelerator.main_process_first()); concurrent calls are safe, only wasteful.
    """
    directory = resolved_data_dir(data)
    if data.train_urls and data.test_urls:
        return directory
    problem = _shard_folder_problem(directory)
    if problem is None:
        manifest = read_manifest(directory)
        assert manifest is not None
        if manifest["samples_per_shard"] == data.samples_per_shard or not data.auto_prepare:
            return directory
        problem = (f"shards hold {manifest['samples_per_shard']} samples each, data.samples_per_shard is "
                   f"{data.samples_per_shard}")
    if not data.auto_prepare:
        raise DataError(f"no usable MNIST shards in {directory} ({problem}); run `gan-dist prepare-data "
                        f"--out {directory}`, or set data.auto_prepare=true, or point data.root at a shard folder")
    _report(f"preparing MNIST shards in {directory} ({problem}) from data.source={data.source}")
    prepare_data(directory, source=data.source, samples_per_shard=data.samples_per_shard)
    return directory


def shard_urls(directory: str | os.PathLike, split: str) -> str:
    """Brace pattern of a split's local shards from manifest.json, e.g. /d/mnist-train-{000000..000011}.tar."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(f"no readable {directory / MANIFEST_NAME}: run `gan-dist prepare-data --out {directory}` "
                        "(or let training prepare it: data.auto_prepare=true)")
    if any(char in str(directory) for char in "{}$") or "::" in str(directory):
        raise DataError(f"shard folder {directory} contains '{{', '}}', '$' or '::', which WebDataset URLs "
                        "expand; choose another data.root")
    names = [entry["name"] for entry in split_shards(manifest, split)]
    if names != [shard_name(split, i) for i in range(len(names))]:
        raise DataError(f"{directory / MANIFEST_NAME}: {split} shards are not numbered 0..{len(names) - 1}; "
                        "re-run `gan-dist prepare-data`")
    if len(names) == 1:
        return str(directory / names[0])
    return str(directory / f"mnist-{split}-{{{0:06d}..{len(names) - 1:06d}}}.tar")


def train_urls(data: DataConfig) -> str:
    """data.train_urls if set, else the brace pattern of the local train shards (from manifest.json)."""
    return data.train_urls or shard_urls(resolved_data_dir(data), "train")


def test_urls(data: DataConfig) -> str:
    """data.test_urls if set, else the brace pattern of the local test shards (from manifest.json)."""
    return data.test_urls or shard_urls(resolved_data_dir(data), "test")


test_urls.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported into tests


def split_size(data: DataConfig, split: str) -> int | None:
    """Samples in `split` according to the local manifest.json, or None when there is none."""
    manifest = read_manifest(resolved_data_dir(data))
    return None if manifest is None else int(manifest["splits"][split]["num_samples"])
