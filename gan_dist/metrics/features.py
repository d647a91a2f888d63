"""Load the packaged feature network, refusing weights whose sha256 differs from the one recorded.

The weights (`weights/mnist_lenet.safetensors`) and their record (`weights/mnist_lenet.json`: sha256,
test accuracy, the command that reproduced them) ship inside the package. Metric values are only
comparable between runs that used the same weights, so a changed file is an error, not a warning.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from gan_dist.data.sources import sha256_file
from gan_dist.metrics.classifier import WEIGHTS_DIR, WEIGHTS_NAME, MnistNet

DEFAULT_WEIGHTS = WEIGHTS_DIR / WEIGHTS_NAME
REGENERATE = "gan-dist train-classifier --epochs 5 --seed 0"


class WeightsIntegrityError(RuntimeError):
    """The feature network's weights do not match the sha256 recorded beside them."""


def weights_record(path: str | Path | None = None) -> dict[str, Any]:
    """The JSON record beside the weights (sha256, feature_dim, test_accuracy, command, ...)."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    record_path = path.with_suffix(".json")
    if not path.is_file() or not record_path.is_file():
        raise FileNotFoundError(
            f"feature-network weights {path} or their record {record_path} are missing; reinstall gan_dist, "
            f"or regenerate them with `{REGENERATE} --out {path}` (needs the MNIST shards: gan-dist prepare-data)")
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


def load_feature_network(path: str | Path | None = None,
                         device: torch.device | str = "cpu") -> tuple[MnistNet, dict[str, Any]]:
    """The verified feature network in eval mode with frozen parameters, and its record."""
    from safetensors.torch import load_file

    path = Path(path) if path else DEFAULT_WEIGHTS
    record = verify_weights(path)
    model = MnistNet(feature_dim=int(record["feature_dim"]))
    model.load_state_dict(load_file(str(path)), strict=True)
    model.eval().requires_grad_(False)
    return model.to(device), record
