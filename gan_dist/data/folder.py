"""Your own images as a dataset (data.dataset=folder, data.source=folder:DIR): listing, split, conversion.

Layout (ImageFolder style):
  DIR/<class>/.../*.png|jpg|jpeg|webp   one subfolder per class gives labels; class index = position of the
                                        subfolder name in the sorted list (files in nested folders count for
                                        their top-level class)
  DIR/*.png|jpg|jpeg|webp               a flat folder: unlabeled (num_classes 0)
File extensions are matched case-insensitively; hidden files and folders (".name") and other files are
ignored. A folder with images both at the top level and in subfolders, an empty class subfolder, and a
folder with no image at all are refused with a message naming them.

Conversion rule, applied once at shard time (`convert_image`), to data.channels C (1 | 3) and
data.image_size S:
  1. decode (the first frame of an animated file); JPEG EXIF orientation applied; a JPEG much larger than
     needed is decoded at a reduced DCT scale (1/2, 1/4 or 1/8, never below S on its shorter side);
  2. mode: 16-bit grayscale scaled to 8 bits (v * 255 / 65535, rounded); palette images expanded; any
     transparency (alpha channel, palette or tRNS transparency) composited onto WHITE (what an image viewer
     or a web page shows, and it keeps dark line art on a transparent background visible); then to L
     (C=1, ITU-R 601-2 luma, Pillow's convert) or RGB (C=3, gray replicated);
  3. resize so that the shorter side is S with Lanczos (Pillow's resampling is antialiased when
     shrinking), then center-crop the longer side to S (the crop offset rounds down).
Unreadable files (not an image, truncated, over Pillow's decompression-bomb limit, ...) are listed by name
and skipped with data.on_corrupt=warn, refused with data.on_corrupt=raise.

Split (`split_files`): a file is in the test split when u(path) < data.test_fraction, u being the first
8 bytes of sha256(its path relative to DIR, POSIX form, UTF-8) read as a fraction in [0, 1). Each file's
split depends on its own path only, so adding or removing files never moves another one; per class, the
expected test share is test_fraction. One exception keeps every class of n >= 2 images in both splits: if
no file of a class falls below the threshold, its file with the smallest u goes to test, and if all do,
its file with the largest u goes to train. Within a split, files are ordered by u (classes interleaved).
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps

from gan_dist.data.sources import SourceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
ALPHA_BACKGROUND = (255, 255, 255)  # transparency is composited onto white
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
MAX_WORKERS = 8  # conversion threads (Pillow releases the GIL while decoding, resizing and compressing)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class FolderListing:
    """The image files of a source folder, sorted: what the shards are made from."""

    root: Path
    class_names: tuple[str, ...]  # () for a flat (unlabeled) folder
    files: tuple[tuple[str, int], ...]  # (path relative to root, POSIX form; class index, -1 if unlabeled)
    listing_sha256: str  # of every (path, size, mtime): changes when a file is added, removed or modified

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(directory: Path) -> list[Path]:
    """Image files below directory, recursively, skipping hidden files and folders; sorted."""
    found = []
    # A symlinked class folder is read (it is `directory` itself); links to folders inside it are not
    # followed, so a link cycle cannot make the walk endless.
    for parent, folders, names in os.walk(directory):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        found += [Path(parent) / name for name in names if _is_image(Path(name))]
    return sorted(found)


def scan_folder(directory: str | os.PathLike) -> FolderListing:
    """List the images of an ImageFolder-style tree (see the module docstring); SourceError if unusable."""
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise SourceError(f"folder:{directory}: not a folder (data.source=folder:DIR names a folder of images)")
    top_files = sorted(p for p in root.iterdir() if p.is_file() and _is_image(p))
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[str, int]] = []
    if top_files and any(_images_under(d) for d in class_dirs):
        raise SourceError(f"folder:{root}: has images both at the top level (e.g. {top_files[0].name}) and in "
                          "subfolders; put every image in a class subfolder (labeled) or all at the top level "
                          "(unlabeled)")
    if top_files:
        class_names: tuple[str, ...] = ()
        files = [(p.relative_to(root).as_posix(), -1) for p in top_files]
        sized = top_files
    else:
        class_names = tuple(d.name for d in class_dirs)
        sized = []
        empty = []
        for index, class_dir in enumerate(class_dirs):
            images = _images_under(class_dir)
            if not images:
                empty.append(class_dir.name)
            files += [(p.relative_to(root).as_posix(), index) for p in images]
            sized += images
        if files and empty:
            raise SourceError(f"folder:{root}: class subfolder(s) {', '.join(empty)} hold no "
                              f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} image; remove them or add images")
    if not files:
        raise SourceError(f"folder:{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found; expected "
                          "DIR/<class>/*.png ... (labeled) or DIR/*.png ... (unlabeled)")
    digest = hashlib.sha256()
    for (relative, label), path in zip(files, sized, strict=True):
        stat = path.stat()
        digest.update(f"{relative}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return FolderListing(root=root, class_names=class_names, files=tuple(files), listing_sha256=digest.hexdigest())


# --- split -------------------------------------------------------------------------------------------


def split_value(relative_path: str) -> float:
    """u in [0, 1): the first 8 bytes of sha256(path relative to the source folder) as a fraction."""
    return int.from_bytes(hashlib.sha256(relative_path.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_files(files: Iterable[tuple[str, int]], test_fraction: float) -> dict[str, list[tuple[str, int]]]:
    """{"train": [...], "test": [...]} of (path, label), each ordered by u (see the module docstring)."""
    by_class: dict[int, list[tuple[float, str, int]]] = {}
    for relative, label in files:
        by_class.setdefault(label, []).append((split_value(relative), relative, label))
    splits: dict[str, list[tuple[float, str, int]]] = {"train": [], "test": []}
    for members in by_class.values():
        members.sort()
        test = [m for m in members if m[0] < test_fraction]
        train = [m for m in members if m[0] >= test_fraction]
        if len(members) >= 2 and not test:
            test, train = [train[0]], train[1:]
        elif len(members) >= 2 and not train:
            test, train = test[:-1], [test[-1]]
        splits["train"] += train
        splits["test"] += test
    return {split: [(relative, label) for _, relative, label in sorted(members)]
            for split, members in splits.items()}


# --- conversion --------------------------------------------------------------------------------------


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit (and 32-bit integer) grayscale -> L by v * 255 / 65535, rounded; float -> L, clipped."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))  # mode L
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8))  # mode L
    return image


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> L (channels 1) or RGB (channels 3), transparency composited onto white."""
    image = _eight_bit(image)
    if image.mode in _TRANSPARENT_MODES or image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")  # expands palettes; tRNS / palette transparency become alpha
        background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("L" if channels == 1 else "RGB")


def resize_and_crop(image: Image.Image, image_size: int) -> Image.Image:
    """Shorter side to image_size (Lanczos), then the central image_size x image_size square."""
    width, height = image.size
    scale = image_size / min(width, height)
    size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def convert_image(path: str | os.PathLike, channels: int, image_size: int) -> np.ndarray:
    """One image file -> uint8 (S, S) (channels 1) or (S, S, 3) (channels 3), by the module's rule.

    Raises whatever Pillow raises for an unreadable file (OSError, UnidentifiedImageError, ...).
    """
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft(image.mode, (image_size, image_size))  # DCT scaling, never below the requested size
        image.load()
        image = ImageOps.exif_transpose(image)
        image = resize_and_crop(to_mode(image, channels), image_size)
        array = np.asarray(image, dtype=np.uint8)
    expected = (image_size, image_size) if channels == 1 else (image_size, image_size, 3)
    assert array.shape == expected, (array.shape, expected)
    return array


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """function over items in `workers` threads, results in input order, at most 4 * workers in flight."""
    if workers <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gan_dist-convert") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_workers() -> int:
    """Conversion threads: the CPUs this process may use, at most MAX_WORKERS."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cpus))
