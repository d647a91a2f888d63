"""What the trainer consumes each micro-step: (real float32 (B, C, H, W) in [-1, 1], labels int64 (B,)) on
its device. `make_batch_source` picks the implementation from data.loader:

  stream  the WebDataset training stream (gan_dist.data.loader.train_batches): uint8 batches from the
          DataLoader workers, page-locked when the device is CUDA, copied with non_blocking=True and
          scaled on the device. Any dataset size, any URL.
  memory  the train split read once through the same verified reader (eval_batches, every sample exactly
          once) and kept on the device as uint8 (N, C, H, W); each batch is a gather by indices. No
          workers, no host-device copies per step. Refused above data.memory_max_mb MiB per process.

Both yield batches forever, all of size B on every rank (DDP needs equal counts), and resume from the
number of samples the run has consumed across ranks (`start_sample`, the run's images_seen).

The memory source's order: one global stream of sample positions in which epoch e is a permutation of the
N samples drawn from (seed, e), the same on every rank; each global batch covers the next B * W positions
and rank r takes its r-th slice of B. With data.train_subset=N the source holds only N samples of the split
(`subset_indices`: class-balanced when labeled, drawn from the run seed) and the same rule applies to them.
So each sample is used exactly once per epoch across all ranks (a global batch may straddle two epochs; nothing is dropped or repeated), and the order is a function of the
position alone: a run resumed on another number of processes continues at the same sample.
"""

from __future__ import annotations

import hashlib
import math
import os
import traceback
from typing import Any

import torch
from torch import Tensor

from gan_dist.config import DataConfig
from gan_dist.data.datasets import ResolvedDataset
from gan_dist.data.loader import (
    LoaderStats,
    eval_batches,
    expand_urls,
    ignore_stop_signals,
    reraise_data_error,
    steps_per_epoch,
    to_unit_range,
    train_batches,
)
from gan_dist.data.sources import DataError

MEMORY_READ_BATCH = 1000  # samples per read while filling the memory source


def _to_device(images: Tensor, labels: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    """uint8 (B, C, H, W) on any device -> float32 in [-1, 1] on `device` (copies are asynchronous from
    page-locked memory)."""
    images = to_unit_range(images.to(device, non_blocking=True))  # (B, C, H, W) float32
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


class StreamBatches:
    """data.loader=stream: see the module docstring."""

    def __init__(self, dataset: ResolvedDataset, data: DataConfig, batch_size: int, *, seed: int, rank: int,
                 world_size: int, start_sample: int, device: torch.device, channels_last: bool = False) -> None:
        self.device, self.channels_last = torch.device(device), channels_last
        # The stream resumes at the global batch the samples consumed fill (resampled shards: an approximate
        # position when the process count changed, see gan_dist.data.loader).
        start_batch = start_sample // (batch_size * world_size)
        self._stream = train_batches(dataset, data, batch_size, seed, rank, world_size, start_batch,
                                     pin_memory=self.device.type == "cuda")
        self.batches_per_epoch = self._stream.steps_per_epoch
        self.stats = self._stream.stats
        self.subset: dict[str, Any] | None = None  # data.train_subset needs the memory source

    def __iter__(self) -> StreamBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        images, labels = next(self._stream)  # (B, C, H, W) uint8, (B,) int64 on the host
        return _to_device(images, labels, self.device, self.channels_last)

    def close(self) -> None:
        self._stream.close()


class _Shards(torch.utils.data.Dataset):
    """Shard i of a split, read whole through the verified reader: (images uint8 (n, C, H, W), labels (n,),
    (skipped shards, skipped samples))."""

    def __init__(self, dataset: ResolvedDataset, urls: list[str]) -> None:
        self.dataset, self.urls = dataset, urls

    def __len__(self) -> int:
        return len(self.urls)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
        dataset = self.dataset
        reader = eval_batches(self.urls[index], MEMORY_READ_BATCH, 0, 1, dataset.on_corrupt, as_uint8=True,
                              image_shape=dataset.image_shape, num_classes=dataset.num_classes,
                              read_timeout_s=dataset.read_timeout_s)
        parts = list(reader)
        channels, height, width = dataset.image_shape
        images = torch.cat([p[0] for p in parts]) if parts else torch.empty(0, channels, height, width, dtype=torch.uint8)
        labels = torch.cat([p[1] for p in parts]) if parts else torch.empty(0, dtype=torch.int64)
        return images, labels, (reader.stats.skipped_shards, reader.stats.skipped_samples)


def read_split(dataset: ResolvedDataset, split: str, stats: LoaderStats | None = None,
               max_workers: int = 8) -> tuple[Tensor, Tensor]:
    """All of a split as (images uint8 (N, C, H, W), labels int64 (N,)) in shard order, through the verified
    reader (corruption rules as in training), its shards decoded in parallel by up to max_workers processes
    (one per CPU core; MNIST's 12 train shards take ~10 s on one core, ~5 s on two)."""
    urls = expand_urls({"train": dataset.train_urls, "test": dataset.test_urls}[split])
    workers = min(len(urls), os.cpu_count() or 1, max_workers)
    # Own generator: a DataLoader otherwise draws its base seed from the global torch RNG, which would shift
    # the training RNG (dropout) of a resumed run and break exact resume.
    loader = torch.utils.data.DataLoader(_Shards(dataset, urls), batch_size=None, num_workers=workers if workers > 1 else 0,
                                         worker_init_fn=ignore_stop_signals if workers > 1 else None,
                                         generator=torch.Generator().manual_seed(0))
    images, labels = [], []
    try:
        for shard_images, shard_labels, (skipped_shards, skipped_samples) in loader:
            images.append(shard_images)
            labels.append(shard_labels)
            if stats is not None:
                stats.skipped_shards += skipped_shards
                stats.skipped_samples += skipped_samples
    except Exception as error:
        # The error's traceback holds the DataLoader iterator (and its live workers) through this frame;
        # clearing the frames lets the workers stop now instead of at interpreter exit.
        traceback.clear_frames(error.__traceback__)
        reraise_data_error(error)
        raise
    if not any(len(part) for part in labels):
        raise DataError(f"no sample of the {split} split could be read from {urls[0]} ...")
    return torch.cat(images), torch.cat(labels)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(("memory", seed, epoch)).encode()).digest()[:8], "big") >> 1


