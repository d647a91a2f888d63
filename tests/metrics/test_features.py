"""The packaged feature network: its record, its sha256 check, and refusal of tampered weights."""

from __future__ import annotations

import shutil

import pytest
import torch

from gan_dist.metrics.classifier import FEATURE_DIM, MIN_TEST_ACCURACY, MnistNet, sha256_file
from gan_dist.metrics.features import (
    DEFAULT_WEIGHTS,
    WeightsIntegrityError,
    load_feature_network,
    verify_weights,
    weights_record,
)


def test_packaged_weights_record_accuracy_command_and_hash():
    record = weights_record()
    assert record["sha256"] == sha256_file(DEFAULT_WEIGHTS)
    assert record["test_accuracy"] >= MIN_TEST_ACCURACY
    assert record["num_test"] == 10000 and record["num_train"] == 60000
    assert record["command"].startswith("gan-dist train-classifier")
    assert record["feature_dim"] == FEATURE_DIM
    assert DEFAULT_WEIGHTS.stat().st_size < 4_000_000  # small enough to ship in the package


def test_packaged_weights_load_in_eval_mode_and_frozen():
    net, record = load_feature_network()
    assert isinstance(net, MnistNet) and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    features, logits = net.features_and_logits(torch.zeros(3, 1, 28, 28))
    assert features.shape == (3, FEATURE_DIM) and logits.shape == (3, 10)


@pytest.fixture
def weights_copy(tmp_path):
    path = tmp_path / DEFAULT_WEIGHTS.name
    shutil.copy(DEFAULT_WEIGHTS, path)
    shutil.copy(DEFAULT_WEIGHTS.with_suffix(".json"), path.with_suffix(".json"))
    return path


def test_a_copy_with_its_record_loads(weights_copy):
    assert verify_weights(weights_copy)["sha256"] == sha256_file(DEFAULT_WEIGHTS)


def test_tampered_weights_are_refused_with_a_clear_error(weights_copy):
    data = bytearray(weights_copy.read_bytes())
    data[-100] ^= 0x01  # one bit of one float: the file still parses, the numbers are different
    weights_copy.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError) as error:
        load_feature_network(weights_copy)
    message = str(error.value)
    assert str(weights_copy) in message and "sha256" in message
    assert "gan-dist train-classifier" in message and "git checkout" in message


def test_missing_record_names_the_regenerating_command(weights_copy):
    weights_copy.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="gan-dist train-classifier"):
        load_feature_network(weights_copy)


def test_packaged_network_reaches_the_recorded_accuracy_on_the_test_split(mnist_shards):
    from gan_dist.config import DataConfig
    from gan_dist.data.shards import test_urls
    from gan_dist.metrics.classifier import accuracy, load_split

    net, record = load_feature_network()
    images, labels = load_split(test_urls(DataConfig(root=str(mnist_shards))))
    measured = accuracy(net, images, labels)
    assert measured >= MIN_TEST_ACCURACY
    assert measured == pytest.approx(record["test_accuracy"], abs=1e-3)


def test_train_classifier_command_writes_loadable_weights_and_record(tiny_shards, tmp_path):
    from gan_dist.config import load_config
    from gan_dist.metrics.classifier import train_classifier_command

    config = load_config(None, [f"data.root={tiny_shards}", "data.samples_per_shard=50", "data.auto_prepare=false"])
    out = tmp_path / "net.safetensors"
    test_accuracy = train_classifier_command(config, out=str(out), num_epochs=1, seed=3)
    record = verify_weights(out)
    assert record["test_accuracy"] == pytest.approx(test_accuracy, abs=1e-6)
    assert record["num_train"] == 300 and record["num_test"] == 100
    assert record["command"] == "gan-dist train-classifier --epochs 1 --seed 3"
    net, _ = load_feature_network(out)
    assert net.feature_dim == FEATURE_DIM
