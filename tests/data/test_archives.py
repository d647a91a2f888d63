"""Official-format readers (CIFAR-10/100 binary, STL-10 binary, CelebA zip) and shards written from them, on
tiny archives built in those formats (tests/data/official_formats.py): exact pixels and labels, split sizes,
STL-10's column-major planes, chunking, checksum and count refusals, and the existing loaders reading the
shards."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist.config import ConfigError, DataConfig
from gan_dist.data.archives import (
    CELEBA_PARTITION_FILE,
    CELEBA_PARTITION_LAST_IDS,
    CELEBA_ZIP,
    celeba_official_partition,
    open_archive,
)
from gan_dist.data.batches import make_batch_source
from gan_dist.data.benchmarks import manifest_problem, settings_key, write_archive_shards
from gan_dist.data.datasets import ResolvedDataset, resolve_dataset
from gan_dist.data.loader import eval_batches, train_batches
from gan_dist.data.shards import encode_shard, verify_shards
from gan_dist.data.sources import SourceError
from gan_dist.registry.datasets import CELEBA, CELEBA_ARCHIVE, CIFAR10, CIFAR10_ARCHIVE, DATASETS
from tests.data.official_formats import (
    celeba_jpeg,
    cifar10_files,
    cifar100_files,
    random_images,
    stl10_files,
    write_archive,
    write_celeba,
)

# Tiny archives fail the official checksums by design: the warning each such call gives is expected here.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*used anyway \(verify_checksums=False\)")
TINY = {"verify_checksums": False, "verify_official_counts": False, "progress": False, "workers": 2}


def concat(chunks):
    chunks = list(chunks)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]), [len(c[1]) for c in chunks]


@pytest.fixture
def cifar10(tmp_path):
    """(write(extracted) -> path, train images, train labels, test images, test labels): 2 train batches."""
    first, second, test = random_images(3, 32, 32, 1), random_images(4, 32, 32, 2), random_images(5, 32, 32, 3)
    labels = ([9, 0, 3], [1, 1, 7, 2], [4, 5, 6, 0, 9])
    files = cifar10_files([(first, labels[0]), (second, labels[1])], (test, labels[2]))

    def write(extracted: bool = False, name: str = "cifar-10-binary.tar.gz"):
        return write_archive(tmp_path / ("extracted" if extracted else name), files, extracted)

    return write, np.concatenate([first, second]), labels[0] + labels[1], test, labels[2]


def stl10_set(tmp_path, extracted=False):
    train = random_images(4, 96, 96, 10)
    pattern = np.zeros((96, 96, 3), dtype=np.uint8)
    pattern[0, :, 0] = 255  # the top row red: a swapped row/column order would paint the left column instead
    pattern[10:20, 60:90, 1] = 200  # a wide green bar right of the middle
    train[0] = pattern
    test, unlabeled = random_images(3, 96, 96, 11), random_images(5, 96, 96, 12)
    files = stl10_files((train, [1, 10, 5, 2]), (test, [3, 3, 10]), unlabeled)
    path = write_archive(tmp_path / ("stl10_binary" if extracted else "stl10_binary.tar.gz"), files, extracted)
    return path, train, test, unlabeled


def resolved(spec, directory) -> ResolvedDataset:
    """What resolve_dataset hands the loaders for a shard folder already written (nothing prepared)."""
    return resolve_dataset(DataConfig(dataset=spec.name, root=str(directory)), prepare=False)


# --- readers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("extracted", [False, True])
def test_cifar10_binary_round_trips_exactly_in_any_chunking(cifar10, extracted):
    write, train, train_labels, test, test_labels = cifar10
    with open_archive("cifar10", write(extracted)) as opened:
        assert {name: s.num_samples for name, s in opened.splits.items()} == {"train": 7, "test": 5}
        assert opened.class_names[:2] == ("airplane", "automobile") and opened.kind == ("folder" if extracted else "tar")
        images, labels, sizes = concat(opened.splits["train"].chunks(3))  # chunks straddle the two batch files
        assert sizes == [3, 3, 1] and images.dtype == np.uint8 and labels.dtype == np.int64
        assert np.array_equal(images, train) and labels.tolist() == train_labels
        whole, whole_labels, sizes = concat(opened.splits["train"].chunks(100))
        assert sizes == [7] and np.array_equal(whole, train) and np.array_equal(whole_labels, labels)
        images, labels, _ = concat(opened.splits["test"].chunks(2))
        assert np.array_equal(images, test) and labels.tolist() == test_labels


def test_cifar100_reads_fine_labels_and_counts_coarse_ones(tmp_path):
    train, test = random_images(6, 32, 32, 4), random_images(2, 32, 32, 5)
    coarse, fine = [0, 19, 4, 4, 7, 0], [99, 0, 42, 43, 7, 1]
    names = tuple(f"fine_{i}" for i in range(100))
    files = cifar100_files((train, coarse, fine), (test, [1, 2], [3, 4]), names)
    with open_archive("cifar100", write_archive(tmp_path / "cifar-100-binary.tar.gz", files, False)) as opened:
        images, labels, _ = concat(opened.splits["train"].chunks(4))
        assert np.array_equal(images, train) and labels.tolist() == fine
        counts = opened.coarse_label_counts["train"]
        assert counts[0] == 2 and counts[4] == 2 and counts[19] == 1 and counts.sum() == 6
        assert opened.class_names == names and opened.details["coarse_labels"]["num_classes"] == 20


@pytest.mark.parametrize("extracted", [False, True])
def test_stl10_planes_are_column_major_and_labels_shift_to_zero(tmp_path, extracted):
    path, train, test, unlabeled = stl10_set(tmp_path, extracted)
    with open_archive("stl10", path) as opened:
        assert {k: s.num_samples for k, s in opened.splits.items()} == {"train": 4, "test": 3, "unlabeled": 5}
        images, labels, _ = concat(opened.splits["train"].chunks(3))
        assert images.shape == (4, 96, 96, 3) and np.array_equal(images, train)
        assert (images[0, 0, :, 0] == 255).all() and (images[0, 1:, 0, 0] == 0).all()  # the top row, not the left column
        assert labels.tolist() == [0, 9, 4, 1]
        images, labels, _ = concat(opened.splits["unlabeled"].chunks(2))
        assert np.array_equal(images, unlabeled) and labels.tolist() == [-1] * 5
        images, labels, _ = concat(opened.splits["test"].chunks(10))
        assert np.array_equal(images, test) and labels.tolist() == [2, 2, 9]
        assert opened.class_names[7] == "monkey"


def test_celeba_splits_follow_the_partition_file_and_pixels_are_pillows(tmp_path):
    partitions = [0, 0, 2, 1, 0, 2, 1]
    zip_path = write_celeba(tmp_path / "celeba", partitions)
    for path in (zip_path, zip_path.parent):  # the zip, or the folder holding it (torchvision's layout)
        with open_archive("celeba", path, workers=2) as opened:
            assert {k: s.num_samples for k, s in opened.splits.items()} == {"train": 3, "valid": 2, "test": 2}
            images, labels, sizes = concat(opened.splits["train"].chunks(2))
            assert sizes == [2, 1] and labels.tolist() == [-1] * 3 and images.shape == (3, 218, 178, 3)
            for image, index in zip(images, [0, 1, 4], strict=True):
                expected = np.asarray(Image.open(io.BytesIO(celeba_jpeg(index))).convert("RGB"))
                assert np.array_equal(image, expected)
            assert opened.details["partition"]["source"].endswith("list_eval_partition.txt")
    write_celeba(tmp_path / "no_list", partitions, partition_file=False)  # official id ranges: all ids <= 162770
    with open_archive("celeba", tmp_path / "no_list" / "img_align_celeba.zip") as opened:
        assert {k: s.num_samples for k, s in opened.splits.items()} == {"train": 7, "valid": 0, "test": 0}
        assert "official id ranges" in opened.details["partition"]["source"]
    assert [celeba_official_partition(i) for i in (1, 162770, 162771, 182637, 182638, 202599)] == [0, 0, 1, 1, 2, 2]
    assert CELEBA_PARTITION_LAST_IDS[-1] == 202599


def test_damaged_archives_are_refused_naming_the_file(cifar10, tmp_path):
    write, *_ = cifar10
    folder = write(extracted=True)
    batch = folder / "cifar-10-batches-bin" / "data_batch_2.bin"
    batch.write_bytes(batch.read_bytes() + b"\0")
    with pytest.raises(SourceError, match=r"data_batch_2\.bin: 12293 bytes is not a whole number of 3073-byte"):
        open_archive("cifar10", folder)
    archive = write()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"cut\.tar\.gz"):
        with open_archive("cifar10", cut) as opened:
            concat(opened.splits["test"].chunks(10))
    with pytest.raises(SourceError, match=r"no cifar-10-batches-bin/data_batch_1\.bin .*binary"):
        open_archive("cifar10", write_archive(tmp_path / "other.tar", {"a.txt": b""}, False))


# --- shards ------------------------------------------------------------------------------------------


def test_cifar10_shards_are_the_existing_format_deterministic_and_load(cifar10, tmp_path):
    write, train, train_labels, test, test_labels = cifar10
    source = f"archive:{write()}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = write_archive_shards(tmp_path / "a", "cifar10", source, samples_per_shard=4, **TINY)
    assert len([w for w in caught if "sha256" in str(w.message)]) == 1  # one warning, naming the archive
    assert "cifar-10-binary.tar.gz" in str(caught[0].message)
    checks = manifest["benchmark"]["checksums"]
    assert checks["verify_checksums"] is False and checks["verified"] is False
    assert checks["files"][0]["expected"] == CIFAR10_ARCHIVE.sha256
    assert manifest["splits"]["train"] == {"num_samples": 7, "num_shards": 2,
                                           "label_counts": np.bincount(train_labels, minlength=10).tolist()}
    assert manifest["image_shape"] == [3, 32, 32] and manifest["num_classes"] == 10 and manifest["source"] == source
    assert [e["name"] for e in manifest["shards"]] == ["cifar10-train-000000.tar", "cifar10-train-000001.tar",
                                                       "cifar10-test-000000.tar", "cifar10-test-000001.tar"]
    # byte for byte what the MNIST writer's encoder gives for the same pixels and labels
    assert (tmp_path / "a" / "cifar10-train-000001.tar").read_bytes() == encode_shard(
        "train", train[4:], np.array(train_labels[4:]), first_index=4)
    assert verify_shards(tmp_path / "a") == [] and (tmp_path / "a" / "protocol.txt").read_text().startswith("CIFAR-10")
    again = write_archive_shards(tmp_path / "b", "cifar10", f"archive:{write(extracted=True)}", samples_per_shard=4,
                                 chunk_size=2, **TINY)
    assert [e["sha256"] for e in again["shards"]] == [e["sha256"] for e in manifest["shards"]]

    dataset = resolved(CIFAR10, tmp_path / "a")
    seen = {}
    for images, labels, keys in eval_batches(dataset.test_urls, 2, 0, 1, with_keys=True, image_shape=(3, 32, 32),
                                             num_classes=10, as_uint8=True):
        for image, label, key in zip(images, labels.tolist(), keys, strict=True):
            seen[key] = (image, label)
    assert [seen[f"test-{i:06d}"][1] for i in range(5)] == test_labels
    assert all(torch.equal(seen[f"test-{i:06d}"][0], torch.from_numpy(test[i]).permute(2, 0, 1)) for i in range(5))
    data = DataConfig(dataset="cifar10", num_workers=0, shuffle_buffer=8, loader="memory")
    images, labels = next(train_batches(dataset, data, 3, seed=0, rank=0, world_size=1))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8 and set(labels.tolist()) <= set(train_labels)
    memory = make_batch_source(dataset, data, 7, seed=0, rank=0, world_size=1, start_sample=0, device="cpu")
    real, labels = next(memory)
    assert real.shape == (7, 3, 32, 32) and real.min() >= -1 and sorted(labels.tolist()) == sorted(train_labels)


def test_checksums_and_counts_refuse_a_repacked_archive_naming_the_file(cifar10, tmp_path):
    write, *_ = cifar10
    archive = write()
    with pytest.raises(SourceError) as refused:
        write_archive_shards(tmp_path / "out", "cifar10", f"archive:{archive}", progress=False)
    message = str(refused.value)
    assert "\n" not in message and str(archive) in message and CIFAR10_ARCHIVE.sha256 in message
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(SourceError, match=r"data_batch_1\.bin: sha256 .* differs from the official cee91656"):
        write_archive_shards(tmp_path / "out", "cifar10", f"archive:{write(extracted=True)}", progress=False)
    with pytest.warns(UserWarning), pytest.raises(SourceError, match=r"7 images in the train split, the official "
                                                                      r"CIFAR-10 has 50000"):
        write_archive_shards(tmp_path / "out", "cifar10", f"archive:{archive}", verify_checksums=False, progress=False)
    # per-class counts, checked after reading: a protocol whose "official" sizes are the tiny archive's;
    # the refusal comes after shards were rewritten, so the manifest of the earlier shards is gone too
    write_archive_shards(tmp_path / "out", "cifar10", f"archive:{archive}", **TINY)
    assert (tmp_path / "out" / "manifest.json").exists()
    spec = dataclasses.replace(CIFAR10, benchmark=dataclasses.replace(
        CIFAR10.benchmark, official_split_sizes={"train": 7, "test": 5},
        official_label_counts={"train": (1,) * 7 + (0,) * 3, "test": (1,) * 5 + (0,) * 5}))
    with pytest.warns(UserWarning), pytest.raises(SourceError, match=r"data_batch_1\.bin.*per-class counts of the "
                                                                      r"train split \[1, 2, 1, 1"):
        write_archive_shards(tmp_path / "out", spec, f"archive:{archive}", verify_checksums=False, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_stl10_shards_train_on_the_unlabeled_split_resized_with_lanczos(tmp_path):
    path, train, test, unlabeled = stl10_set(tmp_path)
    manifest = write_archive_shards(tmp_path / "s48", "stl10", f"archive:{path}", samples_per_shard=3, **TINY)
    assert manifest["num_classes"] == 0 and manifest["class_names"] == [] and manifest["image_shape"] == [3, 48, 48]
    assert manifest["splits"]["train"]["num_samples"] == 5 and manifest["splits"]["test"]["num_samples"] == 3
    assert manifest["benchmark"]["splits"] == {"train": ["unlabeled"], "test": ["test"]}
    assert manifest["benchmark"]["official_label_counts"]["test"][2] == 2 and "cls" not in manifest["sample_format"]
    dataset = resolved(DATASETS["stl10"], tmp_path / "s48")
    got = torch.cat([x for x, _ in eval_batches(dataset.train_urls, 4, 0, 1, image_shape=(3, 48, 48), num_classes=0,
                                                as_uint8=True)])
    expected = np.stack([np.asarray(Image.fromarray(u).resize((48, 48), Image.Resampling.LANCZOS)) for u in unlabeled])
    assert torch.equal(got, torch.from_numpy(expected).permute(0, 3, 1, 2))
    labels = torch.cat([y for _, y in eval_batches(dataset.test_urls, 4, 0, 1, image_shape=(3, 48, 48), num_classes=0)])
    assert labels.tolist() == [-1] * 3
    labeled = write_archive_shards(tmp_path / "s96", "stl10_labeled", f"archive:{path}", image_size=96, **TINY)
    assert labeled["splits"]["train"]["label_counts"] == [1, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    dataset = resolved(DATASETS["stl10_labeled"], tmp_path / "s96")
    images, labels = next(iter(eval_batches(dataset.train_urls, 4, 0, 1, image_shape=(3, 96, 96), num_classes=10,
                                            as_uint8=True)))
    assert torch.equal(images, torch.from_numpy(train).permute(0, 3, 1, 2)) and labels.tolist() == [0, 9, 4, 1]
    with pytest.raises(ConfigError, match=r"data\.image_size': 64 is not offered for data\.dataset=stl10 \(48 \| 96\)"):
        write_archive_shards(tmp_path / "x", "stl10", f"archive:{path}", image_size=64, **TINY)


def test_celeba_shards_crop_108_then_resize_and_train_on_partitions_0_and_1(tmp_path):
    zip_path = write_celeba(tmp_path / "celeba", [0, 2, 1, 0, 2, 0])
    manifest = write_archive_shards(tmp_path / "c64", "celeba", f"archive:{zip_path}", samples_per_shard=2, **TINY)
    assert (manifest["splits"]["train"]["num_samples"], manifest["splits"]["test"]["num_samples"]) == (4, 2)
    assert manifest["benchmark"]["crop"] == 108 and manifest["image_shape"] == [3, 64, 64]
    dataset = resolved(CELEBA, tmp_path / "c64")
    got = torch.cat([x for x, _ in eval_batches(dataset.train_urls, 3, 0, 1, image_shape=(3, 64, 64), num_classes=0,
                                                as_uint8=True)])

    def expected(index: int) -> np.ndarray:
        image = Image.open(io.BytesIO(celeba_jpeg(index))).convert("RGB")
        return np.asarray(image.crop((35, 55, 143, 163)).resize((64, 64), Image.Resampling.LANCZOS))

    want = np.stack([expected(i) for i in (0, 3, 5, 2)])  # partition 0 in file order, then partition 1
    assert torch.equal(got, torch.from_numpy(want).permute(0, 3, 1, 2))
    assert CELEBA.archive_settings(128, 178) == (128, 178)
    assert [settings_key(n) for n in ("cifar10", "stl10", "celeba")] == ["cifar10-32", "stl10-48", "celeba-64-crop108"]
    assert manifest_problem(manifest, CELEBA) is None and manifest_problem(manifest, CELEBA, samples_per_shard=2) is None
    assert "image_size 64 -> 128, crop 108 -> 178" in manifest_problem(manifest, CELEBA, 128, 178)
    # written from an archive that failed its checksums: not good enough when they are to be verified
    assert "checksums did not match" in manifest_problem(manifest, CELEBA, verify_checksums=True)
    with pytest.raises(ConfigError, match=r"data\.crop': 100 is not offered"):
        CELEBA.archive_settings(64, 100)


def test_the_registry_names_the_files_the_readers_open():
    assert CELEBA_ARCHIVE.filename == CELEBA_ZIP and CELEBA_PARTITION_FILE in CELEBA_ARCHIVE.companion_digests
    for spec in DATASETS.values():
        if spec.benchmark is not None:
            assert spec.official_sha256 == {spec.benchmark.archive.filename: spec.benchmark.archive.sha256}
            assert spec.accepts_source("archive:/data/x") and spec.accepts_source("download")