def _subset_seed(seed: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(("train_subset", seed)).encode()).digest()[:8], "big") >> 1


def subset_indices(labels: Tensor, size: int, num_classes: int, seed: int) -> Tensor:
    """Indices (size,), ascending, of `size` samples of a split whose labels are `labels` (N,), drawn on the CPU
    from `seed` alone (the same on every rank and every start).

    Labeled (num_classes > 0): class-balanced. Each class gets size // num_classes; the remainder goes one each
    to classes drawn at random; a class with fewer samples than its share gives all it has and the shortfall
    is spread over the others the same way. Within a class the samples are a uniform draw. Unlabeled: a
    uniform draw of `size` of the N samples."""
    labels = labels.cpu()
    num_samples = len(labels)
    if not 0 < size <= num_samples:
        raise DataError(f"data.train_subset={size}: must be in [1, {num_samples}] (the train split's size)")
    generator = torch.Generator().manual_seed(_subset_seed(seed))
    if num_classes == 0:
        return torch.randperm(num_samples, generator=generator)[:size].sort().values
    members = [torch.nonzero(labels == label).flatten() for label in range(num_classes)]
    available = [len(m) for m in members]
    quota = [0] * num_classes
    remaining = size
    while remaining:
        # Water-filling: every class that still has samples gets the same share (all of them, equal quotas so
        # far); once the share rounds to 0, the last few go one each to classes drawn at random.
        open_classes = [c for c in range(num_classes) if quota[c] < available[c]]
        share = remaining // len(open_classes)
        if share == 0:
            order = torch.randperm(len(open_classes), generator=generator)[:remaining].tolist()
            for position in order:
                quota[open_classes[position]] += 1
            break
        for label in open_classes:
            take = min(share, available[label] - quota[label])
            quota[label] += take
            remaining -= take
    chosen = [m[torch.randperm(len(m), generator=generator)[:q]] for m, q in zip(members, quota, strict=True)]
    return torch.cat(chosen).sort().values


