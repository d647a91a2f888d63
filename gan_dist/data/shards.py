"""Write and verify the WebDataset shards of a dataset and their manifest.json.

Layout of a shard folder (one dataset per folder; see gan_dist.data.datasets for where it lives):
  {dataset}-{split}-{index:06d}.tar   e.g. mnist-train-000000.tar, fashion_mnist-test-000001.tar, folder-...;
                                      samples `train-000123.png` (C=1: mode L, C=3: mode RGB) + `.cls`
                                      (b"7"; absent for an unlabeled folder) [+ `.path` for a folder dataset:
                                      the source file's path relative to the folder, UTF-8 (a name that is
                                      not UTF-8: its own bytes)]
  manifest.json                       dataset, image shape, classes; per-shard name, sample count, sha256,
                                      size; split sizes and label counts; source; format version; for a
                                      folder its settings, file listing hash and the files it skipped
Shard bytes are a function of the images only (fixed PNG settings, tar mtime/owner/mode), so every
source gives byte-identical shards (MNIST's are the same bytes as before datasets were generalized).
Each file is written under a hidden temp name and renamed into place, and manifest.json goes last: a
killed prepare never leaves a shard that looks valid, and processes racing on a shared filesystem only
ever replace a complete file with an identical one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gan_dist.config import DataConfig
from gan_dist.data import benchmarks
from gan_dist.data.folder import (
    CONVERSION_VERSION,
    MAX_IMAGE_PIXELS,
    MEMORY_BUDGET_BYTES,
    MemoryBudget,
    convert_image,
    default_workers,
    name_bytes,
    one_line,
    ordered_map,
    printable_name,
    scan_folder,
    split_files,
)
from gan_dist.data.shard_format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    encode_png,
    encode_shard,
    finish_shards,
    sample_format,
    shard_name,
    store_shard,
    tar_samples,
)
from gan_dist.data.sources import DataError, ImageArrays, SourceError, load_arrays, report
from gan_dist.files import sha256_file, user_cache_dir
from gan_dist.registry.datasets import (
    FOLDER_DEFAULT_CHANNELS,
    FOLDER_DEFAULT_IMAGE_SIZE,
    SPLITS,
    DatasetSpec,
    dataset_spec,
)

STALE_TEMP_AGE_S = 3600  # leftover temp files of killed writers older than this are removed
MAX_LISTED_FILES = 20  # unreadable files named one per line in a message, then "... and N more"


# --- where the shards live -------------------------------------------------------------------------
# data.root if set; else $GAN_DIST_DATA_DIR/<dataset>, else ~/.cache/gan_dist/<dataset> ($XDG_CACHE_HOME
# respected); a folder dataset adds a level keyed by (absolute source folder, channels, image size, test
# fraction): .../folder/<folder name>-<12 hex digits>. Two datasets, two folders, or one folder at two
# settings never share a cache folder; shard file names carry the dataset too.


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
        base = user_cache_dir() / data.dataset
    spec = dataset_spec(data.dataset)
    if spec.kind == "folder":
        if not data.source.startswith("folder:"):
            raise DataError("data.dataset=folder needs data.source=folder:DIR (the images), or data.root=DIR "
                            "(a folder already holding its shards and manifest.json)")
        return base / data_folder_settings(data).cache_key()
    if spec.kind == "archive":  # one folder per size (and crop): e.g. .../stl10/stl10-48
        return base / spec.settings_key(data.image_size, data.crop)
    return base


class ShardError(DataError):
    """A shard that is missing, corrupt or truncated. The message names the shard (url or file)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


# --- manifest ----------------------------------------------------------------------------------------


