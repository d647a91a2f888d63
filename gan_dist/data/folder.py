"""Your own images as a dataset (data.dataset=folder, data.source=folder:DIR): listing, split, conversion.

Layout (ImageFolder style):
  DIR/<class>/.../*.png|jpg|jpeg|webp   one subfolder per class gives labels; class index = position of the
                                        subfolder name in the sorted list (files in nested folders count for
                                        their top-level class)
  DIR/*.png|jpg|jpeg|webp               a flat folder: unlabeled (num_classes 0)
File extensions are matched case-insensitively; hidden files and folders (".name") and other files are
ignored. A folder with images both at the top level and in subfolders, an empty class subfolder, and a
folder with no image at all are refused with a message naming them.
Only regular files are read (symbolic links are followed; a link to a folder inside a class folder is not).
Bad entries are listed like unreadable files, never opened: a broken symbolic link (dangling, or a loop)
whatever its name, and an entry named like an image that is not a regular file (a FIFO, which would block
the reader forever; a socket; a device). Names need not be UTF-8: messages and manifest.json show a name
that is not printable UTF-8 as a Python literal (printable_name: 'a\\nb.png', b'caf\\xe9.png').

Conversion rule, applied once at shard time (`convert_image`), to data.channels C (1 | 3) and
data.image_size S:
  0. checks before anything is decoded (a file failing one is refused, see below): a regular file of at
     most MAX_FILE_BYTES_PER_PIXEL bytes per allowed pixel; its content (magic bytes) is PNG, JPEG or WebP
     and agrees with its extension (.png | .jpg/.jpeg | .webp): no other Pillow decoder ever sees the file
     (EPS would run Ghostscript, and TIFF, BMP, GIF ... are not what the folder source promises); its
     header's width x height is at most data.max_image_pixels;
  1. decode (the first frame of an animated file); EXIF orientation applied; a JPEG at least 4S on its
     shorter side is decoded at a reduced DCT scale (1/2, 1/4 or 1/8, never below 2S on its shorter side:
     Pillow's draft), in 1/4 .. 1/64 of the memory. libjpeg's scaled inverse DCT low-passes like a small
     box filter, so the pixels differ slightly from Lanczos on the full decode; leaving step 3 a 2x or
     larger reduction keeps them close: on a photo (matplotlib's grace_hopper.jpg, at S = 32 .. 128) the
     mean difference is 0.7 .. 1.3 gray levels, 99% within 6, the largest 14; drafting down to S itself,
     as CONVERSION_VERSION 1 did, gave means up to 3 and differences up to 47;
  2. mode: 16-bit grayscale scaled to 8 bits (v * 255 / 65535, rounded); palette images expanded; any
     transparency (alpha channel, palette or tRNS transparency) composited onto WHITE (what an image viewer
     or a web page shows, and it keeps dark line art on a transparent background visible); then to L
     (C=1, ITU-R 601-2 luma, Pillow's convert) or RGB (C=3, gray replicated);
  3. resize so that the shorter side is S with Lanczos (Pillow's resampling is antialiased when
     shrinking), then center-crop the longer side to S (the crop offset rounds down).
Unreadable files (not an image, truncated, another format, a mismatched extension, too many pixels, over
Pillow's decompression-bomb limit, ...) and bad entries are listed by name and skipped with
data.on_corrupt=warn, refused with data.on_corrupt=raise. CONVERSION_VERSION numbers this rule (recorded in
manifest.json: shards written by another rule are rewritten).

Memory: decoding is bounded per image (the pixel limit, checked on the header) and across the conversion
threads by a MemoryBudget: each conversion first reserves its estimated working memory (plan_decode:
CONVERT_BYTES_PER_PIXEL per decoded pixel, after the JPEG draft) and waits while the reservations in flight
would exceed the budget (one image larger than the budget runs alone).

Split (`split_files`): a file is in the test split when u(path) < data.test_fraction, u being the first
8 bytes of sha256(its path relative to DIR, POSIX form, UTF-8; a name that is not UTF-8: its own bytes)
read as a fraction in [0, 1). Each file's
split depends on its own path only, so adding or removing files never moves another one; per class, the
expected test share is test_fraction. One exception keeps every class of n >= 2 images in both splits: if
no file of a class falls below the threshold, its file with the smallest u goes to test, and if all do,
its file with the largest u goes to train. Within a split, files are ordered by u (classes interleaved).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gan_dist.config import DataConfig
from gan_dist.data.sources import SourceError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_FORMAT_OF_EXTENSION = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # Pillow's names
_FORMAT_TITLES = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
ALPHA_BACKGROUND = (255, 255, 255)  # transparency is composited onto white
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
MAX_WORKERS = 8  # conversion threads (Pillow releases the GIL while decoding, resizing and compressing)
# data.max_image_pixels's default (the schema's): Pillow's own warning threshold (PIL.Image.MAX_IMAGE_PIXELS,
# 1 GiB / 4 bytes / 3), which Pillow only warns about: Pillow refuses by itself only above twice this.
MAX_IMAGE_PIXELS = DataConfig.max_image_pixels
# A file larger than this many bytes per allowed pixel (16-bit RGBA, uncompressed) plus MAX_METADATA_BYTES
# is refused before it is opened (Pillow reads a whole WebP file into memory to open it).
MAX_FILE_BYTES_PER_PIXEL = 8
MAX_METADATA_BYTES = 16 << 20
# Working memory of one conversion per decoded pixel, an upper bound: four 4-byte images at once (a decoded
# LA image, its RGBA conversion, the white background and the composite: 16) and a margin for the resize;
# plus, for WebP, libwebp's canvas and Pillow's copy of the frame. Measured peaks, 2000x1500 images: LA PNG
# 16.3, RGBA PNG 12.9, 16-bit PNG 12.0, RGB PNG 8.9, RGBA WebP 21.7 bytes per pixel (test_folder_safety.py).
CONVERT_BYTES_PER_PIXEL = 20
WEBP_DECODER_BYTES_PER_PIXEL = 8
MEMORY_BUDGET_BYTES = 2 << 30  # conversions in flight (all threads) reserve at most this much, see MemoryBudget
CONVERSION_VERSION = 2  # 2: content/extension checks, pixel and file size limits, JPEG draft to >= 2S (MPO too)
_STRIP_PIXELS = 1 << 18  # 16-bit -> 8-bit conversion works in strips of about this many pixels

T = TypeVar("T")
R = TypeVar("R")


class ImageRefused(ValueError):
    """A file the folder source does not decode (see the module docstring, step 0); the message says why."""


@dataclass(frozen=True)
class FolderListing:
    """The image files of a source folder, sorted: what the shards are made from."""

    root: Path
    class_names: tuple[str, ...]  # () for a flat (unlabeled) folder; printable_name of each class folder
    files: tuple[tuple[str, int], ...]  # (path relative to root, POSIX form; class index, -1 if unlabeled)
    listing_sha256: str  # of every (path, size, mtime) and bad entry: changes when a file is added, removed...
    bad_entries: tuple[tuple[str, str], ...] = ()  # (path relative to root, why): never opened

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def name_bytes(relative: str) -> bytes:
    """A path as the file system spells it (UTF-8; a name that is not UTF-8 keeps its own bytes)."""
    return relative.encode("utf-8", "surrogateescape")


def printable_name(relative: str) -> str:
    """A path as one printable line: itself when it is printable UTF-8, else a Python literal of it
    ('a\\nb.png' for a name with a newline, b'caf\\xe9.png' for one that is not UTF-8)."""
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        return repr(name_bytes(relative))
    return relative if relative.isprintable() else repr(relative)


def one_line(text: str) -> str:
    """text with every unprintable character escaped (\\n, \\udcff ...): safe in a one-line-per-file listing."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _bad_entry(path: Path) -> tuple[os.stat_result | None, str | None]:
    """(its stat, None) for a regular file or a folder (links followed), else (stat or None, why not)."""
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return None, "symbolic link loop"
        if error.errno == errno.ENOENT and os.path.islink(path):
            return None, "dangling symbolic link (its target does not exist)"
        return None, f"cannot be read: {error.strerror}"
    if stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode):
        return status, None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(status.st_mode) else "a socket" if stat.S_ISSOCK(status.st_mode)
            else "a device" if stat.S_ISCHR(status.st_mode) or stat.S_ISBLK(status.st_mode) else "special")
    return status, f"not a regular file: {kind}"