class MemoryBatches:
    """data.loader=memory: see the module docstring. Attributes: images (N, C, H, W) uint8 and labels (N,)
    int64 on the device."""

    def __init__(self, dataset: ResolvedDataset, data: DataConfig, batch_size: int, *, seed: int, rank: int,
                 world_size: int, start_sample: int, device: torch.device, channels_last: bool = False) -> None:
        if batch_size <= 0 or not 0 <= rank < world_size or start_sample < 0:
            raise ValueError(f"need batch_size > 0, 0 <= rank < world_size, start_sample >= 0; got {batch_size}, "
                             f"{rank}, {world_size}, {start_sample}")
        size_mb = training_images(dataset, data) * math.prod(dataset.image_shape) / 2**20
        if size_mb > data.memory_max_mb:
            raise DataError(f"data.loader=memory: the train split of {dataset.describe()} takes {size_mb:,.1f} MiB "
                            f"as uint8, over data.memory_max_mb={data.memory_max_mb}; raise it or use "
                            "data.loader=stream")
        self.device, self.channels_last = torch.device(device), channels_last
        self.seed, self.rank, self.world_size, self.batch_size = seed, rank, world_size, batch_size
        self.stats = LoaderStats()
        images, labels = read_split(dataset, "train", self.stats)
        self.subset: dict[str, Any] | None = None
        if data.train_subset:
            chosen = subset_indices(labels, data.train_subset, dataset.num_classes, seed)  # (N,)
            images, labels = images[chosen], labels[chosen]
            self.subset = {"images": len(chosen), "split_images": dataset.train_size,
                           "class_counts": torch.bincount(labels, minlength=dataset.num_classes).tolist()
                           if dataset.num_classes else None,
                           "indices_sha256": hashlib.sha256(chosen.numpy().astype("<i8").tobytes()).hexdigest()}
        self.images = images.to(self.device)  # (N, C, H, W) uint8
        self.labels = labels.to(self.device)  # (N,) int64
        self.num_samples = len(self.labels)
        # Informational (epochs are counted in images): global batches straddle epoch boundaries.
        self.batches_per_epoch = steps_per_epoch(self.num_samples, batch_size, world_size)
        self.position = start_sample  # global position of the next global batch (the same on every rank)
        self._permutations: dict[int, Tensor] = {}

    def permutation(self, epoch: int) -> Tensor:
        """Epoch `epoch`'s order of the N samples (N,), on the device: drawn on the CPU from (seed, epoch) and
        copied once per epoch. Drawn on a GPU it could differ between GPU models (randperm's kernel grid
        depends on the SM count above ~270k samples): ranks on mixed hardware or MIG slices would then skip or
        repeat samples. The two latest epochs are kept."""
        permutation = self._permutations.get(epoch)
        if permutation is None:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            permutation = torch.randperm(self.num_samples, generator=generator).to(self.device)
            self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
            self._permutations[epoch] = permutation
        return permutation

    def indices(self, global_position: int) -> Tensor:
        """Sample indices (B,) of this rank's part of the global batch at `global_position`: positions
        [global_position + rank * B, ... + B) of the epoch-after-epoch stream (Python ints, no host sync)."""
        position = global_position + self.rank * self.batch_size
        epoch, offset = divmod(position, self.num_samples)
        parts, remaining = [], self.batch_size
        while remaining:
            take = min(remaining, self.num_samples - offset)
            parts.append(self.permutation(epoch)[offset:offset + take])
            remaining -= take
            epoch, offset = epoch + 1, 0
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __iter__(self) -> MemoryBatches:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        index = self.indices(self.position)  # (B,)
        self.position += self.batch_size * self.world_size
        images = to_unit_range(self.images.index_select(0, index))  # (B, C, H, W) float32 in [-1, 1]
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, self.labels.index_select(0, index)

    def close(self) -> None:
        pass


def training_images(dataset: ResolvedDataset, data: DataConfig) -> int:
    """Images the run trains on: data.train_subset, else the whole train split."""
    return data.train_subset or dataset.train_size


def resolve_loader(dataset: ResolvedDataset, data: DataConfig) -> str:
    """data.loader, with auto resolved: memory when the training images' uint8 copy fits in
    data.memory_max_mb (always with data.train_subset, which needs it)."""
    if data.loader != "auto":
        return data.loader
    fits = training_images(dataset, data) * math.prod(dataset.image_shape) / 2**20 <= data.memory_max_mb
    return "memory" if fits or data.train_subset else "stream"


def make_batch_source(dataset: ResolvedDataset, data: DataConfig, batch_size: int, *, seed: int, rank: int,
                      world_size: int, start_sample: int, device: torch.device | str,
                      channels_last: bool = False) -> StreamBatches | MemoryBatches:
    """The batch source data.loader selects (stream | memory); see the module docstring."""
    source = {"stream": StreamBatches, "memory": MemoryBatches}.get(resolve_loader(dataset, data))
    if source is None:
        raise DataError(f"data.loader must be stream or memory, got {data.loader!r}")
    return source(dataset, data, batch_size, seed=seed, rank=rank, world_size=world_size, start_sample=start_sample,
                  device=torch.device(device), channels_last=channels_last)