def _parse_manifest(text: bytes) -> dict[str, Any] | None:
    """The manifest dict, or None if unreadable or of another format version. MNIST manifests written
    before datasets were generalized lack image_shape / num_classes / class_names: those are filled in."""
    try:
        manifest = json.loads(text)
        if manifest.get("format_version") != FORMAT_VERSION:
            return None
        entry_keys = ("split", "name", "num_samples", "sha256", "size_bytes")
        if not all(key in entry for entry in manifest["shards"] for key in entry_keys):
            return None
        if not all(int(manifest["splits"][split]["num_samples"]) >= 0 for split in SPLITS):
            return None
        int(manifest["samples_per_shard"])
        if manifest.get("dataset", "mnist") == "mnist" and "image_shape" not in manifest:
            manifest.update(dataset="mnist", image_shape=[1, 28, 28], num_classes=10,
                            class_names=[str(digit) for digit in range(10)])
        shape = [int(d) for d in manifest["image_shape"]]
        if len(shape) != 3 or shape[0] not in (1, 3) or min(shape) <= 0:
            return None
        if int(manifest["num_classes"]) < 0 or len(manifest["class_names"]) != int(manifest["num_classes"]):
            return None
        str(manifest["dataset"])
        return manifest
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def load_manifest(directory: str | os.PathLike) -> tuple[dict[str, Any], bytes] | None:
    """(manifest, its file bytes) of a shard folder, or None if missing, unreadable or of another format."""
    try:
        text = (Path(directory) / MANIFEST_NAME).read_bytes()
    except OSError:
        return None
    manifest = _parse_manifest(text)
    return None if manifest is None else (manifest, text)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any] | None:
    """manifest.json of a shard folder, or None if missing, unreadable or of another format version.

    Format: {"format_version", "dataset", "source", "samples_per_shard", "image_shape": [C, H, W],
    "num_classes", "class_names", "sample_format", "splits": {split: {"num_samples", "num_shards",
    "label_counts"}}, "shards": [{"split", "name", "num_samples", "sha256", "size_bytes"}, ...]
    (train shards first), and for a folder dataset "folder": {"path", "channels", "image_size",
    "test_fraction", "listing_sha256", "conversion_version", "max_image_pixels", "num_files",
    "skipped_files": [{"path" (printable_name), "error"}, ...]}}.
    """
    loaded = load_manifest(directory)
    return None if loaded is None else loaded[0]


def split_shards(manifest: dict[str, Any], split: str) -> list[dict[str, Any]]:
    """The manifest entries of one split's shards, in order."""
    return [entry for entry in manifest["shards"] if entry["split"] == split]


def check_manifest_dataset(manifest: dict[str, Any], spec: DatasetSpec, directory: Path | None) -> None:
    """DataError unless the manifest describes `spec`'s data (a folder never silently serves another)."""
    if manifest["dataset"] != spec.name:
        raise DataError(f"{directory} holds {manifest['dataset']} shards ({MANIFEST_NAME}), data.dataset is "
                        f"{spec.name}: point data.root (or --out) at another folder")
    if spec.image_shape is not None and tuple(manifest["image_shape"]) != spec.image_shape:
        raise DataError(f"{directory / MANIFEST_NAME if directory else MANIFEST_NAME}: image shape "
                        f"{manifest['image_shape']} differs from {spec.name}'s {list(spec.image_shape)}")


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


# --- writing -----------------------------------------------------------------------------------------


