"""A careless or hostile image folder (data.dataset=folder): pixel bombs refused on their header, memory
bounded across the conversion threads, JPEGs drafted, only PNG/JPEG/WebP decoded (by content, matching
the extension; Ghostscript never runs), and links, FIFOs and odd names listed, never crashing or hanging.

Bombs are crafted headers (a few hundred bytes); nothing here decodes more than a few megapixels."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile

from gan_dist.data import folder, shards
from gan_dist.data.folder import ImageRefused, MemoryBudget, convert_image, plan_decode, scan_folder
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


@pytest.fixture
def no_large_decodes(monkeypatch):
    """A decode of more than 4 megapixels fails (inside the conversion, so the file is listed with this
    reason) instead of allocating: a bomb that reached the decoder would take GBs in the test process."""
    load = ImageFile.ImageFile.load

    def guarded(self):
        if self.size[0] * self.size[1] > 4_000_000:
            raise MemoryError(f"test guard: a decode of {self.size[0]}x{self.size[1]} pixels was attempted")
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", guarded)


# --- item 4: pixels per image, memory across threads, JPEG draft -------------------------------------


# Peak resident memory is read from /proc/self/status VmHWM (this process's own high-water mark: getrusage's
# ru_maxrss would include the memory of pytest, which forked it).
PEAK_PROBE = """
import json, resource, sys
from gan_dist.data.folder import convert_image

def status(key):
    return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1]) * 1024

path, channels, size, cap_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if cap_mb:  # address space: a decode that tries to allocate GBs fails instead of taking the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize:") + cap_mb * 2**20, resource.RLIM_INFINITY))
before = status("VmHWM:")
try:
    convert_image(path, channels, size)
    error = None
except BaseException as caught:
    error = f"{type(caught).__name__}: {caught}"
print(json.dumps({"error": error, "peak_growth_bytes": status("VmHWM:") - before}))
"""


def conversion_peak(path: Path, channels: int = 3, image_size: int = 32, cap_mb: int = 0) -> dict:
    """convert_image in a fresh process: its error, and how far it raised the peak resident memory."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path), str(channels), str(image_size), str(cap_mb)],
                          capture_output=True, text=True, timeout=120, env=environment, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_a_16_bit_pixel_bomb_header_is_refused_without_allocating(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(13000, 13000))  # 338 MB of 16-bit pixels; the conversion used to peak at ~3 GB
    assert bomb.stat().st_size < 1000
    result = conversion_peak(bomb, cap_mb=1024)
    assert result["error"] == ("ImageRefused: 13000x13000 = 169,000,000 pixels, over data.max_image_pixels "
                               "(89,478,485); not decoded")
    assert result["peak_growth_bytes"] < 16 << 20


def test_pixel_bombs_are_listed_under_raise_and_skipped_under_warn(tmp_path, no_large_decodes, recwarn):
    root = tmp_path / "images"
    for name in ("a/1.png", "a/2.png", "b/3.png", "b/4.png"):
        save(root / name, noise(20, 20))
    (root / "a" / "bomb16.png").write_bytes(png_bomb(13000, 13000))  # under Pillow's own refusal (2 x 89.5M)
    (root / "a" / "huge.png").write_bytes(png_bomb(20000, 20000, 8, 2))  # over it: Pillow refuses it itself
    (root / "b" / "bomb.webp").write_bytes(webp_bomb(16000, 16000))  # Pillow would read it all and decode
    save(root / "b" / "wide.png", noise(8, 300))  # thin, 2,400 pixels: converted
    with pytest.raises(SourceError) as raised:
        prepare_data(tmp_path / "refused", f"folder:{root}", 5, dataset="folder", max_image_pixels=10_000_000)
    listed = refusal_lines(raised)
    assert sorted(listed) == ["a/bomb16.png", "a/huge.png", "b/bomb.webp"]
    assert listed["a/bomb16.png"] == ("ImageRefused: 13000x13000 = 169,000,000 pixels, over data.max_image_pixels "
                                      "(10,000,000); not decoded")
    assert listed["b/bomb.webp"].startswith("ImageRefused: 16000x16000 = 256,000,000 pixels")
    assert listed["a/huge.png"].startswith("ImageRefused: ") and "400000000 pixels" in listed["a/huge.png"]
    manifest = prepare_data(tmp_path / "out", f"folder:{root}", 5, dataset="folder", on_corrupt="warn",
                            max_image_pixels=10_000_000)
    assert [f["path"] for f in manifest["folder"]["skipped_files"]] == ["a/bomb16.png", "a/huge.png", "b/bomb.webp"]
    assert manifest["folder"]["max_image_pixels"] == 10_000_000
    assert len(shard_paths(tmp_path / "out")) == 5
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]  # no warning flood


