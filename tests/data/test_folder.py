"""Your own images (data.dataset=folder): the conversion rule, shards of a tree with two classes, odd sizes
and modes and a corrupt file, unlabeled and empty folders, the deterministic split, per-folder caches,
and the loader at 32x32x3."""

from __future__ import annotations

import dataclasses
import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist.cli import main as cli_main
from gan_dist.config import DataConfig
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.folder import convert_image, scan_folder, split_files, split_value
from gan_dist.data.loader import ShardError, eval_batches, split_batches, train_batches
from gan_dist.data.shards import dataset_dir, prepare_data, read_manifest, verify_shards
from gan_dist.data.sources import DataError, SourceError

RNG = np.random.default_rng(3)
RED, WHITE = (255, 0, 0), (255, 255, 255)


def noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, image: Image.Image | np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path, **options)
    return path


def rgba_half_transparent(size: int = 30) -> Image.Image:
    """Left half opaque red, right half fully transparent green (its color must not show)."""
    pixels = np.zeros((size, size, 4), dtype=np.uint8)
    pixels[:, : size // 2] = (*RED, 255)
    pixels[:, size // 2:] = (0, 255, 0, 0)
    return Image.fromarray(pixels)  # mode RGBA


def palette_with_transparency() -> Image.Image:
    """A palette image: index 0 (black) transparent on the left, index 1 (blue) opaque on the right."""
    image = Image.new("P", (24, 24), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.paste(1, (12, 0, 24, 24))
    image.info["transparency"] = 0
    return image


def sixteen_bit(values: list[int]) -> Image.Image:
    array = np.array([values] * 8, dtype=np.uint16)  # (8, len(values))
    return Image.fromarray(array)  # mode I;16


def make_tree(root: Path) -> dict[str, int]:
    """Two classes of mixed files; returns {readable image path: class index} (broken.png is not one)."""
    expected = {}
    for relative, image, options in [
        ("cats/a.png", noise(23, 37), {}),                      # odd size, wider than tall
        ("cats/b.jpg", noise(80, 50), {"quality": 90}),         # taller than wide
        ("cats/c.webp", noise(33, 33), {"lossless": True}),
        ("cats/gray.png", noise(30, 40, channels=1), {}),        # grayscale
        ("cats/rgba.png", rgba_half_transparent(), {}),
        ("cats/pal.png", palette_with_transparency(), {"transparency": 0}),
        ("cats/deep16.png", sixteen_bit([0, 25700, 65535] * 4), {}),
        ("cats/nested/d.png", noise(64, 20), {}),                # nested folders count for their class
        ("dogs/e.png", noise(64, 64), {}),
        ("dogs/f.png", noise(31, 17), {}),
        ("dogs/g.jpeg", noise(40, 41), {}),
        ("dogs/H.PNG", noise(32, 32), {}),                       # extensions are case-insensitive
    ]:
        save(root / relative, image, **options)
        expected[relative] = 0 if relative.startswith("cats/") else 1
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "dogs" / "notes.txt").write_text("ignored")
    save(root / "dogs" / ".hidden.png", noise(8, 8))  # hidden: ignored
    save(root / ".thumbnails" / "x.png", noise(8, 8))  # hidden folder: not a class
    return expected


def tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of one shard, read with tarfile only."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = archive.extractfile(member).read()
    return samples


def samples_by_split(out: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    """{split: {source path: sample members}} of a folder shard set."""
    result: dict[str, dict[str, dict[str, bytes]]] = {"train": {}, "test": {}}
    for entry in read_manifest(out)["shards"]:
        for sample in tar_samples(out / entry["name"]).values():
            result[entry["split"]][sample["path"].decode()] = sample
    return result


@pytest.fixture
def tree(tmp_path) -> tuple[Path, dict[str, int]]:
    return tmp_path / "images", make_tree(tmp_path / "images")


# --- the conversion rule -----------------------------------------------------------------------------


def test_transparency_is_composited_onto_white_and_modes_are_converted(tmp_path):
    rgba = convert_image(save(tmp_path / "rgba.png", rgba_half_transparent()), channels=3, image_size=30)
    assert rgba.shape == (30, 30, 3) and rgba.dtype == np.uint8
    assert (rgba[:, :15] == RED).all() and (rgba[:, 15:] == WHITE).all()
    gray = convert_image(tmp_path / "rgba.png", channels=1, image_size=30)
    assert gray.shape == (30, 30) and (gray[:, :15] == 76).all() and (gray[:, 15:] == 255).all()  # 601-2 luma of red
    palette = convert_image(save(tmp_path / "p.png", palette_with_transparency(), transparency=0), 3, 24)
    assert (palette[:, :12] == WHITE).all() and (palette[:, 12:] == (0, 0, 255)).all()
    deep = convert_image(save(tmp_path / "deep.png", sixteen_bit([0, 25700, 65535, 257] * 2)), 1, 8)
    assert deep[0].tolist() == [0, 100, 255, 1] * 2  # v * 255 / 65535
    luminance = noise(16, 16, channels=1)
    replicated = convert_image(save(tmp_path / "l.png", luminance), 3, 16)
    assert all((replicated[..., c] == luminance).all() for c in range(3))


def test_shorter_side_is_resized_then_center_cropped(tmp_path):
    wide = np.zeros((32, 96, 3), dtype=np.uint8)
    wide[:, :32], wide[:, 32:64], wide[:, 64:] = (0, 0, 255), RED, (0, 0, 255)
    assert (convert_image(save(tmp_path / "wide.png", wide), 3, 32) == RED).all()  # no resize, the center only
    rows = np.repeat((np.arange(128) * 2).astype(np.uint8)[:, None], 64, axis=1)  # (128, 64): value 2 * row
    tall = convert_image(save(tmp_path / "tall.png", rows), 1, 32)  # -> 32 x 64, rows 16..47 kept
    assert tall.shape == (32, 32) and (np.diff(tall[:, 16].astype(int)) > 0).all()
    assert 60 <= tall[0, 16] <= 72 and 184 <= tall[-1, 16] <= 196  # rows ~32..95 of the original, not 0..127
    small = convert_image(save(tmp_path / "small.png", noise(5, 9)), 3, 32)  # upscaled to 32 x 58, cropped
    assert small.shape == (32, 32, 3)


def test_jpeg_orientation_and_reduced_decoding(tmp_path):
    portrait = np.zeros((40, 20), dtype=np.uint8)
    portrait[:20] = 255  # top half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = convert_image(save(tmp_path / "o.jpg", portrait, exif=exif, quality=95), 1, 20)
    assert rotated[:, :8].mean() < 40 and rotated[:, 12:].mean() > 215  # top went right
    photo = np.clip(np.add.outer(np.arange(600), np.arange(800)) / 5.5, 0, 255).astype(np.uint8)
    save(tmp_path / "big.jpg", np.stack([photo] * 3, axis=-1), quality=95)
    reduced = convert_image(tmp_path / "big.jpg", 3, 32).astype(int)
    with Image.open(tmp_path / "big.jpg") as image:  # full decode, same resize and crop
        full = np.asarray(image.convert("RGB").resize((43, 32), Image.Resampling.LANCZOS).crop((5, 0, 37, 32)))
    assert np.abs(reduced - full.astype(int)).mean() < 2.0


# --- shards of a folder ------------------------------------------------------------------------------


def test_folder_shards_hold_every_readable_image_converted_and_skip_the_corrupt_one(tree, tmp_path, capsys):
    root, expected = tree
    out = tmp_path / "shards"
    manifest = prepare_data(out, f"folder:{root}", 5, dataset="folder", on_corrupt="warn")
    assert f"skipping unreadable image {root / 'dogs' / 'broken.png'} (data.on_corrupt=warn)" in capsys.readouterr().err
    assert manifest["dataset"] == "folder" and manifest["source"] == f"folder:{root}"
    assert manifest["image_shape"] == [3, 32, 32] and manifest["class_names"] == ["cats", "dogs"]
    assert manifest["num_classes"] == 2 and manifest["folder"]["num_files"] == len(expected) + 1
    assert [f["path"] for f in manifest["folder"]["skipped_files"]] == ["dogs/broken.png"]
    assert manifest["sample_format"] == {"png": "32x32 RGB (mode RGB) PNG, uint8 pixels", "cls": "label 0-1 as ASCII",
                                         "path": "the source image's path relative to the folder, UTF-8 (else the name's bytes)"}
    assert verify_shards(out) == []
    by_split = samples_by_split(out)
    assert by_split["train"] and by_split["test"] and not set(by_split["train"]) & set(by_split["test"])
    assert sorted([*by_split["train"], *by_split["test"]]) == sorted(expected)  # each readable file exactly once
    for split, samples in by_split.items():
        counts = [0, 0]
        for relative, sample in samples.items():
            with Image.open(io.BytesIO(sample["png"])) as image:
                assert (image.mode, image.size) == ("RGB", (32, 32))
                np.testing.assert_array_equal(np.asarray(image), convert_image(root / relative, 3, 32))
            assert int(sample["cls"]) == expected[relative]
            counts[expected[relative]] += 1
        assert manifest["splits"][split]["label_counts"] == counts
        assert all(counts), f"every class of 2+ images has some in {split}"


def test_unreadable_files_are_refused_by_name_with_on_corrupt_raise(tree, tmp_path):
    root, _ = tree
    truncated = (root / "cats" / "a.png").read_bytes()
    (root / "cats" / "cut.png").write_bytes(truncated[: len(truncated) // 2])
    out = tmp_path / "shards"
    with pytest.raises(SourceError) as raised:
        prepare_data(out, f"folder:{root}", 5, dataset="folder")
    lines = str(raised.value).splitlines()
    assert lines[0] == (f"folder:{root}: 2 unreadable image file(s); data.on_corrupt=warn (--on-corrupt warn) "
                        "skips them, or remove them:")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["cats/cut.png", "dogs/broken.png"]
    assert "UnidentifiedImageError" in lines[2]
    assert not (out / "manifest.json").exists()


def test_a_flat_folder_is_unlabeled(tmp_path):
    for index in range(8):
        save(tmp_path / "flat" / f"{index}.png", noise(20 + index, 30))
    save(tmp_path / "flat" / "empty_subfolder_is_ignored" / ".keep.png", noise(4, 4))
    data = DataConfig(dataset="folder", source=f"folder:{tmp_path / 'flat'}", root=str(tmp_path / "shards"),
                      samples_per_shard=3, num_workers=0, shuffle_buffer=4, image_size=16, channels=1)
    dataset = resolve_dataset(data)
    assert (dataset.num_classes, dataset.class_names, dataset.image_shape) == (0, (), (1, 16, 16))
    assert dataset.label_counts("train") is None and dataset.train_size + dataset.test_size == 8
    assert dataset.manifest["splits"]["train"]["label_counts"] == [] and "cls" not in dataset.manifest["sample_format"]
    for sample in samples_by_split(tmp_path / "shards")["train"].values():
        assert set(sample) == {"path", "png"}
    images, labels = next(train_batches(dataset, data, 4, seed=0, rank=0, world_size=1))
    assert images.shape == (4, 1, 16, 16) and labels.tolist() == [-1] * 4
    test_labels = torch.cat([y for _, y in split_batches(dataset, "test", 4)])
    assert test_labels.tolist() == [-1] * dataset.test_size


@pytest.mark.parametrize("layout", ["empty", "no_images", "empty_class", "mixed"])
def test_unusable_folders_are_refused_with_a_clear_message(tmp_path, layout):
    root = tmp_path / "images"
    root.mkdir()
    message = "no images (.png, .jpg, .jpeg, .webp) found"
    if layout == "no_images":
        (root / "readme.txt").write_text("x")
        save(root / ".hidden.png", noise(4, 4))
    elif layout == "empty_class":
        save(root / "cats" / "a.png", noise(8, 8))
        (root / "dogs").mkdir()
        message = "class subfolder(s) dogs hold no png/jpg/jpeg/webp image"
    elif layout == "mixed":
        save(root / "top.png", noise(8, 8))
        save(root / "cats" / "a.png", noise(8, 8))
        message = "has images both at the top level (e.g. top.png) and in subfolders"
    with pytest.raises(SourceError, match=re.escape(f"folder:{root}: {message}")):
        scan_folder(root)
    data = DataConfig(dataset="folder", source=f"folder:{root}", root=str(tmp_path / "shards"))
    with pytest.raises(DataError, match=re.escape(message)):  # through the config, as training meets it
        resolve_dataset(data)
    assert not (tmp_path / "shards" / "manifest.json").exists()


# --- the split ---------------------------------------------------------------------------------------


def test_the_split_is_deterministic_and_adding_files_moves_no_other(tree, tmp_path):
    root, expected = tree
    files = [(f"cats/{i:03d}.png", 0) for i in range(200)] + [(f"dogs/{i:03d}.png", 1) for i in range(100)]
    first = split_files(files, 0.2)
    assert first == split_files(list(reversed(files)), 0.2)  # a function of the set, not the listing order
    assert 40 <= len(first["test"]) <= 80  # ~20% of 300
    assert all(split_value(path) < 0.2 for path, _ in first["test"])
    grown = split_files(files + [(f"cats/new{i}.png", 0) for i in range(50)], 0.2)
    for split in ("train", "test"):
        assert set(first[split]) <= set(grown[split])  # no old file changed sides
    assert [split_value(p) for p, _ in first["train"]] == sorted(split_value(p) for p, _ in first["train"])
    two = split_files([("rare/x.png", 2), ("rare/y.png", 2)], 0.01)  # a tiny class still gets a test image
    assert len(two["train"]) == len(two["test"]) == 1
    # through real shards: the same files twice give the same bytes; a new file moves no other one
    a = prepare_data(tmp_path / "a", f"folder:{root}", 5, dataset="folder", on_corrupt="warn")
    b = prepare_data(tmp_path / "b", f"folder:{root}", 5, dataset="folder", on_corrupt="warn", workers=3)
    assert [e["sha256"] for e in a["shards"]] == [e["sha256"] for e in b["shards"]]  # any number of threads
    before = {split: set(paths) for split, paths in samples_by_split(tmp_path / "a").items()}
    for index in range(6):
        save(root / "dogs" / f"added{index}.png", noise(20, 20))
    prepare_data(tmp_path / "a", f"folder:{root}", 5, dataset="folder", on_corrupt="warn")
    after = {split: set(paths) for split, paths in samples_by_split(tmp_path / "a").items()}
    assert before["train"] <= after["train"] and before["test"] <= after["test"]
    assert len(after["train"] | after["test"]) == len(expected) + 6


# --- caches and resolve ------------------------------------------------------------------------------


def file_ids(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_resolve_prepares_each_folder_and_setting_in_its_own_cache_and_notices_changes(tree, tmp_path, monkeypatch,
                                                                                        capsys):
    root, expected = tree
    (root / "dogs" / "broken.png").unlink()
    monkeypatch.delenv("GAN_DIST_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = DataConfig(dataset="folder", source=f"folder:{root}", samples_per_shard=5)
    dataset = resolve_dataset(data)
    cache = tmp_path / "cache" / "gan_dist" / "folder"
    assert dataset.directory == dataset_dir(data) and dataset.directory.parent == cache
    assert dataset.image_shape == (3, 32, 32) and dataset.class_names == ("cats", "dogs")
    assert dataset.train_size + dataset.test_size == len(expected)
    assert dataset.train_urls.startswith(f"{dataset.directory}/folder-train-")
    ids = file_ids(dataset.directory)
    capsys.readouterr()
    assert resolve_dataset(data).fingerprint == dataset.fingerprint and file_ids(dataset.directory) == ids
    assert capsys.readouterr().err == ""  # valid: nothing read from the images, nothing written
    gray = resolve_dataset(dataclasses.replace(data, channels=1, image_size=24))
    assert gray.directory != dataset.directory and gray.image_shape == (1, 24, 24)
    other_root = tmp_path / "other"
    save(other_root / "x" / "1.png", noise(9, 9))
    save(other_root / "x" / "2.png", noise(9, 9))
    other = resolve_dataset(dataclasses.replace(data, source=f"folder:{other_root}"))
    assert other.directory.parent == cache and len({dataset.directory, gray.directory, other.directory}) == 3
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [dataset.directory.name, gray.directory.name, other.directory.name])
    save(root / "cats" / "late.png", noise(12, 12))  # the folder changed: its shards are prepared again
    changed = resolve_dataset(data)
    assert "were added, removed or modified since the shards were written" in capsys.readouterr().err
    assert changed.train_size + changed.test_size == len(expected) + 1
    assert changed.fingerprint != dataset.fingerprint
    # Shards at data.root used without their source folder must match the shape the config asks for.
    at_root = DataConfig(dataset="folder", root=str(dataset.directory), samples_per_shard=5)
    assert resolve_dataset(at_root).fingerprint == changed.fingerprint
    with pytest.raises(DataError, match="shards have channels 3, data.channels is 1"):
        resolve_dataset(dataclasses.replace(at_root, channels=1))


def test_cli_prepare_data_folder_reports_counts_per_class(tree, tmp_path, capsys):
    root, expected = tree
    out = tmp_path / "out"
    assert cli_main(["prepare-data", "--dataset", "folder", "--source", f"folder:{root}", "--out", str(out),
                     "--image-size", "16", "--channels", "1", "--on-corrupt", "warn"]) == 0
    lines = capsys.readouterr().out.splitlines()
    manifest = read_manifest(out)
    train, test = (manifest["splits"][s]["num_samples"] for s in ("train", "test"))
    assert lines[0] == (f"image folder shards ready in {out}: train {train} samples in 1 shards, test {test} samples "
                        f"in 1 shards (1x16x16, source folder:{root})")
    cats = [manifest["splits"][s]["label_counts"][0] for s in ("train", "test")]
    assert lines[2].split() == ["0", "cats", str(cats[0]), str(cats[1])] and sum(cats) == 8
    assert lines[4] == "  skipped 1 unreadable file(s): dogs/broken.png"
    assert cli_main(["prepare-data", "--dataset", "folder", "--source", f"folder:{root}", "--out",
                     str(tmp_path / "refused")]) == 1  # on_corrupt=raise by default
    assert "dogs/broken.png: UnidentifiedImageError" in capsys.readouterr().err
    assert cli_main(["prepare-data", "--dataset", "folder", "--out", str(out)]) == 2  # no folder:DIR


# --- the loader at 32x32x3 ---------------------------------------------------------------------------


def test_the_loader_streams_32x32x3_uint8_batches_of_the_converted_images(tree, tmp_path):
    root, expected = tree
    (root / "dogs" / "broken.png").unlink()
    for index in range(20):  # enough images for a few batches
        relative = f"{'cats' if index % 2 else 'dogs'}/more{index}.png"
        save(root / relative, noise(40, 48))
        expected[relative] = 0 if relative.startswith("cats/") else 1
    data = DataConfig(dataset="folder", source=f"folder:{root}", root=str(tmp_path / "shards"), samples_per_shard=8,
                      num_workers=1, shuffle_buffer=16)
    dataset = resolve_dataset(data)
    converted = {relative: convert_image(root / relative, 3, 32).transpose(2, 0, 1) for relative in expected}
    by_bytes = {array.tobytes(): relative for relative, array in converted.items()}
    stream = train_batches(dataset, data, 4, seed=0, rank=0, world_size=1)
    assert stream.steps_per_epoch == -(-dataset.train_size // 4)
    seen = set()
    for _ in range(2 * stream.steps_per_epoch):
        images, labels = next(stream)
        assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8 and labels.dtype == torch.int64
        for image, label in zip(images.numpy(), labels.tolist(), strict=True):
            relative = by_bytes[image.tobytes()]  # exactly one converted file's pixels
            assert label == expected[relative]
            seen.add(relative)
    stream.close()
    assert len(seen) > dataset.train_size // 2
    resumed = train_batches(dataset, data, 4, seed=0, rank=0, world_size=1, start_step=3)
    fresh = train_batches(dataset, data, 4, seed=0, rank=0, world_size=1)
    for _ in range(3):
        next(fresh)
    assert all(torch.equal(a, b) for a, b in zip(next(resumed), next(fresh), strict=True))
    keys_seen = []
    for images, labels, keys in split_batches(dataset, "test", 3, with_keys=True):
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
        assert images.min() >= -1 and images.max() <= 1 and labels.min() >= 0
        keys_seen += keys
    assert len(keys_seen) == dataset.test_size
    uint8 = next(iter(eval_batches(dataset.test_urls, 2, 0, 1, image_shape=(3, 32, 32), as_uint8=True)))[0]
    assert uint8.dtype == torch.uint8 and uint8.shape == (2, 3, 32, 32)
    # the shape is checked: these shards are not 28x28 grayscale
    with pytest.raises(ShardError, match=r"image is RGB \(32, 32\), expected L \(28, 28\)"):
        next(iter(eval_batches(dataset.test_urls, 2, 0, 1, image_shape=(1, 28, 28))))