def _image_shape_of(images: np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of a uint8 array (N, H, W) or (N, H, W, 3)."""
    return (1, *images.shape[1:3]) if images.ndim == 3 else (images.shape[3], *images.shape[1:3])


def write_shards(out_dir: str | os.PathLike, arrays: ImageArrays, samples_per_shard: int = 5000,
                 reuse: dict[str, dict[str, Any]] | None = None, *, dataset: str = "mnist",
                 workers: int | None = None) -> dict[str, Any]:
    """Write both splits of `arrays` (an IDX dataset) as shards + manifest.json into out_dir; returns the
    manifest.

    A shard file whose bytes already equal what would be written is left untouched; `reuse` maps shard
    names to manifest entries already verified on disk (their encoding is skipped). Shards of an older
    layout that the new manifest does not list are removed. Shards are encoded in `workers` threads
    (default: the usable CPUs, at most 8); the bytes do not depend on it.
    """
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0 (data.samples_per_shard / --samples-per-shard), "
                         f"got {samples_per_shard}")
    spec = dataset_spec(dataset)
    assert spec.num_classes is not None and spec.class_names is not None, f"{dataset} is not an IDX dataset"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reuse = reuse or {}
    splits: dict[str, Any] = {}
    jobs: list[tuple[str, str, int, int]] = []  # (split, name, lo, hi) of every shard, in manifest order
    for split in SPLITS:
        images, labels = arrays.split(split)
        num_shards = math.ceil(len(labels) / samples_per_shard)
        for index in range(num_shards):
            lo, hi = index * samples_per_shard, min(len(labels), (index + 1) * samples_per_shard)
            jobs.append((split, shard_name(split, index, spec.name), lo, hi))
        splits[split] = {
            "num_samples": int(len(labels)),
            "num_shards": num_shards,
            "label_counts": [int(c) for c in np.bincount(labels, minlength=spec.num_classes)],
        }

    def encode(job: tuple[str, str, int, int]) -> bytes | None:
        split, name, lo, hi = job
        if name in reuse and reuse[name]["num_samples"] == hi - lo and reuse[name]["split"] == split:
            return None  # verified on disk already
        images, labels = arrays.split(split)
        return encode_shard(split, images[lo:hi], labels[lo:hi], first_index=lo)

    # Shards are encoded in threads (Pillow and zlib release the GIL) and written here, in order.
    entries = []
    for (split, name, lo, hi), data in zip(jobs, ordered_map(encode, jobs, default_workers() if workers is None
                                                             else workers), strict=True):
        entries.append(reuse[name] if data is None else store_shard(out, split, name, data, hi - lo))
    image_shape = _image_shape_of(arrays.train_images)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": spec.name,
        "source": arrays.source,
        "samples_per_shard": samples_per_shard,
        "image_shape": list(image_shape),
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names),
        "sample_format": sample_format(image_shape, spec.num_classes, folder=False),
        "splits": splits,
        "shards": entries,
    }
    return finish_shards(out, manifest)


def _unreadable_message(root: Path, failures: list[tuple[str, str]], fix: str) -> str:
    lines = [f"  {relative}: {error}" for relative, error in failures[:MAX_LISTED_FILES]]
    if len(failures) > MAX_LISTED_FILES:
        lines.append(f"  ... and {len(failures) - MAX_LISTED_FILES} more")
    return f"folder:{root}: {len(failures)} unreadable image file(s){fix}:\n" + "\n".join(lines)


def _without_bomb_warnings(results: Iterable[Any]) -> Iterable[Any]:
    """results, produced with Pillow's DecompressionBombWarning ignored: data.max_image_pixels refuses those
    images by name instead of one warning per file. (Warning filters are process-wide before Python 3.14, so
    the conversion threads see it; under 3.14's thread-local filters the warnings would merely show.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield from results


def write_folder_shards(out_dir: str | os.PathLike, settings: FolderSettings, samples_per_shard: int = 5000, *,
                        on_corrupt: str = "raise", workers: int | None = None,
                        max_image_pixels: int = MAX_IMAGE_PIXELS,
                        memory_budget: int = MEMORY_BUDGET_BYTES) -> dict[str, Any]:
    """Convert the images of settings.directory (gan_dist.data.folder's rule) into shards + manifest.json.

    Images are decoded, converted and PNG-encoded in `workers` threads (default: the usable CPUs, at most
    8), in order, the conversions in flight holding at most `memory_budget` bytes (MemoryBudget); the
    result does not depend on the number of workers. Unreadable files (and bad entries, files refused:
    more than max_image_pixels, not PNG/JPEG/WebP, ...): on_corrupt=warn lists them (stderr, and
    manifest.json's folder.skipped_files) and skips them; on_corrupt=raise converts the rest without writing
    more shards, then raises SourceError naming all, one per line.
    """

    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0 (data.samples_per_shard / --samples-per-shard), "
                         f"got {samples_per_shard}")
    listing = scan_folder(settings.directory)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if workers is None else max(1, workers)
    labeled = listing.num_classes > 0
    budget = MemoryBudget(memory_budget)

    def encode(item: tuple[str, int]) -> tuple[str, int, bytes | None, str | None]:
        relative, label = item
        try:
            pixels = convert_image(listing.root / relative, settings.channels, settings.image_size,
                                   max_image_pixels=max_image_pixels, budget=budget)
        except Exception as error:  # noqa: BLE001 - Pillow raises many types for a bad file
            return relative, label, None, one_line(f"{type(error).__name__}: {error}".strip())
        return relative, label, encode_png(pixels), None

    failures = [(printable_name(relative), why) for relative, why in listing.bad_entries]  # (name, why)
    if on_corrupt == "warn":
        for relative, why in listing.bad_entries:
            report(f"skipping unreadable image {printable_name(str(listing.root / relative))} "
                    f"(data.on_corrupt=warn): {why}")
    splits: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    for split, files in split_files(listing.files, settings.test_fraction).items():
        counts = np.zeros(max(1, listing.num_classes), dtype=np.int64)
        pending: list[dict[str, Any]] = []
        num_samples = 0

        def flush(split: str = split, pending: list[dict[str, Any]] = pending) -> None:
            index = len([e for e in entries if e["split"] == split])
            entries.append(store_shard(out, split, shard_name(split, index, "folder"), tar_samples(pending), len(pending)))
            pending.clear()

        for relative, label, png, error in _without_bomb_warnings(ordered_map(encode, files, workers)):
            if png is None:
                failures.append((printable_name(relative), error or "unreadable"))
                if on_corrupt == "warn":
                    report(f"skipping unreadable image {printable_name(str(listing.root / relative))} "
                           f"(data.on_corrupt=warn): {error}")
                continue
            if failures and on_corrupt == "raise":
                continue  # keep converting only to name every unreadable file
            sample: dict[str, Any] = {"__key__": f"{split}-{num_samples:06d}", "png": png,
                                      "path": name_bytes(relative)}
            if labeled:
                sample["cls"] = str(label).encode("ascii")
                counts[label] += 1
            pending.append(sample)
            num_samples += 1
            if len(pending) == samples_per_shard:
                flush()
        if pending and not (failures and on_corrupt == "raise"):
            flush()
        splits[split] = {"num_samples": num_samples,
                         "num_shards": len([e for e in entries if e["split"] == split]),
                         "label_counts": [int(c) for c in counts] if labeled else []}
    failures.sort()  # by path
    if failures and on_corrupt == "raise":
        raise SourceError(_unreadable_message(listing.root, failures, "; data.on_corrupt=warn (--on-corrupt warn) "
                                              "skips them, or remove them"))
    if splits["train"]["num_samples"] + splits["test"]["num_samples"] == 0:
        raise SourceError(_unreadable_message(listing.root, failures, ": no readable image is left"))
    image_shape = (settings.channels, settings.image_size, settings.image_size)
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": "folder",
        "source": f"folder:{listing.root}",
        "samples_per_shard": samples_per_shard,
        "image_shape": list(image_shape),
        "num_classes": listing.num_classes,
        "class_names": list(listing.class_names),
        "sample_format": sample_format(image_shape, listing.num_classes, folder=True),
        "splits": splits,
        "shards": entries,
        "folder": {**settings.identity(), "listing_sha256": listing.listing_sha256,
                   "conversion_version": CONVERSION_VERSION, "max_image_pixels": max_image_pixels,
                   "num_files": len(listing.files),
                   "skipped_files": [{"path": relative, "error": error} for relative, error in failures]},
    }
    return finish_shards(out, manifest)


