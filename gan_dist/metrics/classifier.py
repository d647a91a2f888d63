"""The MNIST feature network: a small LeNet-like CNN whose penultimate layer is the metrics' feature space.

The standard Inception FID needs weights from the internet and is a poor judge of 28x28 digits; the
usual practice for MNIST GANs is a classifier trained on MNIST itself. This module holds the network
and its training; `gan_dist.metrics.features` loads the packaged weights (sha256-checked).

Reproduce the packaged weights (5 epochs; measured 8 minutes on one CPU core shared with other jobs):

    gan-dist train-classifier --epochs 5 --seed 0

which reads the MNIST shards through the data API (`prepare-data` writes them), trains with a fixed
seed, and writes `gan_dist/metrics/weights/mnist_lenet.safetensors` plus `mnist_lenet.json` (sha256,
test accuracy 99.27%, the command; it was run with OMP_NUM_THREADS=1). The feature space is the 128
ReLU units of fc1. Bitwise equality of the weights across machines is not promised (CPU kernels and
thread counts change float summation order): two runs here gave identical losses and 99.27%;
expect small differences elsewhere, and a new sha256 in the JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.data.sources import sha256_file

if TYPE_CHECKING:
    from gan_dist.config import Config

FEATURE_DIM = 128  # width of the penultimate layer: the feature space of FID, precision/recall, ...
NUM_CLASSES = 10
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_NAME = "mnist_lenet.safetensors"
MIN_TEST_ACCURACY = 0.99


class MnistNet(nn.Module):
    """conv5x5(32)-pool-conv5x5(64)-pool-fc(128)-fc(10); input (B, 1, 28, 28) in [-1, 1] like G's output."""

    def __init__(self, feature_dim: int = FEATURE_DIM, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 7 * 7, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(feature_dim, NUM_CLASSES)
        self.feature_dim = feature_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations (after ReLU): (B, 1, 28, 28) -> (B, feature_dim)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 7, 7)
        return F.relu(self.fc1(x.flatten(1)))  # (B, 128)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from features: (B, feature_dim) -> (B, 10)."""
        return self.fc2(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, 10) logits

    @torch.no_grad()
    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs in one pass (the metrics need features for FID & co and logits for IS & classes)."""
        f = self.features(x)
        return f, self.head(f)


@torch.no_grad()
def accuracy(model: MnistNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy on (N, 1, 28, 28) images in [-1, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size])
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(images), 1)


def train_classifier(train_images: torch.Tensor, train_labels: torch.Tensor, num_epochs: int = 5,
                     seed: int = 0, batch_size: int = 64, lr: float = 1e-3,
                     log: bool = True) -> MnistNet:
    """Adam with a cosine learning-rate decay over `num_epochs`, shuffling with a seeded generator.

    train_images: (N, 1, 28, 28) float32 in [-1, 1]; train_labels: (N,) int64. Deterministic for a
    given seed, torch version and thread count.
    """
    torch.manual_seed(seed)  # init and dropout
    order_rng = torch.Generator().manual_seed(seed)
    model = MnistNet()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train_images) / batch_size)
    total_steps = num_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    start_time = time.perf_counter()
    for epoch in range(num_epochs):
        order = torch.randperm(len(train_images), generator=order_rng)
        running, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(train_images[index]), train_labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(index)
            seen += len(index)
        if log:
            print(f"train-classifier: epoch {epoch + 1}/{num_epochs} loss {running / seen:.4f} "
                  f"({time.perf_counter() - start_time:.0f} s)", flush=True)
    model.eval()
    return model


def _collect(batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*batches, strict=True)
    return torch.cat(images), torch.cat(labels)


def load_split(urls: str, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory, in the shards' order: (N, 1, 28, 28) float32 in [-1, 1], (N,) int64."""
    from gan_dist.data.loader import eval_batches

    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = eval_batches(urls, batch_size, 0, 1)
    return _collect(batches)


def save_weights(model: MnistNet, out: str | Path, info: dict) -> Path:
    """Write the weights (safetensors) and, beside them, a JSON with their sha256 and `info`."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out), metadata={"feature_dim": str(model.feature_dim)})
    record = {"file": out.name, "sha256": sha256_file(out), "feature_dim": model.feature_dim, **info}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def train_classifier_command(config: Config, out: str | None = None, num_epochs: int = 5,
                             seed: int = 0) -> float:
    """`gan-dist train-classifier`: train on the train shards, report test accuracy, write the weights.

    Returns the test accuracy. Writes to the packaged weights path unless `out` is given.
    """
    from gan_dist.data.shards import ensure_shards, test_urls, train_urls

    data_dir = ensure_shards(config.data)
    train_x, train_y = load_split(train_urls(config.data))
    test_x, test_y = load_split(test_urls(config.data))
    print(f"train-classifier: {len(train_x)} train / {len(test_x)} test images from {data_dir}", flush=True)
    model = train_classifier(train_x, train_y, num_epochs=num_epochs, seed=seed)
    test_accuracy = accuracy(model, test_x, test_y)
    print(f"train-classifier: test accuracy {test_accuracy:.4%}", flush=True)
    if test_accuracy < MIN_TEST_ACCURACY:
        print(f"train-classifier: WARNING: below the {MIN_TEST_ACCURACY:.0%} the metrics assume; "
              f"train longer (--epochs)", flush=True)
    manifest = Path(data_dir) / "manifest.json"
    out_path = Path(out) if out else WEIGHTS_DIR / WEIGHTS_NAME
    command = f"gan-dist train-classifier --epochs {num_epochs} --seed {seed}"
    info = {
        "test_accuracy": round(test_accuracy, 6),
        "num_train": len(train_x),
        "num_test": len(test_x),
        "epochs": num_epochs,
        "seed": seed,
        "command": command,
        "torch": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "shards_manifest_sha256": sha256_file(manifest) if manifest.is_file() else None,
    }
    save_weights(model, out_path, info)
    print(f"train-classifier: wrote {out_path} and {out_path.with_suffix('.json')}", flush=True)
    return test_accuracy
