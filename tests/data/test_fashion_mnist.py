"""Fashion-MNIST: shards byte-exact from IDX files the test writes, verification against the official
counts and checksums, the sources (Debian's files, torchvision offline, auto's order)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import socket
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist.config import DataConfig
from gan_dist.data import sources
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.loader import split_batches
from gan_dist.data.shards import prepare_data, shard_name, verify_shards
from gan_dist.data.sources import IDX_FILES, ImageArrays, SourceError, idx_sha256, load_arrays, verify_arrays
from gan_dist.registry.datasets import FASHION_MNIST
from tests.data.synthetic import sample_indices, synthetic_arrays, write_idx

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# md5 of the official files once decompressed (the same content torchvision's FashionMNIST .gz files hold)
OFFICIAL_UNCOMPRESSED_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
needs_debian_files = pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(), reason=f"{DEBIAN_DIR} missing: apt-get install dataset-fashion-mnist")


def shard_samples(path: Path) -> list[tuple[str, np.ndarray, int]]:
    """(key, pixels, label) of every sample, read with tarfile + PIL only (not with our loader)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            key, extension = member.name.split(".", 1)
            samples.setdefault(key, {})[extension] = archive.extractfile(member).read()
    return [(key, np.array(Image.open(io.BytesIO(parts["png"]))), int(parts["cls"])) for key, parts in samples.items()]


def test_shards_from_idx_files_round_trip_exactly(tmp_path):
    arrays = synthetic_arrays(120, 40, seed=7)
    idx = write_idx(tmp_path / "idx", arrays, gzipped=True)
    out = tmp_path / "shards"
    manifest = prepare_data(out, f"idx:{idx}", 50, dataset="fashion_mnist", verify_official_counts=False)
    assert manifest["dataset"] == "fashion_mnist" and manifest["source"] == f"idx:{idx}"
    assert manifest["image_shape"] == [1, 28, 28] and manifest["num_classes"] == 10
    assert manifest["class_names"] == list(FASHION_MNIST.class_names)
    assert manifest["sample_format"]["png"] == "28x28 grayscale (mode L) PNG, uint8 pixels"
    assert [e["name"] for e in manifest["shards"]] == [
        "fashion_mnist-train-000000.tar", "fashion_mnist-train-000001.tar", "fashion_mnist-train-000002.tar",
        "fashion_mnist-test-000000.tar"]
    assert verify_shards(out) == []
    for split in ("train", "test"):
        images, labels = arrays.split(split)
        samples = [s for e in manifest["shards"] if e["split"] == split for s in shard_samples(out / e["name"])]
        assert [key for key, _, _ in samples] == [f"{split}-{i:06d}" for i in range(len(labels))]
        np.testing.assert_array_equal(np.stack([pixels for _, pixels, _ in samples]), images)
        np.testing.assert_array_equal([label for _, _, label in samples], labels)
    # the same images as MNIST give the same tar bytes: only the file names carry the dataset
    mnist = prepare_data(tmp_path / "mnist", f"idx:{idx}", 50, verify_official_counts=False)
    assert [e["sha256"] for e in mnist["shards"]] == [e["sha256"] for e in manifest["shards"]]
    # and the loader reads them back through the resolved dataset
    dataset = resolve_dataset(DataConfig(dataset="fashion_mnist", root=str(out), samples_per_shard=50))
    assert dataset.train_urls == f"{out}/fashion_mnist-train-{{000000..000002}}.tar"
    assert dataset.test_urls == str(out / shard_name("test", 0, "fashion_mnist"))
    batches = list(split_batches(dataset, "test", 16))
    assert sample_indices(torch.cat([x for x, _ in batches])) == list(range(40))


def test_official_counts_and_checksums_are_enforced(synthetic_idx_dir):
    with pytest.raises(SourceError, match=r"train split: label counts \(30, 30, 30, 30, 30, 30, 30, 30, 30, 30\) "
                                          r"differ from the official Fashion-MNIST counts \(6000, 6000"):
        load_arrays(FASHION_MNIST, f"idx:{synthetic_idx_dir}")
    # The official label counts but other pixels: the checksum of the images refuses them.
    rng = np.random.default_rng(0)
    labels = {"train": np.repeat(np.arange(10), 6000), "test": np.repeat(np.arange(10), 1000)}
    images = {split: rng.integers(0, 256, (len(labels[split]), 28, 28), dtype=np.uint8) for split in labels}
    impostor = ImageArrays(images["train"], labels["train"], images["test"], labels["test"], source="impostor")
    with pytest.raises(SourceError, match=r"impostor: train split: images differ from the official Fashion-MNIST "
                                          r"file train-images-idx3-ubyte \(sha256 of its uncompressed content"):
        verify_arrays(impostor, FASHION_MNIST)
    verify_arrays(impostor, FASHION_MNIST, verify_official_counts=False)  # shapes and range alone pass


