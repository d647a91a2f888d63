"""The Evaluator on the real MNIST shards: real-vs-real sanity, floor, noise, conditional metrics on
constructed generators, per-dataset cache keys, and 1 vs 2 processes.

Uses the session's MNIST shards (`mnist_shards` fixture) and a module-wide metrics cache, so the test
split's features are computed once (~10 s on one CPU core).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from gan_dist.config import ConfigError
from gan_dist.configure import load_config
from gan_dist.data.datasets import resolve_dataset
from gan_dist.metrics.classifier import load_split, to_unit_range
from gan_dist.metrics.evaluate import (
    METRICS_VERSION,
    TABLE_KEYS,
    Evaluator,
    compute_metrics,
    format_table,
    real_features,
)
from gan_dist.metrics.fid import fid_from_features
from gan_dist.registry.datasets import MNIST
from tests.distributed import run_processes

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)

WORKER = Path(__file__).with_name("eval_worker.py")
NUM_SAMPLES = 1000


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("metrics_cache")


@pytest.fixture(scope="module")
def evaluator(mnist_shards, cache_dir) -> Evaluator:
    config = load_config(None, [f"data.root={mnist_shards}", f"eval.num_samples={NUM_SAMPLES}",
                                "eval.batch_size=250"])
    return Evaluator(config, Accelerator(cpu=True), resolve_dataset(config.data), cache_dir=cache_dir)


@pytest.fixture(autouse=True)
def live_accelerator(request) -> None:
    """tests/conftest.py resets Accelerate's singletons after every test, which leaves the module's
    evaluator with a dead Accelerator: hand it a fresh one (the same CPU fp32 setup) for each test."""
    if "evaluator" in request.fixturenames:
        request.getfixturevalue("evaluator").accelerator = Accelerator(cpu=True)


@pytest.fixture(scope="module")
def test_split(evaluator) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split(evaluator.dataset, "test")  # uint8 (10000, 1, 28, 28), labels (10000,)


class RealImagesG(nn.Module):
    """A stand-in conditional generator that returns real images: for label y, image k of class y in a
    bank, k a function of z. With `ignore_labels` it draws the class from z instead (a G that ignores y)."""

    latent_dim = 4

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 ignore_labels: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_labels = ignore_labels
        self.banks = [to_unit_range(images[labels == c]) for c in range(num_classes)]  # [(N_c, C, H, W)]

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.ignore_labels:
            labels = (z[:, 1].abs() * 1e4).long() % self.num_classes
        index = (z[:, 0].abs() * 1e4).long()  # (B,) a deterministic function of the noise
        return torch.stack([self.banks[int(y)][int(k) % len(self.banks[int(y)])] for y, k in zip(labels, index,
                                                                                                  strict=True)])


def test_reference_and_floor_are_cached_on_disk_keyed_by_dataset_weights_and_data(evaluator, cache_dir):
    names = sorted(path.name for path in cache_dir.iterdir())
    key = evaluator._cache_key()
    assert f"reference-{key}-test10000.npz" in names and f"floor-{key}-train-n{NUM_SAMPLES}-vs-test10000.json" in names
    assert evaluator.reference_path().name in names and evaluator.floor_path().name in names
    assert key.startswith(f"mnist-v{METRICS_VERSION}-") and evaluator.weights_record["sha256"][:16] in key
    assert evaluator.dataset.fingerprint[:16] in key
    reference = evaluator.reference()
    assert len(reference.features) == len(reference.labels) == 10000
    assert sorted(reference.class_stats) == list(range(10))


def test_every_number_carries_its_protocol(evaluator):
    protocol = evaluator.protocol()
    assert protocol["feature_net"] == "classifier" and protocol["weights_sha256"] == evaluator.weights_record["sha256"]
    assert protocol["resize"].startswith("none") and protocol["num_generated"] == NUM_SAMPLES
    assert protocol["reference"] == {"split": "test"} and protocol["num_reference_images"] == 10000
    assert protocol["floor"] == {"split": "train", "num_images": NUM_SAMPLES}
    assert protocol["inception_score_splits"] == 1 and protocol["kid"]["subset_size"] == NUM_SAMPLES
    assert "weights_official" not in protocol  # only Inception has official weights
    tag = evaluator.protocol_tag()
    assert tag == f"classifier-n{NUM_SAMPLES}-test"
    floor = evaluator.floor()
    # Tracker keys name the protocol: numbers of two protocols never share a chart.
    assert evaluator.tracker_scalars({"fid": 1.0, "kid": 2.0}) == {f"eval/{tag}/fid": 1.0, f"eval/{tag}/kid": 2.0}
    assert set(evaluator.tracker_scalars(floor, "eval_floor")) == {f"eval_floor/{tag}/{key}" for key in floor}
    table = evaluator.table(floor)
    line = table.splitlines()[0]
    assert line.startswith("protocol: classifier (weights ") and f"{NUM_SAMPLES} generated vs the 10000 test" in line
    assert "IS over 1 split(s); KID over 100 subsets" in line and "real floor" in table.splitlines()[1]


def test_two_datasets_never_share_cached_files(evaluator, cache_dir):
    # Another dataset (here: the same files under another fingerprint, as a re-prepared or different
    # dataset would have) gets files of its own and leaves the first one's untouched.
    before = {path.name: path.stat().st_mtime_ns for path in cache_dir.iterdir()}
    other_data = dataclasses.replace(evaluator.dataset, fingerprint="f" * 64)
    other = Evaluator(evaluator.config, evaluator.accelerator, other_data, cache_dir=cache_dir)
    assert other._cache_key() != evaluator._cache_key() and "-dffffffffffffffff" in other._cache_key()
    after = {path.name: path.stat().st_mtime_ns for path in cache_dir.iterdir()}
    assert {name: after[name] for name in before} == before
    assert len(after) == len(before) + 2  # its own reference and floor


def test_fid_real_vs_real(evaluator):
    test_features = evaluator.reference().features
    assert fid_from_features(test_features, test_features) == pytest.approx(0.0, abs=1e-6)
    train_features, _, _ = real_features(evaluator.net, evaluator.dataset, "train", 1000, "cpu", limit=5000)
    fid_train = fid_from_features(train_features, test_features)
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    noise_features, noise_logits = evaluator.net.features_and_logits(noise)
    noise_metrics = compute_metrics(noise_features, noise_logits, evaluator.reference())
    # Measured (packaged weights): train(5000) vs test 7.2; uniform noise 1984; a set with itself 0.
    assert fid_train < 15.0
    assert noise_metrics["fid"] > 100 * fid_train
    # Precision (1.0 here) and density (0.66) are fooled by the few real outliers whose k-NN balls are
    # huge: the noise features all land inside them. Coverage and recall are not (Naeem et al. 2020).
    assert noise_metrics["coverage"] < 0.01 and noise_metrics["recall"] < 0.01


def test_floor_is_near_perfect(evaluator):
    floor = evaluator.floor()
    # Measured, 1,000 train images vs the 10,000 test images: FID 23.6 (it falls as 1/N: 13.4 at 2,000,
    # 5.0 at 10,000), IS 9.84, precision 0.87, recall 0.86, density 0.96, coverage 0.33 (1,000 fakes
    # cannot cover 10,000 balls), 10 classes, KL 0.004; the class metrics on 100 train images per class:
    # class accuracy 0.998, intra-FID 52.7 (100 samples per class in 128 dimensions: a large bias).
    assert set(TABLE_KEYS) <= set(floor)
    assert floor["fid"] < 40.0
    assert floor["classes_covered"] == 10 and floor["class_kl_uniform"] < 0.01
    assert floor["inception_score"] > 9.5
    assert floor["precision"] > 0.75 and floor["recall"] > 0.75
    assert 0.8 < floor["density"] < 1.2 and floor["coverage"] > 0.25
    assert floor["class_accuracy"] > 0.98
    assert floor["fid"] < floor["intra_fid"] < 10 * floor["fid"]
    assert len(evaluator.floor_intra_fid_per_class) == 10
    assert "real floor" in format_table(floor, floor)


def test_untrained_generator_is_far_above_the_floor(evaluator):
    from gan_dist.models.build import build_models

    torch.manual_seed(0)
    G, _ = build_models(evaluator.config.model, MNIST_SHAPE)
    G.train()
    metrics = evaluator.evaluate(G, seed=0)
    assert G.training  # the mode is restored
    assert "class_accuracy" not in metrics and "intra_fid" not in metrics  # unconditional
    # Measured: FID 2314, IS 1.00, coverage 0.0001, 3 classes (of blobs the classifier calls digits).
    assert metrics["fid"] > 20 * evaluator.floor()["fid"]
    assert metrics["coverage"] < 0.01 and metrics["inception_score"] < 1.5
    assert metrics == pytest.approx(evaluator.evaluate(G, seed=0) | {"eval_seconds": metrics["eval_seconds"]})


def test_real_test_images_of_the_requested_class_score_like_the_classifier(evaluator, test_split):
    images, labels = test_split
    metrics = evaluator.evaluate(RealImagesG(images, labels, 10), seed=0)
    floor = evaluator.floor()
    # Measured: class accuracy 0.996 (the network's test accuracy is 0.9927), intra-FID 23.4 vs the
    # floor's 52.7 and FID 6.3 vs 23.6: these images are drawn from the reference itself, the floor's are not.
    assert metrics["class_accuracy"] == pytest.approx(evaluator.weights_record["test_accuracy"], abs=0.015)
    assert metrics["intra_fid"] < floor["intra_fid"] and metrics["fid"] < floor["fid"]
    assert metrics["classes_covered"] == 10 and len(evaluator.last_intra_fid_per_class) == 10


def test_a_generator_that_ignores_its_labels_scores_chance(evaluator, test_split):
    images, labels = test_split
    faithful = evaluator.evaluate(RealImagesG(images, labels, 10), seed=0)
    ignoring = evaluator.evaluate(RealImagesG(images, labels, 10, ignore_labels=True), seed=0)
    # Real images either way, so the unconditional metrics stay below the floor; the class metrics collapse.
    # Measured: class accuracy 0.091 vs 0.996, intra-FID 2064 vs 23.4; FID 11.9 vs 6.3 (floor 23.6).
    assert ignoring["class_accuracy"] == pytest.approx(0.1, abs=0.04)
    assert ignoring["intra_fid"] > 20 * faithful["intra_fid"]
    assert ignoring["fid"] < evaluator.floor()["fid"] and ignoring["classes_covered"] == 10


def test_an_untrained_conditional_generator_and_a_mismatched_one(evaluator):
    from gan_dist.models.build import build_generator

    model = dataclasses.replace(evaluator.config.model, conditioning="concat")
    torch.manual_seed(0)
    metrics = evaluator.evaluate(build_generator(model, (1, 28, 28), num_classes=10), seed=0)
    assert metrics["intra_fid"] > 10 * evaluator.floor()["intra_fid"] and metrics["class_accuracy"] < 0.5
    with pytest.raises(ConfigError, match="data.dataset"):
        evaluator.evaluate(build_generator(model, (1, 28, 28), num_classes=7), seed=0)


@pytest.mark.slow  # ~1 min: the 10,000 test images' features, once per process count
def test_one_and_two_processes_agree(mnist_shards, tmp_path):
    # 301 samples in batches of 64: the last global batch is uneven, gather_for_metrics drops the padding.
    # Each process count has its own (empty) cache: the reference (10,000 test images) and the floor (301
    # train images) are read by both ranks, each its share of the shards, and gathered in sample order.
    results = {}
    for world_size in (1, 2):
        out = tmp_path / f"eval_{world_size}.json"
        run_processes(WORKER, world_size, [str(mnist_shards), str(tmp_path / f"cache{world_size}"), str(out), "301",
                                           "64"])
        results[world_size] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert two["world_size"] == 2 and len(set(two["fid_per_rank"])) == 1
    assert one["num_features"] == two["num_features"] == 301
    assert two["sorted_norms"] == pytest.approx(one["sorted_norms"], rel=1e-5)
    # KID's subsets and IS depend on the order of the samples: it is the same for any process count.
    assert {"fid", "kid", "kid_std", "inception_score", "precision", "coverage"} <= set(one["metrics"])
    assert one["metrics"]["kid"] > 10 * one["metrics"]["kid_std"] / 10 ** 0.5  # a real difference, measured
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-4, abs=1e-6)
    assert two["floor"] == pytest.approx(one["floor"], rel=1e-4, abs=1e-6)
    assert {"kid", "kid_std"} <= set(one["floor"])
    assert one["protocol"] == two["protocol"] and one["tag"] == two["tag"] == "classifier-n301-test"
    assert one["protocol"]["num_reference_images"] == 10000 and one["protocol"]["floor"]["num_images"] == 301
    # A conditional G: the same labels reach the same samples, whatever the process count.
    assert {"class_accuracy", "intra_fid"} <= set(one["conditional"])
    assert two["conditional"] == pytest.approx(one["conditional"], rel=1e-4, abs=1e-6)
    assert two["requested_counts"] == one["requested_counts"] == [31] + [30] * 9
