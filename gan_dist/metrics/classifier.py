"""The feature network: a small LeNet-like CNN whose penultimate layer is the metrics' feature space.

The standard Inception FID needs weights from the internet and is a poor judge of 28x28 digits; the
usual practice for small-image GANs is a classifier trained on the dataset itself. This module holds the
network (`FeatureNet`, any (C, H, W) and class count) and its training; `gan_dist.metrics.features` loads
the weights (sha256-checked). The feature space is the 128 ReLU units of fc1.

Packaged weights, reproduced with OMP_NUM_THREADS=1 (`gan-dist train-classifier` reads the shards
through the data API, trains with a fixed seed, and writes the .safetensors plus a .json record: sha256,
architecture, test accuracy, the command):

    gan-dist train-classifier --epochs 5 --seed 0
        mnist_lenet.safetensors: 99.27% test accuracy, 8 minutes on one CPU core shared with other jobs
    gan-dist train-classifier --dataset fashion_mnist --epochs 5 --seed 0
        fashion_mnist_lenet.safetensors: 92.05% test accuracy, 4-5 minutes on one CPU core (two runs here,
        one from the IDX arrays and one through the shards, gave the same sha256)

For a labeled image folder (data.dataset=folder, data.source=folder:DIR) the same command trains one for
the user's data and writes it beside the shards (`feature_net.safetensors`), where evaluation finds it;
with --out elsewhere it prints the eval.feature_net=PATH to set. An unlabeled folder has nothing to learn
from: refused (evaluation then needs eval.feature_net). Bitwise equality of the weights across machines is
not promised (CPU kernels and thread counts change float summation order): expect small differences
elsewhere, and a new sha256 in the JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from gan_dist.config import DataConfig
from gan_dist.data.loader import split_batches
from gan_dist.data.sources import DataError
from gan_dist.files import sha256_file
from gan_dist.registry.datasets import dataset_spec

if TYPE_CHECKING:
    from gan_dist.data.datasets import ResolvedDataset

FEATURE_DIM = 128  # width of the penultimate layer: the feature space of FID, precision/recall, ...
NUM_CLASSES = 10  # MNIST's; other datasets pass their own
WIDTH = 32  # channels of the first conv (the second has twice as many)
POOLED_SIZE = 7  # side of the grid fc1 sees: what two 2x poolings leave of a 28x28 image
WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHTS_NAME = "mnist_lenet.safetensors"
FOLDER_WEIGHTS_NAME = "feature_net.safetensors"  # beside a folder dataset's shards (+ feature_net.json)


class FeatureNet(nn.Module):
    """conv5x5(w)-pool-conv5x5(2w)-pool-pool to 7x7-fc(feature_dim)-fc(K): a LeNet for any (C, H, W).

    Input (B, C, H, W) in [-1, 1] like G's output. The adaptive average pooling to 7x7 is the identity for
    28x28 inputs (two 2x poolings give 7x7 already), so the packaged MNIST weights load and compute
    exactly as before; other sizes (16, 32, 64, ...; at least 8) are pooled to the same 7x7 grid, so the
    parameter count depends only on (C, K, width, feature_dim), never on the image size.
    """

    def __init__(self, feature_dim: int = FEATURE_DIM, dropout: float = 0.25, *, in_channels: int = 1,
                 num_classes: int = NUM_CLASSES, width: int = WIDTH) -> None:
        super().__init__()
        # Created in this order for every configuration: the seeded initialization of the MNIST weights
        # (conv1, conv2, fc1, fc2) must not change.
        self.conv1 = nn.Conv2d(in_channels, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.fc1 = nn.Linear(2 * width * POOLED_SIZE * POOLED_SIZE, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.width = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate activations (after ReLU): (B, C, H, W) -> (B, feature_dim)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, w, H/2, W/2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 2w, H/4, W/4); 7x7 at 28x28
        if x.shape[-2:] != (POOLED_SIZE, POOLED_SIZE):
            x = F.adaptive_avg_pool2d(x, POOLED_SIZE)  # (B, 2w, 7, 7)
        return F.relu(self.fc1(x.flatten(1)))  # (B, feature_dim)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits from features: (B, feature_dim) -> (B, num_classes)."""
        return self.fc2(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits

    @torch.no_grad()
    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs in one pass (the metrics need features for FID & co and logits for IS & classes)."""
        f = self.features(x)
        return f, self.head(f)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 x / 127.5 - 1 (the loader's exact arithmetic); float images pass unchanged."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(127.5).sub_(1.0)
    return images


@torch.no_grad()
def accuracy(model: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy on (N, C, H, W) images: uint8 pixels or float32 in [-1, 1]."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(to_unit_range(images[start:start + batch_size]))
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(images), 1)


def train_classifier(train_images: torch.Tensor, train_labels: torch.Tensor, num_epochs: int = 5,
                     seed: int = 0, batch_size: int = 64, lr: float = 1e-3, log: bool = True, *,
                     num_classes: int = NUM_CLASSES, width: int = WIDTH) -> FeatureNet:
    """Adam with a cosine learning-rate decay over `num_epochs`, shuffling with a seeded generator.

    train_images: (N, C, H, W) uint8 pixels or float32 in [-1, 1]; train_labels: (N,) int64 in
    [0, num_classes). Deterministic for a given seed, torch version and thread count.
    """
    torch.manual_seed(seed)  # init and dropout
    order_rng = torch.Generator().manual_seed(seed)
    model = FeatureNet(in_channels=train_images.shape[1], num_classes=num_classes, width=width)
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
            loss = F.cross_entropy(model(to_unit_range(train_images[index])), train_labels[index])
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


def load_split(dataset: ResolvedDataset, split: str, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split (train | test) in memory, in the shards' order: uint8 (N, C, H, W) pixels (1 byte per
    pixel; `to_unit_range` gives the loader's float32 values bitwise) and (N,) int64 labels."""
    images, labels = [], []
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = split_batches(dataset, split, batch_size, as_uint8=True)
    for batch_images, batch_labels in batches:
        images.append(batch_images)  # (b, C, H, W) uint8
        labels.append(batch_labels)
    if not images:
        raise DataError(f"no images in the {split} split of {dataset.describe()}")
    return torch.cat(images), torch.cat(labels)


def default_weights_path(dataset: ResolvedDataset) -> Path | None:
    """Where the dataset's feature network lives when eval.feature_net is "": the packaged file named by
    its spec (mnist, fashion_mnist), else the file `gan-dist train-classifier` writes beside the
    dataset's shards (folder datasets); None when neither applies (remote shards without a spec file)."""
    if dataset.spec.feature_net:
        return WEIGHTS_DIR / dataset.spec.feature_net
    if dataset.directory is not None:
        return Path(dataset.directory) / FOLDER_WEIGHTS_NAME
    return None


def save_weights(model: FeatureNet, out: str | Path, info: dict) -> Path:
    """Write the weights (safetensors) and, beside them, a JSON with their sha256, architecture and `info`."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out), metadata={"feature_dim": str(model.feature_dim)})
    record = {"file": out.name, "sha256": sha256_file(out), "feature_dim": model.feature_dim,
              "in_channels": model.in_channels, "num_classes": model.num_classes, "width": model.width, **info}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return out


def reproduce_command(data: DataConfig, num_epochs: int, seed: int) -> str:
    """The command line that trains these weights again (recorded in their JSON)."""
    parts = ["gan-dist train-classifier"]
    if data.dataset != DataConfig().dataset:  # the default dataset needs no flag (the packaged MNIST record's)
        parts.append(f"--dataset {data.dataset}")
    if dataset_spec(data.dataset).kind == "folder":
        parts.append(f"data.source={data.source}")
        parts += [f"data.{key}={getattr(data, key)}" for key in ("channels", "image_size") if getattr(data, key)]
    parts.append(f"--epochs {num_epochs} --seed {seed}")
    return " ".join(parts)
