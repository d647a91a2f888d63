"""The feature networks: the packaged weights (unchanged, sha256-checked), the network at any shape, which
network a dataset gets, refusals that name eval.feature_net, and `gan-dist train-classifier`."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gan_dist.cli import main as cli_main
from gan_dist.config import ConfigError, DataConfig
from gan_dist.configure import load_config
from gan_dist.data.datasets import resolve_dataset
from gan_dist.metrics.classifier import (
    FEATURE_DIM,
    FOLDER_WEIGHTS_NAME,
    WEIGHTS_DIR,
    FeatureNet,
    accuracy,
    load_split,
    sha256_file,
)
from gan_dist.metrics.features import (
    DEFAULT_WEIGHTS,
    FeatureNetworkMissing,
    WeightsIntegrityError,
    load_feature_network,
    load_weights,
    verify_weights,
    weights_record,
)
from gan_dist.registry.datasets import FASHION_MNIST, FOLDER, MNIST
from tests.metrics.folders import write_image_folder

# The packaged MNIST network as committed before the network was generalized: its bytes must not change
# (every recorded metric value was computed with it).
MNIST_SHA256 = "6934c908b97cddc9910e09c482f6e72d0f90e89f8579f8851a2f01d89cda5702"
FASHION_WEIGHTS = WEIGHTS_DIR / "fashion_mnist_lenet.safetensors"
FASHION_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@pytest.fixture(scope="module")
def mnist_dataset(mnist_shards):
    return resolve_dataset(DataConfig(root=str(mnist_shards)))


def test_packaged_mnist_weights_are_unchanged_and_recorded():
    record = weights_record()
    assert sha256_file(DEFAULT_WEIGHTS) == record["sha256"] == MNIST_SHA256
    assert record["test_accuracy"] >= MNIST.min_classifier_accuracy
    assert record["num_test"] == 10000 and record["num_train"] == 60000
    assert record["command"] == "gan-dist train-classifier --epochs 5 --seed 0"
    assert record["feature_dim"] == FEATURE_DIM
    assert DEFAULT_WEIGHTS.stat().st_size < 4_000_000  # small enough to ship in the package


def test_packaged_mnist_weights_load_strictly_and_compute_as_the_original_lenet():
    net, _ = load_weights()
    assert isinstance(net, FeatureNet) and not net.training
    assert (net.in_channels, net.num_classes, net.width) == (1, 10, 32)
    assert not any(p.requires_grad for p in net.parameters())
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    features, logits = net.features_and_logits(x)
    # The original MnistNet, written out: at 28x28 the adaptive pooling must be the identity.
    h = F.max_pool2d(F.relu(net.conv1(x)), 2)
    h = F.max_pool2d(F.relu(net.conv2(h)), 2)  # (5, 64, 7, 7)
    expected = F.relu(net.fc1(h.flatten(1)))
    assert torch.equal(features, expected)
    assert torch.equal(logits, net.fc2(expected))
    assert features.shape == (5, FEATURE_DIM) and logits.shape == (5, 10)


def test_the_network_at_32x32x3_and_64x64x3():
    torch.manual_seed(0)
    net = FeatureNet(in_channels=3, num_classes=5).eval()
    for size in (32, 64):
        features, logits = net.features_and_logits(torch.rand(2, 3, size, size) * 2 - 1)
        assert features.shape == (2, FEATURE_DIM) and logits.shape == (2, 5)
        assert (features >= 0).all()  # ReLU features
    # The parameters do not depend on the image size (fc1 always sees a 7x7 grid).
    assert sum(p.numel() for p in net.parameters()) == sum(
        p.numel() for p in FeatureNet(in_channels=3, num_classes=5).parameters())
    with pytest.raises(RuntimeError):
        net(torch.rand(2, 1, 32, 32))  # channels are part of the network


@pytest.fixture
def weights_copy(tmp_path):
    path = tmp_path / DEFAULT_WEIGHTS.name
    shutil.copy(DEFAULT_WEIGHTS, path)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), path.with_suffix(".json"))
    return path


def test_a_copy_with_its_record_loads(weights_copy):
    assert verify_weights(weights_copy)["sha256"] == MNIST_SHA256


def test_tampered_weights_are_refused_with_a_clear_error(weights_copy, mnist_dataset):
    data = bytearray(weights_copy.read_bytes())
    data[-100] ^= 0x01  # one bit of one float: the file still parses, the numbers are different
    weights_copy.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError) as error:
        load_feature_network(mnist_dataset, weights_copy)
    message = str(error.value)
    assert str(weights_copy) in message and "sha256" in message
    assert "gan-dist train-classifier" in message and "git checkout" in message


def test_missing_record_names_eval_feature_net(weights_copy, mnist_dataset):
    weights_copy.with_suffix(".json").unlink()
    with pytest.raises(FeatureNetworkMissing, match="eval.feature_net"):
        load_feature_network(mnist_dataset, weights_copy)


def test_each_dataset_gets_its_own_packaged_network(mnist_dataset):
    net, record = load_feature_network(mnist_dataset)
    assert record["sha256"] == MNIST_SHA256 and net.num_classes == 10
    fashion = dataclasses.replace(mnist_dataset, spec=FASHION_MNIST)  # same shape, other spec
    net, record = load_feature_network(fashion)
    assert record["sha256"] == sha256_file(FASHION_WEIGHTS) != MNIST_SHA256
    assert record["dataset"] == "fashion_mnist" and record["image_shape"] == [1, 28, 28]


def test_fashion_mnist_weights_are_recorded_like_mnist_ones():
    record = verify_weights(FASHION_WEIGHTS)
    assert record["test_accuracy"] >= FASHION_MNIST.min_classifier_accuracy == 0.90
    assert record["num_train"] == 60000 and record["num_test"] == 10000
    assert record["command"].startswith("gan-dist train-classifier --dataset fashion_mnist")
    assert FASHION_WEIGHTS.stat().st_size < 4_000_000


@pytest.mark.skipif(not FASHION_IDX_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_weights_reach_90_percent_on_the_official_test_split():
    from gan_dist.data.sources import read_idx

    images = torch.from_numpy(read_idx(FASHION_IDX_DIR / "t10k-images-idx3-ubyte.gz", "images")).unsqueeze(1)
    labels = torch.from_numpy(read_idx(FASHION_IDX_DIR / "t10k-labels-idx1-ubyte.gz", "labels"))
    net, record = load_weights(FASHION_WEIGHTS)
    measured = accuracy(net, images, labels)  # uint8 pixels, scaled exactly like the loader does
    assert measured >= 0.90
    assert measured == pytest.approx(record["test_accuracy"], abs=1e-3)


def test_packaged_mnist_network_reaches_the_recorded_accuracy_on_the_test_split(mnist_dataset):
    net, record = load_feature_network(mnist_dataset)
    images, labels = load_split(mnist_dataset, "test")
    assert images.dtype == torch.uint8 and images.shape == (10000, 1, 28, 28)
    measured = accuracy(net, images, labels)
    assert measured >= MNIST.min_classifier_accuracy
    assert measured == pytest.approx(record["test_accuracy"], abs=1e-3)


def test_a_folder_dataset_without_a_network_names_eval_feature_net(mnist_dataset, tmp_path):
    labeled = dataclasses.replace(mnist_dataset, spec=FOLDER, directory=tmp_path)
    with pytest.raises(FeatureNetworkMissing) as error:
        load_feature_network(labeled)
    assert "eval.feature_net" in str(error.value) and "gan-dist train-classifier" in str(error.value)
    assert str(tmp_path / FOLDER_WEIGHTS_NAME) in str(error.value)
    assert isinstance(error.value, ConfigError)  # `gan-dist eval` exits 2
    unlabeled = dataclasses.replace(labeled, num_classes=0, class_names=())
    with pytest.raises(FeatureNetworkMissing, match="no labels.*eval.feature_net"):
        load_feature_network(unlabeled)
    with pytest.raises(FeatureNetworkMissing, match="eval.feature_net=.*nothing.safetensors"):
        load_feature_network(labeled, tmp_path / "nothing.safetensors")
    # A network given by the user serves an unlabeled folder of the same shape.
    net, record = load_feature_network(unlabeled, DEFAULT_WEIGHTS)
    assert record["sha256"] == MNIST_SHA256


def test_a_network_for_other_images_is_refused(mnist_dataset, tmp_path):
    rgb = dataclasses.replace(mnist_dataset, spec=FOLDER, directory=tmp_path, image_shape=(3, 32, 32))
    with pytest.raises(FeatureNetworkMissing, match="trained on 1x28x28 images.*3x32x32.*eval.feature_net"):
        load_feature_network(rgb, DEFAULT_WEIGHTS)


def test_train_classifier_command_writes_loadable_weights_and_record(tiny_shards, tmp_path):
    config = load_config(None, [f"data.root={tiny_shards}", "data.samples_per_shard=50", "data.auto_prepare=false"])
    out = tmp_path / "net.safetensors"
    assert cli_main(["train-classifier", f"data.root={tiny_shards}", "data.samples_per_shard=50",
                     "data.auto_prepare=false", "--out", str(out), "--epochs", "1", "--seed", "3"]) == 0
    record = verify_weights(out)
    assert 0.0 <= record["test_accuracy"] <= 1.0
    assert record["num_train"] == 300 and record["num_test"] == 100
    assert record["command"] == "gan-dist train-classifier --epochs 1 --seed 3"
    dataset = resolve_dataset(config.data, prepare=False)
    assert record["dataset_fingerprint"] == dataset.fingerprint and record["image_shape"] == [1, 28, 28]
    net, _ = load_feature_network(dataset, out)
    assert net.feature_dim == FEATURE_DIM


def test_train_classifier_for_a_labeled_folder_writes_beside_its_shards(tmp_path, capsys):
    from gan_dist.cli import main

    images = write_image_folder(tmp_path / "images", classes=("cats", "dogs"), per_class=24, size=(20, 14))
    overrides = ["data.dataset=folder", f"data.source=folder:{images}", "data.image_size=16",
                 f"data.root={tmp_path / 'shards'}"]
    assert main(["train-classifier", *overrides, "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "folder (3x16x16, 2 classes)" in out and "eval.feature_net=''" in out
    dataset = resolve_dataset(load_config(None, overrides).data)
    net, record = load_feature_network(dataset)  # found by default, beside the shards
    assert (net.in_channels, net.num_classes) == (3, 2) and record["image_shape"] == [3, 16, 16]
    assert record["class_names"] == ["cats", "dogs"]
    assert record["command"] == (f"gan-dist train-classifier --dataset folder data.source=folder:{images} "
                                 "data.image_size=16 --epochs 2 --seed 0")
    # Elsewhere (--out): the command says which key to set.
    other = tmp_path / "nets" / "mine.safetensors"
    assert main(["train-classifier", *overrides, "--epochs", "1", "--out", str(other)]) == 0
    assert f"set eval.feature_net={other}" in capsys.readouterr().out
    assert verify_weights(other)["num_classes"] == 2


def test_train_classifier_names_the_classes_without_a_test_image(tmp_path, capsys):
    """A class of one image gets no test image: the accuracy is over the other classes, and says so."""
    import json

    from gan_dist.cli import main

    images = write_image_folder(tmp_path / "images", classes=("cats", "dogs", "owls"), per_class=24, size=(16, 16))
    for extra in sorted((images / "owls").iterdir())[1:]:
        extra.unlink()
    out = tmp_path / "net.safetensors"
    assert main(["train-classifier", "data.dataset=folder", f"data.source=folder:{images}", "data.image_size=16",
                 f"data.root={tmp_path / 'shards'}", "--epochs", "1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    [accuracy] = [line for line in lines if "test accuracy" in line]
    assert "(over 2 of 3 classes)" in accuracy, accuracy
    [note] = [line for line in lines if "note:" in line]
    assert note == ("train-classifier: note: 1 class(es) have no test image, so the accuracy says nothing about "
                    "them: owls (too few images to hold one out: add images, or raise data.test_fraction)")
    assert json.loads(out.with_suffix(".json").read_text())["classes_without_test_images"] == ["owls"]


def test_train_classifier_refuses_an_unlabeled_folder(tmp_path, capsys):
    from gan_dist.cli import main

    images = write_image_folder(tmp_path / "flat", classes=(), per_class=30, size=(16, 16))
    code = main(["train-classifier", "--dataset", "folder", f"data.source=folder:{images}", "data.image_size=16",
                 f"data.root={tmp_path / 'shards'}"])
    assert code == 2
    error = capsys.readouterr().err
    assert "no labels" in error and "eval.feature_net" in error
    assert not list((tmp_path / "shards").glob("*.safetensors"))