def test_idx_sha256_is_sha256sum_of_the_uncompressed_file(tmp_path):
    arrays = synthetic_arrays(30, 10)
    directory = write_idx(tmp_path, arrays, gzipped=False)
    for (split, kind), names in IDX_FILES.items():
        expected = hashlib.sha256((directory / names[0]).read_bytes()).hexdigest()
        assert idx_sha256(arrays.split(split)[0 if kind == "images" else 1], kind) == expected


@needs_debian_files
def test_debians_files_are_the_official_fashion_mnist():
    """Their .gz wrappers are recompressed, but the content is the official one: checked by md5 and sha256
    of the decompressed files, and by the full verification (counts, checksums) of the loaded arrays."""
    for name, md5 in OFFICIAL_UNCOMPRESSED_MD5.items():
        content = gzip.decompress((DEBIAN_DIR / f"{name}.gz").read_bytes())
        assert hashlib.md5(content).hexdigest() == md5
        assert hashlib.sha256(content).hexdigest() == FASHION_MNIST.official_sha256[name]
    arrays = load_arrays(FASHION_MNIST, f"idx:{DEBIAN_DIR}")  # verified inside
    assert arrays.train_images.shape == (60000, 28, 28) and arrays.test_images.shape == (10000, 28, 28)
    for split in ("train", "test"):
        counts = np.bincount(arrays.split(split)[1], minlength=10)
        assert tuple(counts) == FASHION_MNIST.official_label_counts[split]
    assert arrays.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]  # the well-known first labels


@needs_debian_files
def test_auto_reads_debians_folder_without_the_network(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(FASHION_MNIST.idx_dir_env, raising=False)

    def never(*args, **kwargs):
        raise AssertionError("auto must not reach torchvision when a local IDX folder exists")

    monkeypatch.setattr(sources, "load_torchvision", never)
    arrays = load_arrays(FASHION_MNIST, "auto", data_root=tmp_path / "shards")
    assert arrays.source == f"idx:{DEBIAN_DIR}" and capsys.readouterr().err == ""


def test_auto_tries_the_local_folders_then_torchvision_and_lists_every_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bad = write_idx(tmp_path / "system", synthetic_arrays(30, 10), gzipped=True)  # readable, not official
    spec = dataclasses.replace(FASHION_MNIST, system_idx_dirs=(str(bad),))
    monkeypatch.delenv(spec.idx_dir_env, raising=False)
    tried = []

    def failing(*args, **kwargs):
        tried.append(args)
        raise SourceError("torchvision unavailable here")

    monkeypatch.setattr(sources, "load_torchvision", failing)
    with pytest.raises(SourceError) as raised:
        load_arrays(spec, "auto", data_root=tmp_path / "shards")
    assert len(tried) == 1 and tried[0][1] == "FashionMNIST"
    message = str(raised.value)
    assert message.startswith(f"no Fashion-MNIST source worked; tried:\n  idx:{bad}: idx:{bad}: train split: "
                              "label counts")
    assert "\n  torchvision: torchvision unavailable here\n" in message
    assert "GAN_DIST_FASHION_MNIST_IDX_DIR" in message and "apt-get install dataset-fashion-mnist" in message
    assert "wheel" not in message.split("\n")[-1]
    report = capsys.readouterr().err.splitlines()
    assert [line.split(" failed after ")[0] for line in report] == [
        f"gan_dist.data: Fashion-MNIST source idx:{bad}", "gan_dist.data: Fashion-MNIST source torchvision"]
    with pytest.raises(SourceError, match=r"unknown Fashion-MNIST source 'wheel' \(data.source / --source: "
                                          r"auto \| idx:DIR \| torchvision\)"):
        load_arrays(FASHION_MNIST, "wheel")


def test_torchvision_without_network_fails_within_seconds(tmp_path, monkeypatch):
    from torchvision.datasets import FashionMNIST

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends
    monkeypatch.setattr(FashionMNIST, "mirrors", [f"http://127.0.0.1:{port}/fashion/"])
    started = time.perf_counter()
    with pytest.raises(SourceError, match=f"cannot reach 127.0.0.1:{port}"):
        load_arrays(FASHION_MNIST, "torchvision", cache_dir=tmp_path)
    assert time.perf_counter() - started < 5.0