@pytest.mark.parametrize("options", [{}, {"lossless": True}, {"mode": "RGBA"}, {"animated": True}])
def test_a_webp_canvas_size_is_read_from_the_header_as_pillow_reads_it(options):
    options = dict(options)
    image = Image.fromarray(noise(37, 53)).convert(options.pop("mode", "RGB"))
    if options.pop("animated", False):
        options.update(save_all=True, append_images=[image.rotate(90)], duration=50)
    data = encoded(image, "WEBP", **options)
    with Image.open(io.BytesIO(data)) as opened:
        assert folder.webp_canvas_size(data[:32]) == opened.size == (53, 37)
    assert folder.webp_canvas_size(webp_bomb(16000, 9000)) == (16000, 9000)
    assert folder.webp_canvas_size(data[:20]) is None


def test_the_memory_budget_bounds_the_sum_in_flight_and_runs_an_oversized_job_alone():
    budget = MemoryBudget(limit=1000)
    holding: list[int] = []
    seen: list[tuple[int, list[int]]] = []  # (cost, every cost held while it ran)
    lock = threading.Lock()

    def job(cost: int) -> None:
        with budget.hold(cost):
            with lock:
                holding.append(cost)
                seen.append((cost, list(holding)))
            time.sleep(0.005)
            with lock:
                holding.remove(cost)

    costs = [600, 300, 450, 700, 250, 1500, 400, 550, 100, 999] * 3
    threads = [threading.Thread(target=job, args=(cost,)) for cost in costs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads) and len(seen) == len(costs)
    assert budget.in_use == 0 and budget.peak == 1500
    for _, held in seen:
        assert sum(held) <= 1000 or held == [1500], held  # within the budget, or the oversized job alone
    assert max(len(held) for _, held in seen) > 1  # and small jobs did run concurrently


def test_the_conversion_threads_reserve_each_images_estimate_within_the_budget(tmp_path, monkeypatch):
    budgets: list[MemoryBudget] = []
    costs: list[int] = []

    class Recording(MemoryBudget):
        def __init__(self, limit: int) -> None:
            super().__init__(limit)
            budgets.append(self)

        def hold(self, cost: int):
            costs.append(cost)
            return super().hold(cost)

    root = tmp_path / "images"
    for index in range(8):  # big-but-allowed: 300x400 RGBA, 2.4 MB each by the estimate
        save(root / f"{index}.png", np.dstack([noise(300, 400), np.full((300, 400), 200, np.uint8)]))
    monkeypatch.setattr(shards, "MemoryBudget", Recording)  # what write_folder_shards builds
    convert = folder._decode_and_convert

    def slow(*args):  # every conversion takes 20 ms at least: the four threads do meet at the budget
        time.sleep(0.02)
        return convert(*args)

    monkeypatch.setattr(folder, "_decode_and_convert", slow)
    one = 300 * 400 * folder.CONVERT_BYTES_PER_PIXEL
    limited = prepare_data(tmp_path / "limited", f"folder:{root}", 3, dataset="folder", workers=4)
    assert budgets[-1].limit == folder.MEMORY_BUDGET_BYTES and budgets[-1].peak <= folder.MEMORY_BUDGET_BYTES
    costs.clear()
    tight = shards.write_folder_shards(tmp_path / "tight", shards.folder_settings(f"folder:{root}"), 3, workers=4,
                                memory_budget=2 * one + 1)
    assert costs == [one] * 8  # every image reserved its estimate
    assert budgets[-1].peak == 2 * one and budgets[-1].in_use == 0  # two at a time, never three
    assert [e["sha256"] for e in tight["shards"]] == [e["sha256"] for e in limited["shards"]]  # same bytes