# --- prepare / ensure --------------------------------------------------------------------------------


def _folder_problem(manifest: dict[str, Any], settings: FolderSettings,
                    max_image_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why a folder manifest does not describe `settings` and the folder's current files, or None."""

    recorded = manifest.get("folder", {})
    if recorded.get("conversion_version") != CONVERSION_VERSION:
        return (f"the shards were made by conversion rule {recorded.get('conversion_version', 1)}, this gan_dist "
                f"converts by rule {CONVERSION_VERSION} (gan_dist/data/folder.py)")
    wanted = {**settings.identity(), "max_image_pixels": max_image_pixels}
    changed = [f"{key} {recorded.get(key)!r} -> {wanted[key]!r}" for key in wanted if recorded.get(key) != wanted[key]]
    if changed:
        return f"the shards were made with other settings ({', '.join(changed)})"
    if not settings.directory.is_dir():
        report(f"source folder {settings.directory} is gone; using its shards as they are")
        return None
    if scan_folder(settings.directory).listing_sha256 != recorded.get("listing_sha256"):
        return f"files in {settings.directory} were added, removed or modified since the shards were written"
    return None


def prepare_data(out_dir: str | os.PathLike, source: str = "auto", samples_per_shard: int = 5000, *,
                 dataset: str = "mnist", verify_official_counts: bool = True, cache_dir: Path | None = None,
                 channels: int | None = None, image_size: int | None = None, test_fraction: float = 0.1,
                 on_corrupt: str = "raise", workers: int | None = None,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, crop: int | None = None,
                 verify_checksums: bool = True, progress: bool = True) -> dict[str, Any]:
    """Make out_dir hold valid shards of `dataset` + manifest.json; returns the manifest.

    Idempotent: when manifest.json matches every shard's sha256 (and, for a folder, the settings and the
    folder's files; for a benchmark, its settings), nothing is read or written. A shard that is missing or
    whose sha256 differs is reported (one line naming it) and rewritten from `source` (mnist: auto | idx:DIR
    | torchvision | wheel; fashion_mnist: auto | idx:DIR | torchvision; folder: folder:DIR; the benchmarks:
    archive:PATH | download | auto). verify_official_counts=False admits tiny test sets (no official counts and
    checksums). channels, image_size, test_fraction, on_corrupt, workers and max_image_pixels apply to a folder
    (see write_folder_shards); image_size, crop, verify_checksums and progress to a benchmark (see
    gan_dist.data.benchmarks.write_archive_shards; cache_dir is then where `download` puts the archive).
    """
    spec = dataset_spec(dataset)
    out = Path(out_dir).expanduser()
    _remove_stale_temp_files(out)
    manifest = read_manifest(out)
    if manifest is not None:
        check_manifest_dataset(manifest, spec, out)
    if spec.kind == "archive":
        problem = "no manifest"
        if manifest is not None:
            problem = benchmarks.manifest_problem(manifest, spec, image_size, crop, samples_per_shard,
                                                  verify_checksums)
            if problem is None and not _check_shards(out, manifest, full=True):
                return manifest
            report(f"rewriting the {spec.title} shards in {out}: {problem or 'damaged shards'}")
        size, side = spec.archive_settings(image_size, crop)
        settings_note = f"{size}x{size}" + (f", crop {side}" if side is not None else "")
        report(f"writing {spec.title} shards ({settings_note}, {samples_per_shard} samples each) to {out} from "
               f"data.source={source}")
        return benchmarks.write_archive_shards(out, spec, source, image_size=image_size, crop=crop,
                                               samples_per_shard=samples_per_shard, verify_checksums=verify_checksums,
                                               verify_official_counts=verify_official_counts, cache_dir=cache_dir,
                                               workers=workers, progress=progress)
    if spec.kind == "folder":
        settings = folder_settings(source, channels, image_size, test_fraction)
        problem = None if manifest is not None else "no manifest"
        if manifest is not None:
            problem = _folder_problem(manifest, settings, max_image_pixels)
            if problem is None and manifest["samples_per_shard"] != samples_per_shard:
                problem = f"{samples_per_shard} samples per shard asked, {manifest['samples_per_shard']} written"
            if problem is None and not _check_shards(out, manifest, full=True):
                return manifest
            report(f"rewriting the image folder shards in {out}: {problem or 'damaged shards'}")
        report(f"writing image folder shards ({settings.channels}x{settings.image_size}x{settings.image_size}, "
                f"{samples_per_shard} samples each) to {out} from folder:{settings.directory}")
        return write_folder_shards(out, settings, samples_per_shard, on_corrupt=on_corrupt, workers=workers,
                                   max_image_pixels=max_image_pixels)
    reuse: dict[str, dict[str, Any]] = {}
    if manifest is not None and manifest["samples_per_shard"] == samples_per_shard:
        problems = _check_shards(out, manifest, full=True)
        if not problems:
            return manifest
        for name, problem in problems:
            report(f"shard {out / name}: {problem}; rewriting it")
        bad = {name for name, _ in problems}
        reuse = {entry["name"]: entry for entry in manifest["shards"] if entry["name"] not in bad}
    elif manifest is not None:
        report(f"{out / MANIFEST_NAME} lists {manifest['samples_per_shard']} samples per shard; rewriting "
                f"all shards with {samples_per_shard}")
    arrays = load_arrays(spec, source, data_root=out, cache_dir=cache_dir,
                         verify_official_counts=verify_official_counts)  # verified inside
    report(f"writing {spec.title} shards ({samples_per_shard} samples each) to {out} from {arrays.source}")
    if manifest is not None and any(manifest["splits"][s]["num_samples"] != len(arrays.split(s)[1])
                                    for s in SPLITS):
        reuse = {}  # the old shards hold another data set (e.g. a test set): re-encode everything
    return write_shards(out, arrays, samples_per_shard, reuse=reuse, dataset=spec.name, workers=workers)


def prepare_from_config(data: DataConfig, out_dir: str | os.PathLike | None = None, *,
                        workers: int | None = None) -> dict[str, Any]:
    """prepare_data with every setting taken from a data config (the folder default: dataset_dir(data))."""
    return prepare_data(dataset_dir(data) if out_dir is None else out_dir, data.source, data.samples_per_shard,
                        dataset=data.dataset, channels=data.channels, image_size=data.image_size,
                        test_fraction=data.test_fraction, on_corrupt=data.on_corrupt, workers=workers,
                        max_image_pixels=data.max_image_pixels, crop=data.crop,
                        verify_checksums=data.verify_checksums)


def _usable_problem(directory: Path, loaded: tuple[dict[str, Any], bytes] | None, data: DataConfig,
                    spec: DatasetSpec) -> str | None:
    """Why directory does not hold usable shards for `data` (cheap: manifest, file sizes, and for a folder
    the settings and the file listing), or None. DataError when it holds another dataset."""
    if loaded is None:
        return f"no readable {MANIFEST_NAME} (format version {FORMAT_VERSION})"
    manifest = loaded[0]
    check_manifest_dataset(manifest, spec, directory)
    problems = _check_shards(directory, manifest, full=False)
    if problems:
        name, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"shard {name}: {problem}{more}"
    if spec.kind == "archive":  # the size, crop and checksum status asked for
        problem = benchmarks.manifest_problem(manifest, spec, data.image_size, data.crop,
                                              verify_checksums=data.verify_checksums)
        if problem is not None:
            return problem
    if spec.kind == "folder":
        if data.source.startswith("folder:"):
            problem = _folder_problem(manifest, data_folder_settings(data), data.max_image_pixels)
            if problem is not None:
                return problem
        else:  # shards at data.root without their source: they must match what the config asks for
            recorded = manifest.get("folder", {})
            for key, value in (("channels", data.channels), ("image_size", data.image_size)):
                if value is not None and recorded.get(key) != value:
                    raise DataError(f"{directory / MANIFEST_NAME}: shards have {key} {recorded.get(key)}, "
                                    f"data.{key} is {value}; give data.source=folder:DIR to re-prepare them")
    if manifest["samples_per_shard"] != data.samples_per_shard and data.auto_prepare:
        return (f"shards hold {manifest['samples_per_shard']} samples each, data.samples_per_shard is "
                f"{data.samples_per_shard}")
    return None


def ensure_dataset_shards(data: DataConfig, directory: Path | None = None) -> tuple[dict[str, Any], bytes]:
    """(manifest, its bytes) of usable shards for `data` in directory (default dataset_dir(data)),
    prepared from data.source first if missing, damaged or stale and data.auto_prepare.

    Cheap when the shards are there (manifest + file sizes [+ a folder's listing]; `prepare_data` does the
    full sha256 check). Shards of another samples_per_shard are re-written only when data.auto_prepare is
    true (else used as they are). With several processes per node, call it on the local main process
    first (accelerator.local_main_process_first()); concurrent calls are safe, only wasteful.
    """
    spec = dataset_spec(data.dataset)
    directory = dataset_dir(data) if directory is None else directory
    loaded = load_manifest(directory)
    problem = _usable_problem(directory, loaded, data, spec)
    if problem is None:
        assert loaded is not None
        return loaded
    if not data.auto_prepare:
        flags = f" --source {data.source}" if data.source != "auto" else ""
        flags += "".join(f" --{key.replace('_', '-')} {getattr(data, key)}" for key in ("image_size", "crop")
                         if getattr(data, key) is not None)
        flags += "" if data.verify_checksums else " --no-verify-checksums"
        raise DataError(f"no usable {spec.title} shards in {directory} ({problem}); run `gan-dist prepare-data "
                        f"--dataset {spec.name}{flags} --out {directory}`, or set data.auto_prepare=true, or point "
                        "data.root at a shard folder")
    report(f"preparing {spec.title} shards in {directory} ({problem}) from data.source={data.source}")
    prepare_from_config(data, directory)
    loaded = load_manifest(directory)
    if loaded is None:
        raise DataError(f"{directory / MANIFEST_NAME} unreadable right after prepare-data wrote it")
    return loaded


def manifest_report(manifest: dict[str, Any], title: str, directory: Path) -> str:
    """What `gan-dist prepare-data` prints: where, samples and shards per split, the shape, the source, then
    the counts per class (and the files a folder skipped)."""
    channels, height, width = manifest["image_shape"]
    splits = manifest["splits"]
    counts = ", ".join(f"{split} {splits[split]['num_samples']} samples in {splits[split]['num_shards']} shards"
                       for split in SPLITS)
    lines = [f"{title} shards ready in {directory}: {counts} ({channels}x{height}x{width}, source {manifest['source']})"]
    names = manifest["class_names"]
    if names:
        width_name = max(len("class"), *(len(f"{i} {n}") for i, n in enumerate(names)))
        lines.append(f"  {'class':<{width_name}}  {'train':>7}  {'test':>7}")
        train, test = manifest["splits"]["train"]["label_counts"], manifest["splits"]["test"]["label_counts"]
        for index, name in enumerate(names):
            lines.append(f"  {f'{index} {name}':<{width_name}}  {train[index]:>7}  {test[index]:>7}")
    else:
        lines.append("  unlabeled (no class subfolders)")
    skipped = manifest.get("folder", {}).get("skipped_files", [])
    if skipped:
        lines.append(f"  skipped {len(skipped)} unreadable file(s): " + ", ".join(f["path"] for f in skipped))
    return "\n".join(lines)


# --- urls --------------------------------------------------------------------------------------------


def local_shard_urls(directory: str | os.PathLike, manifest: dict[str, Any], split: str) -> str:
    """Brace pattern of a split's local shards from a manifest already read, e.g.
    /d/mnist-train-{000000..000011}.tar ("" when the split has no shard)."""
    directory = Path(directory)
    if any(char in str(directory) for char in "{}$") or "::" in str(directory):
        raise DataError(f"shard folder {directory} contains '{{', '}}', '$' or '::', which WebDataset URLs "
                        "expand; choose another data.root")
    dataset = manifest["dataset"]
    names = [entry["name"] for entry in split_shards(manifest, split)]
    if names != [shard_name(split, i, dataset) for i in range(len(names))]:
        raise DataError(f"{directory / MANIFEST_NAME}: {split} shards are not numbered 0..{len(names) - 1}; "
                        "re-run `gan-dist prepare-data`")
    if not names:
        return ""
    if len(names) == 1:
        return str(directory / names[0])
    return str(directory / f"{dataset}-{split}-{{{0:06d}..{len(names) - 1:06d}}}.tar")


def shard_urls(directory: str | os.PathLike, split: str) -> str:
    """Brace pattern of a split's local shards, read from directory/manifest.json."""
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(f"no readable {Path(directory) / MANIFEST_NAME}: run `gan-dist prepare-data --out "
                        f"{directory}` (or let training prepare it: data.auto_prepare=true)")
    return local_shard_urls(directory, manifest, split)
