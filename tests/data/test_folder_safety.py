"""A careless or hostile image folder (data.dataset=folder): links, FIFOs and odd names listed, never
crashing or hanging."""

from __future__ import annotations

import io
import os
import signal
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.data import folder
from gan_dist.data.folder import scan_folder
from gan_dist.data.shards import manifest_report, prepare_data, read_manifest
from gan_dist.data.sources import SourceError

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(5)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, bit_depth: int = 16, color_type: int = 0) -> bytes:
    """A PNG header claiming width x height (16-bit gray by default) and one row of data: ~100 bytes."""
    row = b"\0" * (1 + width * bit_depth // 8 * {0: 1, 2: 3, 6: 4}[color_type])
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(row))


def webp_bomb(width: int, height: int) -> bytes:
    """A WebP (VP8X) header claiming a width x height canvas, and nothing else."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + (width - 1).to_bytes(3, "little") + \
        (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def save(path: Path, image: Image.Image | np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path, **options)
    return path


def encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, channels), dtype=np.uint8)


def shard_paths(out: Path) -> list[bytes]:
    """The `.path` member of every sample of a folder shard set (the source names, as bytes)."""
    paths = []
    for entry in read_manifest(out)["shards"]:
        with tarfile.open(out / entry["name"]) as archive:
            paths += [archive.extractfile(m).read() for m in archive.getmembers() if m.name.endswith(".path")]
    return sorted(paths)


def refusal_lines(error: pytest.ExceptionInfo) -> dict[str, str]:
    """{listed name: reason} of a SourceError listing files one per line (after its first line)."""
    lines = str(error.value).splitlines()[1:]
    return dict(line.strip().split(": ", 1) for line in lines)


# --- item 7: links, FIFOs, odd names -----------------------------------------------------------------


@pytest.fixture
def fail_after_20_s():
    """A scan that blocks (opening a FIFO waits for a writer) fails the test instead of hanging it."""
    def timeout(signum, frame):
        raise TimeoutError("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_links_fifos_and_odd_names_are_listed_never_opened_and_skipped_under_warn(tmp_path, fail_after_20_s):
    root = tmp_path / "images"
    root_bytes = os.fsencode(root)
    save(root / "c" / "ok.png", noise(12, 12))
    save(root / "c" / "a\nb.png", noise(12, 12))  # a newline in a good file's name
    Image.fromarray(noise(12, 12)).save(root_bytes + b"/c/caf\xe9.png", format="PNG")  # Latin-1, not UTF-8
    os.mkdir(root_bytes + b"/\xfe")  # a class folder whose name is not UTF-8
    Image.fromarray(noise(12, 12)).save(root_bytes + b"/\xfe/x.png", format="PNG")
    save(root / "d" / "y.png", noise(12, 12))
    os.symlink("loop.png", root / "c" / "loop.png")
    os.symlink("nowhere.png", root / "c" / "dangling.png")
    os.symlink("gone", root / "d" / "dangling link\nwith a newline.jpg")
    os.symlink("gone", root / "d" / "notes")  # a broken link whatever its name
    os.symlink("ok.png", root / "c" / "link.png")  # a link to a regular file: read
    fifo = root / "d" / "pipe.png"
    os.mkfifo(fifo)
    os.mkfifo(root / "d" / "pipe-not-an-image")  # not named like an image: ignored
    try:
        listing = scan_folder(root)
        assert listing.class_names == ("c", "d", "b'\\xfe'")  # sorted by the names themselves
        assert sorted(relative for relative, _ in listing.files) == sorted(
            ["\udcfe/x.png", "c/a\nb.png", "c/caf\udce9.png", "c/link.png", "c/ok.png", "d/y.png"])
        bad = {
            "c/dangling.png": "dangling symbolic link (its target does not exist)",
            "c/loop.png": "symbolic link loop",
            "'d/dangling link\\nwith a newline.jpg'": "dangling symbolic link (its target does not exist)",
            "d/notes": "dangling symbolic link (its target does not exist)",
            "d/pipe.png": "not a regular file: a FIFO (named pipe)",
        }
        assert {folder.printable_name(name): why for name, why in listing.bad_entries} == bad
        with pytest.raises(SourceError) as raised:
            prepare_data(tmp_path / "refused", f"folder:{root}", 5, dataset="folder", workers=2)
        lines = str(raised.value).splitlines()
        assert lines[0].endswith(": 5 unreadable image file(s); data.on_corrupt=warn (--on-corrupt warn) skips "
                                 "them, or remove them:")
        assert refusal_lines(raised) == bad and len(lines) == 1 + len(bad)  # one line each
        manifest = prepare_data(tmp_path / "out", f"folder:{root}", 5, dataset="folder", on_corrupt="warn",
                                workers=2)
        assert {f["path"]: f["error"] for f in manifest["folder"]["skipped_files"]} == bad
        assert manifest["class_names"] == ["c", "d", "b'\\xfe'"]
        assert shard_paths(tmp_path / "out") == sorted(
            [b"\xfe/x.png", b"c/a\nb.png", b"c/caf\xe9.png", b"c/link.png", b"c/ok.png", b"d/y.png"])
        report = manifest_report(manifest, "image folder", tmp_path / "out")
        assert report.isprintable() or all(line.isprintable() for line in report.splitlines())
        report.encode("utf-8")  # printable on a UTF-8 terminal (no lone surrogate)
        assert "'d/dangling link\\nwith a newline.jpg'" in report
    finally:  # if the FIFO was opened for reading, give the blocked reader its end of file
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # no reader waiting: nothing was blocked


def test_a_folder_listing_only_bad_entries_is_refused_naming_them(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    os.symlink("gone.png", root / "a.png")
    with pytest.raises(SourceError, match=r"no images .* found.*\n  a\.png: dangling symbolic link"):
        scan_folder(root)