PEAK_MODES = {  # name: (mode, how to save it)
    "la.png": ("LA", {}), "rgba.webp": ("RGBA", {"lossless": True, "quality": 0, "method": 0}),
    "deep.png": ("I;16", {}),
}


@pytest.mark.parametrize("name", sorted(PEAK_MODES))
def test_a_conversions_measured_peak_memory_stays_under_its_estimate(tmp_path, name):
    mode, options = PEAK_MODES[name]
    height, width = 1500, 2000  # 3 megapixels: large enough for the per-pixel cost to dominate
    y, x = np.mgrid[0:height, 0:width]
    ramp = ((x + y) % 256).astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray(((x * 31 + y) % 65536).astype(np.uint16))
    else:
        image = Image.fromarray(np.dstack([ramp, (x % 256).astype(np.uint8)] if mode == "LA" else
                                          [ramp, ramp[::-1], ramp, (x % 256).astype(np.uint8)]), mode)
    path = save(tmp_path / name, image, **({"compress_level": 1} | options) if name.endswith(".png") else options)
    with Image.open(path) as opened:
        estimate = plan_decode(opened, 1024)
    if name.endswith(".webp"):
        estimate += width * height * folder.WEBP_DECODER_BYTES_PER_PIXEL + path.stat().st_size
    result = conversion_peak(path, image_size=1024)
    assert result["error"] is None
    assert 0.4 * estimate < result["peak_growth_bytes"] <= estimate, (result, estimate)


def test_large_jpegs_are_drafted_to_twice_the_target_and_stay_close_to_the_full_decode(tmp_path):
    matplotlib = pytest.importorskip("matplotlib.cbook")
    photo = Path(matplotlib.get_sample_data("grace_hopper.jpg", asfileobj=False))  # a 512x600 photograph
    with Image.open(photo) as image:
        assert image.size == (512, 600)
        cost = plan_decode(image, 64)
        assert image.size == (128, 150)  # DCT-scaled to 1/4: 2 x 64 or more on the shorter side, not 64
        assert cost == 128 * 150 * folder.CONVERT_BYTES_PER_PIXEL
    for image_size in (32, 64, 128):
        drafted = convert_image(photo, 3, image_size).astype(int)
        with Image.open(photo) as image:  # full decode, the same conversion
            image.load()
            full = np.asarray(folder.resize_and_crop(folder.to_mode(image, 3), image_size)).astype(int)
        difference = np.abs(drafted - full)
        assert difference.mean() < 1.5 and difference.max() <= 20, (image_size, difference.mean(), difference.max())
    small = save(tmp_path / "small.jpg", noise(100, 120), quality=90)  # under 4 x 32: decoded at full size
    with Image.open(small) as image:
        plan_decode(image, 32)
        assert image.size == (120, 100)
    big = Image.fromarray(noise(480, 640))
    progressive = tmp_path / "progressive.jpg"
    progressive.write_bytes(encoded(big, "JPEG", progressive=True))
    with Image.open(progressive) as image:  # the coefficients are buffered at full size, whatever the draft
        assert plan_decode(image, 32) == 160 * 120 * folder.CONVERT_BYTES_PER_PIXEL + 640 * 480 * 2 * 3
    mpo = tmp_path / "camera.jpg"  # a multi-picture JPEG (stereo and some phone cameras): drafted too
    mpo.write_bytes(encoded(big, "MPO", save_all=True, append_images=[big]))
    with Image.open(mpo) as image:
        assert image.format == "MPO"
        plan_decode(image, 32)
        assert image.size == (160, 120)
    assert convert_image(mpo, 3, 32).shape == (32, 32, 3)


