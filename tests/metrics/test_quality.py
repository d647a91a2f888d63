"""Quality, proven: the default keras_dcgan config learns all ten digits on CPU in minutes.

Trains configs/mnist_dcgan.yaml (the Keras tutorial's DCGAN, batch 32, one process) for STEPS
iterations and evaluates the exported generator on 2,000 samples against the MNIST test split, next
to two bad generators: the untrained one (same seed) and the best of ten generators collapsed to one
digit (2,000 real train images of that digit: perfect samples, one mode).

Measured here (2 CPU cores shared with other jobs: training took 879 s; the
~150 images/s of its quiet intervals suggest ~7 minutes on idle cores;
torch 2.14 CPU, packaged feature network 6934c908; 2,000 samples, seed 0):
                              FID    IS    precision recall density coverage classes KL(uniform)
  real train images (floor)   13.4  9.85   0.87      0.86   0.96    0.54      10      0.003
  trained, 2000 iterations   182.6  7.27   0.49      0.82   0.31    0.14      10      0.017
  collapsed to one digit    1558.6  1.03   0.85      0.09   0.98    0.10       1      2.27
  untrained G               2314.3  1.00   1.00      0.00   0.20    0.0001     3      1.82
("collapsed" is the best of the ten single-digit sets of real train images, digit 8; the others score
FID 1680-2215.) The thresholds leave the trained run a factor ~2 of room on FID (< 0.25 x collapsed
= 390, < 0.2 x untrained = 463) and on IS (> 5), and need every digit at >= 2% of the samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from gan_dist.checkpoint import load_generator
from gan_dist.configure import load_config
from gan_dist.data.datasets import resolve_dataset
from gan_dist.metrics.classifier import load_split, to_unit_range
from gan_dist.metrics.evaluate import Evaluator, compute_metrics
from gan_dist.models.build import build_models
from gan_dist.train.trainer import train

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 2000
NUM_SAMPLES = 2000


def test_keras_dcgan_learns_all_ten_digits(mnist_shards, tmp_path):
    overrides = [f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=quality",
                 f"train.num_steps={STEPS}", "log.tracker=none", "log.progress_bar=false", "log.log_every=250",
                 "log.sample_every=500", "eval.eval_every=-1", "checkpoint.every=0",
                 f"eval.num_samples={NUM_SAMPLES}"]
    config = load_config(REPO_ROOT / "configs" / "mnist_dcgan.yaml", overrides)
    start = time.perf_counter()
    assert train(config) == 0
    train_s = time.perf_counter() - start

    dataset = resolve_dataset(config.data)
    evaluator = Evaluator(config, Accelerator(cpu=True), dataset, cache_dir=tmp_path / "metrics_cache")
    G, info = load_generator(run_dir=tmp_path / "quality")
    assert info.step == STEPS
    trained = evaluator.evaluate(G, seed=0)
    torch.manual_seed(config.run.seed)
    untrained = evaluator.evaluate(build_models(config.model, dataset.image_shape)[0], seed=0)
    images, labels = load_split(dataset, "train")  # uint8 (60000, 1, 28, 28)
    collapsed = []
    for digit in range(10):
        features, logits = evaluator.net.features_and_logits(to_unit_range(images[labels == digit][:NUM_SAMPLES]))
        collapsed.append(compute_metrics(features, logits, evaluator.reference()))
    best_collapsed = min(collapsed, key=lambda m: m["fid"])
    floor = evaluator.floor()
    report = {"train_s": round(train_s), "floor": floor, "trained": trained, "untrained": untrained,
              "collapsed": best_collapsed}
    print(report)

    assert trained["classes_covered"] == 10, report
    assert trained["fid"] < 0.25 * best_collapsed["fid"], report
    assert trained["fid"] < 0.2 * untrained["fid"], report
    assert trained["inception_score"] > 5.0, report
    assert trained["recall"] > 3 * best_collapsed["recall"], report


CONDITIONAL_STEPS = 1000


def test_a_conditional_generator_draws_the_class_asked_for(mnist_shards, tmp_path):
    """configs/mnist_acgan.yaml for CONDITIONAL_STEPS iterations: the packaged classifier assigns the
    requested digit to most samples (chance: 10%), for every digit."""
    overrides = [f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=acgan",
                 f"train.num_steps={CONDITIONAL_STEPS}", "log.tracker=none", "log.progress_bar=false",
                 "log.log_every=250", "log.sample_every=0", "eval.eval_every=-1", "checkpoint.every=0",
                 f"eval.num_samples={NUM_SAMPLES}"]
    config = load_config(REPO_ROOT / "configs" / "mnist_acgan.yaml", overrides)
    assert train(config) == 0
    dataset = resolve_dataset(config.data)
    evaluator = Evaluator(config, Accelerator(cpu=True), dataset, cache_dir=tmp_path / "metrics_cache")
    G, info = load_generator(run_dir=tmp_path / "acgan")
    assert info.num_classes == 10
    metrics = evaluator.evaluate(G, seed=0)
    print(metrics)
    assert metrics["class_accuracy"] > 0.6, metrics  # 6x chance
    # Every digit on its own: the samples asked to be class c are mostly classified as c.
    from gan_dist.sampling import class_labels, generate

    for digit in range(10):
        images = generate(G, 100, seed=digit, labels=class_labels(100, 10, digit))
        _, logits = evaluator.net.features_and_logits(images)
        assert (logits.argmax(1) == digit).float().mean() > 0.4, digit
