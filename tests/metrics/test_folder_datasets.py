"""Metrics for a user's own images (data.dataset=folder) at 3x16x16: a labeled folder with the network
`train-classifier` wrote for it, and an unlabeled one evaluated with that network via eval.feature_net."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from accelerate import Accelerator

from gan_dist.cli import main as cli_main
from gan_dist.configure import load_config
from gan_dist.data.datasets import resolve_dataset
from gan_dist.metrics.evaluate import Evaluator
from gan_dist.models.build import build_generator
from tests.metrics.folders import write_image_folder

SIZE = 16


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labeled")
    images = write_image_folder(root / "images", classes=("red", "blue", "green"), per_class=60, size=(SIZE, SIZE))
    config = load_config(None, ["data.dataset=folder", f"data.source=folder:{images}", f"data.image_size={SIZE}",
                                "data.test_fraction=0.3", f"data.root={root / 'shards'}", "eval.num_samples=60",
                                "eval.batch_size=32", "model.g_width=16"])
    # beside the shards: found by default
    assert cli_main(["train-classifier", "data.dataset=folder", f"data.source=folder:{images}",
                     f"data.image_size={SIZE}", "data.test_fraction=0.3", f"data.root={root / 'shards'}",
                     "--epochs", "5"]) == 0
    return config, resolve_dataset(config.data), root


def test_a_labeled_folder_gets_every_metric_and_its_floor(labeled):
    config, dataset, root = labeled
    assert dataset.image_shape == (3, SIZE, SIZE) and dataset.num_classes == 3
    evaluator = Evaluator(config, Accelerator(cpu=True), dataset, cache_dir=root / "cache")
    floor = evaluator.floor()
    assert {"fid", "class_accuracy", "intra_fid", "coverage"} <= set(floor)
    assert floor["class_accuracy"] > 0.9  # three colours: easy
    torch.manual_seed(0)
    conditional = build_generator(dataclasses.replace(config.model, conditioning="concat"), dataset.image_shape, 3)
    metrics = evaluator.evaluate(conditional, seed=0)
    assert {"class_accuracy", "intra_fid"} <= set(metrics) and not math.isnan(metrics["intra_fid"])
    assert metrics["fid"] > floor["fid"] and metrics["intra_fid"] > floor["intra_fid"]
    assert len(evaluator.last_class_fractions) == 3
    assert (root / "cache").is_dir() and any(p.name.startswith("reference-folder-") for p in (root / "cache").iterdir())


def test_an_unlabeled_folder_is_evaluated_with_a_given_network(labeled, tmp_path):
    config, labeled_dataset, _ = labeled
    flat = write_image_folder(tmp_path / "flat", classes=(), per_class=80, size=(SIZE, SIZE))
    network = labeled_dataset.directory / "feature_net.safetensors"
    unlabeled_config = load_config(None, ["data.dataset=folder", f"data.source=folder:{flat}",
                                          f"data.image_size={SIZE}", "data.test_fraction=0.3",
                                          f"data.root={tmp_path / 'shards'}", "eval.num_samples=40",
                                          "eval.batch_size=32", f"eval.feature_net={network}", "model.g_width=16"])
    dataset = resolve_dataset(unlabeled_config.data)
    assert dataset.num_classes == 0
    evaluator = Evaluator(unlabeled_config, Accelerator(cpu=True), dataset, cache_dir=tmp_path / "cache")
    floor = evaluator.floor()
    assert "fid" in floor and "class_accuracy" not in floor and "intra_fid" not in floor
    torch.manual_seed(0)
    metrics = evaluator.evaluate(build_generator(unlabeled_config.model, dataset.image_shape), seed=0)
    assert metrics["fid"] > floor["fid"] and "intra_fid" not in metrics
