"""The benchmark datasets' shards, written straight from their official archives (gan_dist.data.archives reads
them; what each dataset is, its archive, checksums and protocol, is declared in gan_dist.registry.datasets).
This module decides what each split means for GAN training and writes exactly the shards and manifest.json the
MNIST / folder datasets have, plus protocol.txt (the protocol in words) beside them.

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

Sources (data.source): archive:PATH (the official archive, or the folder it extracts to), download (the
official URL into the cache, resumable, verified while it arrives: gan_dist.data.download), auto (the archive
a download left in the cache; else one line saying which of the two to give).

Checks, before a shard is kept: the archive's sha256 (the official digests; for an extracted folder, those of
its files), refused in one line naming the file unless verify_checksums=False (data.verify_checksums: one
warning, and manifest.json records what did not match); the split sizes from the file sizes before reading,
and each labeled split's per-class counts after reading, against the official ones (verify_official_counts=
False admits tiny test archives). Shard bytes are a function of the archive's pixels and the protocol settings.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gan_dist.data.archives import OpenedArchive, open_archive
from gan_dist.data.download import download_file, file_digest
from gan_dist.data.folder import default_workers, ordered_map, resize_and_crop
from gan_dist.data.shard_format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    encode_png,
    finish_shards,
    sample_format,
    shard_name,
    store_shard,
    tar_samples,
)
from gan_dist.data.sources import DataError, SourceError, report, sources_cache_dir
from gan_dist.files import atomic_write
from gan_dist.registry.datasets import DATASETS, SPLITS, BenchmarkProtocol, DatasetSpec, dataset_spec

ARCHIVE_SOURCE = "archive:"  # data.source=archive:PATH
DOWNLOAD_SOURCE = "download"
AUTO_SOURCE = "auto"
PROTOCOL_NOTE_NAME = "protocol.txt"  # written next to manifest.json
DEFAULT_CHUNK = 1000  # samples read from the archive at a time


def benchmark_spec(dataset: DatasetSpec | str) -> DatasetSpec:
    """The registry entry of a benchmark dataset (one read from an official archive); DataError otherwise."""
    spec = dataset_spec(dataset) if isinstance(dataset, str) else dataset
    if spec.benchmark is None:
        choices = " | ".join(name for name, other in DATASETS.items() if other.benchmark is not None)
        raise DataError(f"data.dataset={spec.name} is not read from an official archive ({choices} are)")
    return spec


def _protocol(spec: DatasetSpec) -> BenchmarkProtocol:
    assert spec.benchmark is not None
    return spec.benchmark


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


def resolve_archive(spec: DatasetSpec, source: str, *, cache_dir: Path | None = None,
                    verify_checksums: bool = True, progress: bool = True) -> tuple[Path, str, list[dict[str, Any]]]:
    """(local archive path or folder, the source as recorded in manifest.json, checksum entries already made).

    source: archive:PATH (the official archive file or the folder it extracts to) | download (the official
    URL into cache_dir, default `archive_cache_dir()`, verified while it arrives) | auto (the archive a
    download left in cache_dir; SourceError saying which source to give when there is none)."""
    declared = _protocol(spec).archive
    cache = archive_cache_dir() if cache_dir is None else Path(cache_dir)
    if source.startswith(ARCHIVE_SOURCE) and len(source) > len(ARCHIVE_SOURCE):
        path = Path(source[len(ARCHIVE_SOURCE):]).expanduser().resolve()
        return path, f"{ARCHIVE_SOURCE}{path}", []
    if source == AUTO_SOURCE:
        if (cache / declared.filename).is_file():
            return _download(spec, cache, verify_checksums, progress)  # checked like a download: nothing fetched
        raise SourceError(f"no {spec.title} archive at hand (data.source=auto looked for {cache / declared.filename}): "
                          f"give data.source=archive:PATH (the official {declared.filename} or the folder it "
                          f"extracts to) or data.source=download ({declared.url}, {declared.size_bytes / 1e6:.0f} MB)")
    if source == DOWNLOAD_SOURCE:
        return _download(spec, cache, verify_checksums, progress)
    raise DataError(f"data.source={source!r} is not a source of data.dataset={spec.name} "
                    f"({' | '.join(spec.sources)})")


def _download(spec: DatasetSpec, cache: Path, verify_checksums: bool,
              progress: bool) -> tuple[Path, str, list[dict[str, Any]]]:
    declared = _protocol(spec).archive
    dest = cache / declared.filename
    done = download_file(declared.url, dest, digest=declared.sha256, size_bytes=declared.size_bytes,
                         verify_checksum=verify_checksums, progress=progress)
    entry = _checksum_entry(str(dest), "sha256", declared.sha256, done.digest)
    return dest, f"{DOWNLOAD_SOURCE}:{declared.url}", [entry]


# --- conversion --------------------------------------------------------------------------------------


def settings_key(spec: DatasetSpec | str, image_size: int | None = None, crop: int | None = None) -> str:
    """The shard folder's name at these settings (the registry's DatasetSpec.settings_key): cifar10-32,
    stl10-48, celeba-64-crop108. Shards of one dataset at two sizes must not share a folder (their
    manifest.json would replace each other's)."""
    return benchmark_spec(spec).settings_key(image_size, crop)


def manifest_problem(manifest: dict[str, Any], spec: DatasetSpec | str, image_size: int | None = None,
                     crop: int | None = None, samples_per_shard: int | None = None,
                     verify_checksums: bool = False) -> str | None:
    """Why an existing manifest.json does not describe `spec`'s shards at these settings, or None.
    verify_checksums: shards written from an archive that failed its checksums (with verify_checksums=False)
    are not good enough either."""
    spec = benchmark_spec(spec)
    size, side = spec.archive_settings(image_size, crop)
    benchmark = manifest.get("benchmark") or {}
    wanted = {"dataset": spec.name, "protocol": spec.name, "image_size": size, "crop": side}
    found = {"dataset": manifest.get("dataset"), "protocol": benchmark.get("protocol"),
             "image_size": benchmark.get("image_size"), "crop": benchmark.get("crop")}
    if samples_per_shard is not None:
        wanted["samples_per_shard"], found["samples_per_shard"] = samples_per_shard, manifest.get("samples_per_shard")
    changed = [f"{key} {found[key]!r} -> {wanted[key]!r}" for key in wanted if found[key] != wanted[key]]
    if changed:
        return f"the shards were made with other settings ({', '.join(changed)})"
    if verify_checksums and not (benchmark.get("checksums") or {}).get("verified", False):
        return ("the shards were written from an archive whose checksums did not match the official ones "
                "(data.verify_checksums=false then); data.verify_checksums=true asks for the official archive")
    return None


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


def protocol_note(spec: DatasetSpec, image_size: int, crop: int | None) -> str:
    """protocol.txt: what the shards are, in words, with the settings used."""
    protocol = _protocol(spec)
    settings = f"image size {image_size}" + (f", crop {crop}" if crop is not None else "")
    return (f"{spec.title} ({spec.name}), {settings}\n{protocol.note}\nreference: {protocol.reference}\n"
            f"archive: {protocol.archive.filename} ({protocol.archive.url}), sha256 {protocol.archive.sha256}\n")


def _check_split_sizes(spec: DatasetSpec, opened: OpenedArchive) -> None:
    protocol = _protocol(spec)
    for official in [s for splits in protocol.splits.values() for s in splits]:
        split = opened.splits[official]
        expected = protocol.official_split_sizes[official]
        if split.num_samples != expected:
            raise SourceError(f"{', '.join(split.files)}: {split.num_samples} images in the {official} split, the "
                              f"official {spec.title} has {expected} (a re-packed or partial copy; "
                              "verify_official_counts=False admits it)")


def _check_class_names(spec: DatasetSpec, opened: OpenedArchive) -> None:
    names = opened.class_names
    if _protocol(spec).labeled and names is not None and names != spec.class_names:
        raise SourceError(f"{opened.path}: its class names file lists {list(names)[:4]}..., the official "
                          f"{spec.title} names are {list(spec.class_names or ())[:4]}...")


def _check_label_counts(spec: DatasetSpec, opened: OpenedArchive, official: str, counts: np.ndarray) -> None:
    expected = _protocol(spec).official_label_counts.get(official)
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


def write_archive_shards(out_dir: str | os.PathLike, dataset: DatasetSpec | str, source: str, *,
                         image_size: int | None = None, crop: int | None = None, samples_per_shard: int = 5000,
                         verify_checksums: bool = True, verify_official_counts: bool = True,
                         cache_dir: Path | None = None, workers: int | None = None,
                         chunk_size: int = DEFAULT_CHUNK, progress: bool = True) -> dict[str, Any]:
    """Write `dataset`'s train and test shards + manifest.json (+ protocol.txt) into out_dir from `source`
    (archive:PATH | download | auto); returns the manifest.

    The shards are those of the MNIST / folder datasets (`{dataset}-{split}-{index:06d}.tar`, samples
    `{split}-{i:06d}.png` [+ `.cls`], manifest.json with counts, sha256 and size per shard, and the source),
    plus a "benchmark" section in manifest.json: protocol, settings, official splits used, checksums. The
    archive is read `chunk_size` samples at a time and images are converted and PNG-encoded in `workers`
    threads (default: usable CPUs, at most 8): memory stays bounded, and the bytes depend on neither.
    verify_checksums=False: a digest mismatch warns once instead of refusing (recorded in the manifest).
    verify_official_counts=False: tiny or partial archives are admitted (split sizes and class counts).
    """
    spec = benchmark_spec(dataset)
    protocol = _protocol(spec)
    if samples_per_shard <= 0:
        raise ValueError(f"samples_per_shard must be > 0 (data.samples_per_shard / --samples-per-shard), "
                         f"got {samples_per_shard}")
    size, crop_side = spec.archive_settings(image_size, crop)
    out = Path(out_dir).expanduser()
    archive_path, recorded_source, checksums = resolve_archive(
        spec, source, cache_dir=cache_dir, verify_checksums=verify_checksums, progress=progress)
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
            _check_split_sizes(spec, opened)
            _check_class_names(spec, opened)
        out.mkdir(parents=True, exist_ok=True)
        # From here shards change: a manifest of earlier shards must not outlive a refusal half-way.
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        splits, entries, official_counts = _write_splits(out, spec, opened, size, crop_side, samples_per_shard,
                                                         workers, chunk_size, progress, verify_official_counts)
        image_shape = (3, size, size)
        benchmark: dict[str, Any] = {
            "protocol": spec.name,
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
        if opened.coarse_label_counts:  # CIFAR-100's 20 coarse labels, read and counted, not used
            benchmark["details"] = {**opened.details, "coarse_label_counts": {
                split: [int(c) for c in counts] for split, counts in opened.coarse_label_counts.items()}}
    note = protocol_note(spec, size, crop_side)
    atomic_write(out / PROTOCOL_NOTE_NAME, lambda stream: stream.write(note.encode()))
    classes = spec.classes_in_shards or 0
    manifest = {
        "format_version": FORMAT_VERSION,
        "dataset": spec.name,
        "source": recorded_source,
        "samples_per_shard": samples_per_shard,
        "image_shape": list(image_shape),
        "num_classes": classes,
        "class_names": list(spec.class_names or ()) if classes else [],
        "sample_format": sample_format(image_shape, classes, folder=False),
        "splits": splits,
        "shards": entries,
        "benchmark": benchmark,
    }
    return finish_shards(out, manifest)


def _write_splits(out: Path, spec: DatasetSpec, opened: OpenedArchive, size: int, crop: int | None,
                  samples_per_shard: int, workers: int, chunk_size: int, progress: bool,
                  verify_official_counts: bool) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, list[int]]]:
    """Stream every split into shards; (manifest splits, shard entries, per-class counts per official split)."""
    from tqdm import tqdm

    protocol = _protocol(spec)
    classes = spec.num_classes or 0
    splits: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    official_counts: dict[str, list[int]] = {}
    for split in SPLITS:
        sources = [opened.splits[official] for official in protocol.splits[split]]
        counts = np.zeros(max(1, classes), dtype=np.int64)
        pending: list[dict[str, Any]] = []
        num_samples = 0

        def samples(sources: list = sources) -> Iterator[tuple[np.ndarray, int, Callable]]:
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
                        _check_label_counts(spec, opened, archive_split.name, per_class)

        def encode(item: tuple[np.ndarray, int, Callable]) -> tuple[bytes, int]:
            image, label, transform = item
            return encode_png(transform(image)), label

        def flush(split: str = split, pending: list[dict[str, Any]] = pending) -> None:
            index = len([e for e in entries if e["split"] == split])
            name = shard_name(split, index, spec.name)
            entries.append(store_shard(out, split, name, tar_samples(pending), len(pending)))
            pending.clear()

        total = sum(s.num_samples for s in sources)
        with tqdm(total=total, desc=f"{spec.name} {split}", unit="img", disable=not progress,
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
        report(f"{spec.name} {split}: {num_samples} images in {splits[split]['num_shards']} shards")
    return splits, entries, official_counts