def _classify(path: Path, root: Path, bad: list[tuple[str, str]]) -> os.stat_result | None:
    """The stat of path if it is a regular image file; a bad entry is appended to `bad` (see the module
    docstring); None for anything else (a folder, another file)."""
    if path.name.startswith("."):
        return None
    image = _is_image(path)
    if not image and not os.path.islink(path):
        return None  # another file: not even stat'ed
    status, why = _bad_entry(path)
    if why is not None and (image or status is None):  # an image-named special file, or a broken link
        bad.append((path.relative_to(root).as_posix(), why))
        return None
    return status if image and status is not None and stat.S_ISREG(status.st_mode) else None


def _images_under(directory: Path, root: Path, bad: list[tuple[str, str]]) -> list[tuple[Path, os.stat_result]]:
    """Regular image files below directory, recursively, skipping hidden files and folders; sorted.
    Bad entries and folders that cannot be listed are appended to `bad`."""
    found = []

    def unlistable(error: OSError) -> None:
        where = Path(error.filename) if error.filename else directory
        bad.append((where.relative_to(root).as_posix(), f"folder cannot be listed: {error.strerror}"))

    # A symlinked class folder is read (it is `directory` itself); links to folders inside it are not
    # followed, so a link cycle cannot make the walk endless.
    for parent, folders, names in os.walk(directory, onerror=unlistable):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in names:
            path = Path(parent) / name
            status = _classify(path, root, bad)
            if status is not None:
                found.append((path, status))
    return sorted(found)


