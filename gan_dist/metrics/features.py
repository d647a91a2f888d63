"""Load a dataset's feature network, refusing weights whose sha256 differs from the one recorded.

Every weights file has a JSON record beside it (`X.safetensors` -> `X.json`: sha256, architecture,
test accuracy, the command that reproduces it). Metric values are only comparable between runs that
used the same weights, so a changed file is an error, not a warning.

Which network (`load_feature_network(dataset, path)`):
  path given (eval.feature_net)  that file, for any dataset (an unlabeled folder needs one)
  mnist, fashion_mnist           the packaged `weights/<spec.feature_net>` (shipped with the package)
  folder, cifar10, cifar100,     `feature_net.safetensors` beside its shards, written by
  stl10_labeled (labeled)        `gan-dist train-classifier --dataset NAME` (a folder: data.source=folder:DIR)
A network that is not there raises `FeatureNetworkMissing` (a ConfigError naming eval.feature_net);
the trainer catches it, turns evaluation off and says once why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gan_dist.config import ConfigError, EvalConfig
from gan_dist.files import sha256_file
from gan_dist.metrics.classifier import (
    FEATURE_DIM,
    NUM_CLASSES,
    WEIGHTS_DIR,
    WEIGHTS_NAME,
    WIDTH,
    FeatureNet,
    default_weights_path,
)
from gan_dist.registry.datasets import MNIST
from gan_dist.registry.feature_nets import is_path

if TYPE_CHECKING:
    from gan_dist.data.datasets import ResolvedDataset

DEFAULT_WEIGHTS = WEIGHTS_DIR / WEIGHTS_NAME  # MNIST's packaged network
REGENERATE = "gan-dist train-classifier --epochs 5 --seed 0"
# Records written before image_shape was recorded (the packaged MNIST network's) are MNIST's.
LEGACY_RECORD_SHAPE = MNIST.image_shape


class WeightsIntegrityError(RuntimeError):
    """The feature network's weights do not match the sha256 recorded beside them."""


class FeatureNetworkMissing(ConfigError):
    """There is no feature network for this dataset (or not one that fits it): evaluation cannot run.
    The message names eval.feature_net and how to get one."""


def weights_record(path: str | Path | None = None, regenerate: str = REGENERATE) -> dict[str, Any]:
    """The JSON record beside the weights (sha256, feature_dim, test_accuracy, command, ...)."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    record_path = path.with_suffix(".json")
    if not path.is_file() or not record_path.is_file():
        raise FileNotFoundError(
            f"feature-network weights {path} or their record {record_path} are missing; reinstall gan_dist, "
            f"or regenerate them with `{regenerate} --out {path}`")
    return json.loads(record_path.read_text())


def verify_weights(path: str | Path | None = None) -> dict[str, Any]:
    """Check the weights' sha256 against their record; returns the record, raises WeightsIntegrityError."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    record = weights_record(path)
    actual = sha256_file(path)
    if actual != record.get("sha256"):
        command = record.get("command", REGENERATE)
        raise WeightsIntegrityError(
            f"feature-network weights {path} have sha256 {actual}, but {path.with_suffix('.json')} records "
            f"{record.get('sha256')}: the file was modified or corrupted, and metrics computed with it would not "
            f"be comparable. Restore it (`git checkout -- {path}` or reinstall gan_dist), or regenerate both "
            f"files with `{command} --out {path}`.")
    return record


def record_image_shape(record: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W) the network was trained on (MNIST's for records that predate the field)."""
    return tuple(int(size) for size in record.get("image_shape", LEGACY_RECORD_SHAPE))  # type: ignore[return-value]


def load_weights(path: str | Path | None = None,
                 device: torch.device | str = "cpu") -> tuple[FeatureNet, dict[str, Any]]:
    """The verified network of one weights file, in eval mode with frozen parameters, and its record.

    The architecture comes from the record (in_channels, num_classes, width, feature_dim; MNIST's
    defaults where a field is absent) and the weights must fit it exactly (strict load).
    """
    from safetensors.torch import load_file

    path = Path(path) if path else DEFAULT_WEIGHTS
    record = verify_weights(path)
    model = FeatureNet(feature_dim=int(record.get("feature_dim", FEATURE_DIM)),
                       in_channels=int(record.get("in_channels", LEGACY_RECORD_SHAPE[0])),
                       num_classes=int(record.get("num_classes", NUM_CLASSES)),
                       width=int(record.get("width", WIDTH)))
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval().requires_grad_(False)
    return model.to(device), record


def _missing_message(dataset: ResolvedDataset, expected: Path | None) -> str:
    if dataset.num_classes == 0:
        return (f"data.dataset={dataset.name} has no labels, so there is no classifier to train for it: set "
                "eval.feature_net=inception (the papers' network) or eval.feature_net=PATH to a feature network of "
                "yours (.safetensors with its .json record, e.g. one `gan-dist train-classifier` wrote for similar "
                "labeled images)")
    where = f" (looked for {expected})" if expected is not None else ""
    return (f"no feature network for data.dataset={dataset.name}{where}: run `gan-dist train-classifier` with "
            f"the same data settings (it writes one beside the shards), or set eval.feature_net=inception (the "
            f"papers' network) or eval.feature_net=PATH")


def load_feature_network(dataset: ResolvedDataset, path: str | Path = "",
                         device: torch.device | str = "cpu") -> tuple[FeatureNet, dict[str, Any]]:
    """The verified feature network for `dataset` and its record (see the module docstring for which).

    Raises FeatureNetworkMissing (naming eval.feature_net) when there is none, or when the network was
    trained on images of another shape; WeightsIntegrityError when its sha256 does not match its record.
    """
    if path:
        weights_path = Path(path).expanduser()
        if not weights_path.is_file() or not weights_path.with_suffix(".json").is_file():
            raise FeatureNetworkMissing(
                f"eval.feature_net={path}: {weights_path} or its record {weights_path.with_suffix('.json')} does "
                "not exist (both are written by `gan-dist train-classifier --out PATH`)")
    else:
        default = default_weights_path(dataset)
        if default is None or not default.is_file() or not default.with_suffix(".json").is_file():
            if dataset.spec.feature_net and default is not None:  # a packaged file: the install is damaged
                weights_record(default, f"gan-dist train-classifier --dataset {dataset.name} --epochs 5 --seed 0")
            raise FeatureNetworkMissing(_missing_message(dataset, default))
        weights_path = default
    net, record = load_weights(weights_path, device)
    trained_on = record_image_shape(record)
    if trained_on != tuple(dataset.image_shape):
        shape = "x".join(map(str, dataset.image_shape))
        raise FeatureNetworkMissing(
            f"feature network {weights_path} was trained on {'x'.join(map(str, trained_on))} images "
            f"({record.get('dataset', 'mnist')}), but data.dataset={dataset.name} has {shape} images: set "
            f"eval.feature_net to a network for this data (`gan-dist train-classifier` trains one)")
    return net, record


def load_feature_net(dataset: ResolvedDataset, eval_config: EvalConfig,
                     device: torch.device | str = "cpu") -> tuple[FeatureNet, dict[str, Any]]:
    """The registry's entry point (eval.feature_net = "classifier" or a path): `load_feature_network`."""
    value = eval_config.feature_net
    return load_feature_network(dataset, value if is_path(value) else "", device=device)