# --- item 5: only PNG, JPEG and WebP, by content, matching the extension -----------------------------


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 8 8
%%EndComments
newpath 0 0 moveto 8 8 lineto stroke
showpage
%%EOF
"""


def test_other_formats_and_mismatched_names_are_refused_by_content_and_ghostscript_never_runs(tmp_path, monkeypatch):
    bin_dir, marker = tmp_path / "bin", tmp_path / "ghostscript-ran"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # look for gs again: it finds the fake one
    small = Image.fromarray(noise(16, 16))
    root = tmp_path / "images"
    for name in ("a/ok.png", "a/ok.jpg", "b/ok.webp", "b/ok.jpeg"):
        save(root / name, small)
    files = {
        "a/eps.png": EPS, "a/gif.png": encoded(small, "GIF"), "a/tiff.png": encoded(small, "TIFF"),
        "b/bmp.png": encoded(small, "BMP"), "b/jpeg.png": encoded(small, "JPEG"), "b/png.jpg": encoded(small, "PNG"),
        "b/text.webp": b"just some text, not an image at all",
        "b/cut.jpg": encoded(Image.fromarray(noise(64, 64)), "JPEG")[:700],  # truncated
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    with pytest.raises(ImageRefused, match=r"^content is PostScript/EPS, not PNG, JPEG or WebP"):
        convert_image(root / "a" / "eps.png", 3, 16)
    with pytest.raises(SourceError) as raised:
        prepare_data(tmp_path / "refused", f"folder:{root}", 5, dataset="folder")
    reasons = {"a/eps.png": "content is PostScript/EPS, not PNG, JPEG or WebP",
               "a/gif.png": "content is GIF, not PNG", "a/tiff.png": "content is TIFF, not PNG",
               "b/bmp.png": "content is BMP, not PNG", "b/jpeg.png": "content is JPEG but the name ends in .png",
               "b/png.jpg": "content is PNG but the name ends in .jpg", "b/text.webp": "content is unknown content",
               "b/cut.jpg": "OSError: image file is truncated"}
    listed = refusal_lines(raised)
    assert sorted(listed) == sorted(reasons)
    for name, reason in reasons.items():
        assert reason in listed[name], (name, listed[name])
    manifest = prepare_data(tmp_path / "out", f"folder:{root}", 5, dataset="folder", on_corrupt="warn")
    assert sorted(f["path"] for f in manifest["folder"]["skipped_files"]) == sorted(reasons)
    assert shard_paths(tmp_path / "out") == [b"a/ok.jpg", b"a/ok.png", b"b/ok.jpeg", b"b/ok.webp"]
    assert not marker.exists(), "Ghostscript was run"
    EpsImagePlugin.has_ghostscript()  # the fake is what Pillow would have run: it leaves the marker
    assert marker.exists()


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


def test_shards_of_an_older_conversion_rule_or_pixel_limit_are_rewritten(tmp_path, capsys):
    root = tmp_path / "images"
    for index in range(4):
        save(root / "c" / f"{index}.png", noise(10, 10))
    out = tmp_path / "out"
    manifest = prepare_data(out, f"folder:{root}", 5, dataset="folder")
    assert manifest["folder"]["conversion_version"] == folder.CONVERSION_VERSION
    capsys.readouterr()
    prepare_data(out, f"folder:{root}", 5, dataset="folder")
    assert "rewriting" not in capsys.readouterr().err  # unchanged: reused
    text = json.loads((out / "manifest.json").read_text())
    del text["folder"]["conversion_version"], text["folder"]["max_image_pixels"]  # as gan_dist wrote them before
    (out / "manifest.json").write_text(json.dumps(text))
    prepare_data(out, f"folder:{root}", 5, dataset="folder")
    assert "the shards were made by conversion rule 1, this gan_dist converts by rule 2" in capsys.readouterr().err
    assert read_manifest(out)["folder"]["conversion_version"] == folder.CONVERSION_VERSION
    prepare_data(out, f"folder:{root}", 5, dataset="folder", max_image_pixels=1000)
    assert "max_image_pixels 89478485 -> 1000" in capsys.readouterr().err
    assert read_manifest(out)["folder"]["max_image_pixels"] == 1000
