"""The Evaluator on the real MNIST shards: real-vs-real sanity, floor, noise, and 1 vs 2 processes.

Uses the session's MNIST shards (`mnist_shards` fixture) and a module-wide metrics cache, so the test
split's features are computed once (~10 s on one CPU core).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from gan_dist.config import load_config
from gan_dist.metrics.evaluate import TABLE_KEYS, Evaluator, compute_metrics, format_table, real_features
from gan_dist.metrics.fid import fid_from_features
from tests.distributed import run_processes

WORKER = Path(__file__).with_name("eval_worker.py")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("metrics_cache")


@pytest.fixture(scope="module")
def evaluator(mnist_shards, cache_dir) -> Evaluator:
    config = load_config(None, [f"data.root={mnist_shards}", "eval.num_samples=1000", "eval.batch_size=250"])
    return Evaluator(config, Accelerator(cpu=True), cache_dir=cache_dir)


def test_reference_is_cached_on_disk_keyed_by_weights_and_manifest(evaluator, cache_dir):
    names = sorted(path.name for path in cache_dir.iterdir())
    key = evaluator._cache_key()
    assert f"reference-{key}.npz" in names and f"floor-{key}-n1000.json" in names
    assert evaluator.weights_record["sha256"][:16] in key
    assert len(evaluator.reference().features) == 10000


def test_fid_real_vs_real(evaluator, mnist_shards):
    test_features = evaluator.reference().features
    assert fid_from_features(test_features, test_features) == pytest.approx(0.0, abs=1e-6)
    from gan_dist.data.shards import train_urls

    train_features, _ = real_features(evaluator.net, train_urls(evaluator.config.data), 1000, "cpu", limit=5000)
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
    # cannot cover 10,000 balls), 10 classes, KL 0.004.
    assert set(TABLE_KEYS) <= set(floor)
    assert floor["fid"] < 40.0
    assert floor["classes_covered"] == 10 and floor["class_kl_uniform"] < 0.01
    assert floor["inception_score"] > 9.5
    assert floor["precision"] > 0.75 and floor["recall"] > 0.75
    assert 0.8 < floor["density"] < 1.2 and floor["coverage"] > 0.25
    assert "real floor" in format_table(floor, floor)


def test_untrained_generator_is_far_above_the_floor(evaluator):
    from gan_dist.models import build_models

    torch.manual_seed(0)
    G, _ = build_models(evaluator.config.model)
    G.train()
    metrics = evaluator.evaluate(G, seed=0)
    assert G.training  # the mode is restored
    # Measured: FID 2314, IS 1.00, coverage 0.0001, 3 classes (of blobs the classifier calls digits).
    assert metrics["fid"] > 20 * evaluator.floor()["fid"]
    assert metrics["coverage"] < 0.01 and metrics["inception_score"] < 1.5
    assert metrics == pytest.approx(evaluator.evaluate(G, seed=0) | {"eval_seconds": metrics["eval_seconds"]})


def test_one_and_two_processes_agree(mnist_shards, cache_dir, tmp_path):
    # 301 samples in batches of 64: the last global batch is uneven, gather_for_metrics drops the padding.
    results = {}
    for world_size in (1, 2):
        out = tmp_path / f"eval_{world_size}.json"
        run_processes(WORKER, world_size, [str(mnist_shards), str(cache_dir), str(out), "301", "64"])
        results[world_size] = json.loads(out.read_text())
    one, two = results[1], results[2]
    assert two["world_size"] == 2 and len(set(two["fid_per_rank"])) == 1
    assert one["num_features"] == two["num_features"] == 301
    assert two["sorted_norms"] == pytest.approx(one["sorted_norms"], rel=1e-5)
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-4, abs=1e-6)
    assert two["floor"] == pytest.approx(one["floor"], rel=1e-9)