def _listing_message(bad: list[tuple[str, str]]) -> str:
    return "".join(f"\n  {printable_name(name)}: {why}" for name, why in sorted(bad))


def scan_folder(directory: str | os.PathLike) -> FolderListing:
    """List the images of an ImageFolder-style tree (see the module docstring); SourceError if unusable.

    Bad entries (broken links, FIFOs, ...) do not make the folder unusable: they are listed in
    `bad_entries`, and write_folder_shards treats them like unreadable files (data.on_corrupt)."""
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise SourceError(f"folder:{directory}: not a folder (data.source=folder:DIR names a folder of images)")
    bad: list[tuple[str, str]] = []
    top: list[tuple[Path, os.stat_result]] = []
    class_dirs = []
    for path in sorted(root.iterdir()):
        status = _classify(path, root, bad)
        if status is not None:
            top.append((path, status))
        elif not path.name.startswith(".") and path.is_dir():
            class_dirs.append(path)
    files: list[tuple[str, int]] = []
    sized: list[tuple[Path, os.stat_result]] = []
    if top and any(_images_under(d, root, []) for d in class_dirs):
        raise SourceError(f"folder:{root}: has images both at the top level (e.g. {printable_name(top[0][0].name)}) "
                          "and in subfolders; put every image in a class subfolder (labeled) or all at the top "
                          "level (unlabeled)")
    if top:
        class_names: tuple[str, ...] = ()
        files = [(p.relative_to(root).as_posix(), -1) for p, _ in top]
        sized = top
    else:
        class_names = tuple(printable_name(d.name) for d in class_dirs)
        empty = []
        for index, class_dir in enumerate(class_dirs):
            images = _images_under(class_dir, root, bad)
            if not images:
                empty.append(printable_name(class_dir.name))
            files += [(p.relative_to(root).as_posix(), index) for p, _ in images]
            sized += images
        if files and empty:
            raise SourceError(f"folder:{root}: class subfolder(s) {', '.join(empty)} hold no "
                              f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} image; remove them or add images"
                              + _listing_message(bad))
    if not files:
        raise SourceError(f"folder:{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found; expected "
                          "DIR/<class>/*.png ... (labeled) or DIR/*.png ... (unlabeled)" + _listing_message(bad))
    digest = hashlib.sha256()
    for (relative, label), (_, status) in zip(files, sized, strict=True):
        digest.update(name_bytes(relative) + f"\0{label}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    for name, why in sorted(bad):
        digest.update(b"bad\0" + name_bytes(name) + f"\0{why}\n".encode())
    return FolderListing(root=root, class_names=class_names, files=tuple(files), listing_sha256=digest.hexdigest(),
                         bad_entries=tuple(sorted(bad)))


# --- split -------------------------------------------------------------------------------------------


def split_value(relative_path: str) -> float:
    """u in [0, 1): the first 8 bytes of sha256(path relative to the source folder) as a fraction."""
    return int.from_bytes(hashlib.sha256(name_bytes(relative_path)).digest()[:8], "big") / 2.0**64


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
    """16-bit (and 32-bit integer) grayscale -> L by v * 255 / 65535, rounded; float -> L, clipped.
    Converted in strips of rows, so the int64 arithmetic never holds more than _STRIP_PIXELS values."""
    if image.mode in _SIXTEEN_BIT_MODES:
        width, height = image.size
        out = np.empty((height, width), dtype=np.uint8)
        rows = max(1, _STRIP_PIXELS // max(1, width))
        for top in range(0, height, rows):
            strip = image.crop((0, top, width, min(height, top + rows)))
            values = np.clip(np.asarray(strip, dtype=np.int64), 0, 65535)
            out[top:top + rows] = (values * 255 + 32767) // 65535
        return Image.fromarray(out)  # mode L
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8))  # mode L
    return image


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any Pillow mode -> L (channels 1) or RGB (channels 3), transparency composited onto white."""
    image = _eight_bit(image)
    if image.mode in _TRANSPARENT_MODES or image.mode == "P" or "transparency" in image.info:
        if image.mode != "RGBA":  # (Image.alpha_composite leaves its inputs alone: no copy needed)
            image = image.convert("RGBA")  # expands palettes; tRNS / palette transparency become alpha
        background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, image)
        del background
    target = "L" if channels == 1 else "RGB"
    return image if image.mode == target else image.convert(target)


def resize_and_crop(image: Image.Image, image_size: int) -> Image.Image:
    """Shorter side to image_size (Lanczos), then the central image_size x image_size square."""
    width, height = image.size
    scale = image_size / min(width, height)
    size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


# --- opening a file safely ---------------------------------------------------------------------------

_OTHER_FORMATS = ((b"GIF8", "GIF"), (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"%!PS", "PostScript/EPS"),
                  (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"), (b"BM", "BMP"), (b"8BPS", "PSD"))


def content_format(prefix: bytes) -> str:
    """What the first bytes of a file say it is: "PNG" | "JPEG" | "WEBP" (Pillow's names), else a
    description for a message ("TIFF", "PostScript/EPS", ..., "unknown content")."""
    if prefix.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if prefix.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return "WEBP"
    if prefix[4:8] == b"ftyp":
        return "HEIF/AVIF"
    return next((name for magic, name in _OTHER_FORMATS if prefix.startswith(magic)), "unknown content")


def webp_canvas_size(prefix: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP file's first 30 bytes (VP8, VP8L or VP8X chunk), None if not there.
    Read by hand because Pillow decodes (and allocates the canvas) as it opens a WebP file."""
    if len(prefix) < 30:
        return None
    chunk = prefix[12:16]
    if chunk == b"VP8 " and prefix[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the start code
        return (int.from_bytes(prefix[26:28], "little") & 0x3FFF, int.from_bytes(prefix[28:30], "little") & 0x3FFF)
    if chunk == b"VP8L" and prefix[20] == 0x2F:  # lossless: two 14-bit (size - 1) fields
        bits = int.from_bytes(prefix[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit (canvas size - 1) fields
        return int.from_bytes(prefix[24:27], "little") + 1, int.from_bytes(prefix[27:30], "little") + 1
    return None


def _open_regular(path: str | os.PathLike) -> BinaryIO:
    """path opened for reading if it is a regular file (links followed); ImageRefused otherwise. Opened
    non-blocking first, so a FIFO put there after the folder was listed cannot block the reader."""
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # (POSIX; Windows has no FIFOs to fear)
    fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageRefused(_bad_entry(Path(os.fsdecode(path)))[1] or "not a regular file")
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_pixels(size: tuple[int, int], max_image_pixels: int) -> None:
    width, height = size
    if width * height > max_image_pixels:
        raise ImageRefused(f"{width}x{height} = {width * height:,} pixels, over data.max_image_pixels "
                           f"({max_image_pixels:,}); not decoded")


def plan_decode(image: Image.Image, image_size: int) -> int:
    """Set up the reduced-size decoding the format has (JPEG: a DCT-scaled draft, never below 2 * image_size
    on the shorter side) of an opened, not yet decoded image; return the bytes its conversion may need:
    CONVERT_BYTES_PER_PIXEL per pixel it decodes to, plus, for a progressive JPEG, its coefficients
    (libjpeg buffers them at full size, 2 bytes per sample, whatever the draft)."""
    coefficients = 0
    if image.format in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG (its first picture is used)
        if image.info.get("progressive"):
            coefficients = image.size[0] * image.size[1] * 2 * len(image.getbands())
        image.draft(image.mode, (2 * image_size, 2 * image_size))
    return image.size[0] * image.size[1] * CONVERT_BYTES_PER_PIXEL + coefficients


class MemoryBudget:
    """Admits concurrent work while the sum of its byte estimates stays within `limit`; a piece larger than
    the limit waits until nothing else holds the budget, then runs alone (so every image converts).

    Waiting threads hold nothing, and holders only compute, so it cannot deadlock; ordered_map keeps at
    most 4 * workers items in flight, so a large image waits for a bounded number of small ones."""

    def __init__(self, limit: int = MEMORY_BUDGET_BYTES) -> None:
        self.limit = limit
        self.in_use = 0
        self.peak = 0  # the largest total held at once
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.in_use == 0 or self.in_use + cost <= self.limit)
            self.in_use += cost
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= cost
                self._changed.notify_all()


def _decode_and_convert(image: Image.Image, channels: int, image_size: int) -> np.ndarray:
    image.load()
    ImageOps.exif_transpose(image, in_place=True)  # no copy unless it must turn the image
    array = np.asarray(resize_and_crop(to_mode(image, channels), image_size), dtype=np.uint8)
    expected = (image_size, image_size) if channels == 1 else (image_size, image_size, 3)
    assert array.shape == expected, (array.shape, expected)
    return array


def convert_image(path: str | os.PathLike, channels: int, image_size: int, *,
                  max_image_pixels: int = MAX_IMAGE_PIXELS, budget: MemoryBudget | None = None) -> np.ndarray:
    """One image file -> uint8 (S, S) (channels 1) or (S, S, 3) (channels 3), by the module's rule.

    Refuses (ImageRefused, before decoding) what step 0 refuses; decodes under `budget` (its
    plan_decode estimate reserved while it runs). Raises whatever Pillow raises for an unreadable file
    (OSError for a truncated one, UnidentifiedImageError, ...).
    """
    expected = _FORMAT_OF_EXTENSION.get(Path(os.fsdecode(path)).suffix.lower())
    with _open_regular(path) as file:
        file_bytes = os.fstat(file.fileno()).st_size
        max_bytes = MAX_FILE_BYTES_PER_PIXEL * max_image_pixels + MAX_METADATA_BYTES
        if file_bytes > max_bytes:
            raise ImageRefused(f"{file_bytes:,} bytes, more than any image of at most data.max_image_pixels "
                               f"({max_image_pixels:,}) needs ({max_bytes:,}); not opened")
        prefix = file.read(32)
        found = content_format(prefix)
        if found not in _FORMAT_TITLES:
            raise ImageRefused(f"content is {found}, not PNG, JPEG or WebP (the formats data.dataset=folder "
                               "reads); not decoded")
        if found != expected:
            raise ImageRefused(f"content is {_FORMAT_TITLES[found]} but the name ends in "
                               f"{Path(os.fsdecode(path)).suffix}; rename it (a file must be what its name says)")
        file.seek(0)
        hold = budget.hold if budget is not None else lambda cost: nullcontext()
        if found == "WEBP":  # Pillow decodes as it opens: check and reserve before
            size = webp_canvas_size(prefix)
            if size is None:
                raise UnidentifiedImageError("cannot identify image file: a WebP file without a VP8/VP8L/VP8X header")
            _check_pixels(size, max_image_pixels)
            with hold(size[0] * size[1] * (CONVERT_BYTES_PER_PIXEL + WEBP_DECODER_BYTES_PER_PIXEL) + file_bytes):
                with _open_as(file, found) as image:
                    _check_pixels(image.size, max_image_pixels)
                    return _decode_and_convert(image, channels, image_size)
        with _open_as(file, found) as image:  # reads the header only
            _check_pixels(image.size, max_image_pixels)
            with hold(plan_decode(image, image_size)):
                return _decode_and_convert(image, channels, image_size)


def _open_as(file: BinaryIO, image_format: str) -> Image.Image:
    """Image.open restricted to the one decoder the content and the name agree on."""
    try:
        return Image.open(file, formats=[image_format])
    except Image.DecompressionBombError as error:
        raise ImageRefused(f"{error} (Pillow's limit); not decoded") from None
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"cannot identify image file: starts like {_FORMAT_TITLES[image_format]}, "
                                     "but Pillow cannot read it") from None


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
