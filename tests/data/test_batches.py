"""make_batch_source: the stream and memory sources give float32 [-1, 1] batches on the device, equal batch
counts per rank, exact resume; memory refuses data over data.memory_max_mb."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gan_dist.config import DataConfig
from gan_dist.data.batches import (
    MemoryBatches,
    StreamBatches,
    _epoch_seed,
    make_batch_source,
    resolve_loader,
    subset_indices,
)
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.loader import train_batches
from gan_dist.data.sources import DataError
from tests.data.synthetic import sample_indices

BATCH = 16


def tiny(shards, **overrides):
    data = DataConfig(root=str(shards), num_workers=0, shuffle_buffer=64, auto_prepare=False, samples_per_shard=50,
                      **overrides)
    return resolve_dataset(data, prepare=False), data


def source(shards, rank=0, world_size=1, start_batch=0, loader="stream", **overrides):
    """The batch source of one rank, started after `start_batch` global batches (start_sample in samples)."""
    dataset, data = tiny(shards, loader=loader, **overrides)
    return make_batch_source(dataset, data, BATCH, seed=5, rank=rank, world_size=world_size,
                             start_sample=start_batch * BATCH * world_size, device="cpu")


def test_the_stream_source_scales_the_training_stream_on_the_device(tiny_shards):
    batches = source(tiny_shards)
    assert isinstance(batches, StreamBatches) and batches.batches_per_epoch == 19
    dataset, data = tiny(tiny_shards)
    raw = train_batches(dataset, data, BATCH, 5, 0, 1)
    for _ in range(3):
        (x, y), (u8, labels) = next(batches), next(raw)
        assert x.dtype == torch.float32 and x.shape == (BATCH, 1, 28, 28)
        assert torch.equal(x, u8.float() / 127.5 - 1) and torch.equal(y, labels)
    batches.close()
    last = make_batch_source(dataset, data, BATCH, seed=5, rank=0, world_size=1, start_sample=0, device="cpu",
                             channels_last=True)
    assert next(last)[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_the_memory_source_uses_each_sample_once_per_epoch_across_ranks_and_resumes_exactly(
        tiny_shards, synthetic_mnist, world_size):
    """300 samples, B=16: global batches of 16 x W; epoch e = positions [300e, 300(e+1)) of the stream,
    each a permutation (a global batch may straddle two epochs). Pixels equal the source arrays'."""
    images_u8, labels_all = synthetic_mnist.split("train")
    num_batches = 3 * 300 // (BATCH * world_size) + 1  # a bit over 3 epochs per rank
    per_rank = []
    for rank in range(world_size):
        batches = source(tiny_shards, rank, world_size, loader="memory")
        assert isinstance(batches, MemoryBatches)
        assert batches.images.dtype == torch.uint8 and batches.images.shape == (300, 1, 28, 28)
        taken = [next(batches) for _ in range(num_batches)]
        for x, y in taken:
            index = sample_indices(x)
            assert x.dtype == torch.float32 and torch.equal(x[:, 0], torch.from_numpy(images_u8[index]) / 127.5 - 1)
            assert torch.equal(y, torch.from_numpy(labels_all[index]))
        per_rank.append([sample_indices(x) for x, _ in taken])
        resumed = source(tiny_shards, rank, world_size, start_batch=5, loader="memory")
        assert [sample_indices(next(resumed)[0]) for _ in range(4)] == per_rank[-1][5:9]
    # Interleave the ranks' batches back into the global stream of positions.
    stream = [i for batch in range(num_batches) for rank in range(world_size) for i in per_rank[rank][batch]]
    for epoch in range(3):
        assert sorted(stream[300 * epoch:300 * (epoch + 1)]) == list(range(300)), f"epoch {epoch}"
    assert stream[:300] != stream[300:600]  # reshuffled per epoch
    # Resumed on another number of processes, the global stream goes on at the same sample (elastic resume).
    for start in (3, 7):
        other = world_size % 2 + 1  # 1 <-> 2
        resumed_batches = [source(tiny_shards, rank, other, loader="memory") for rank in range(other)]
        for batches in resumed_batches:
            batches.position = start * BATCH * world_size
        continued = [i for _ in range(2) for batches in resumed_batches for i in sample_indices(next(batches)[0])]
        assert continued == stream[start * BATCH * world_size:(start * world_size + 2 * other) * BATCH]


def test_the_memory_permutation_is_drawn_on_the_cpu(tiny_shards):
    """The same order whatever the device (randperm on a GPU depends on its SM count above ~270k samples)."""
    batches = source(tiny_shards, loader="memory")
    for epoch in range(2):
        reference = torch.randperm(300, generator=torch.Generator().manual_seed(_epoch_seed(5, epoch)))
        assert torch.equal(batches.permutation(epoch).cpu(), reference)


def test_the_memory_source_refuses_data_over_its_limit(tiny_shards):
    dataset, data = tiny(tiny_shards, loader="memory", memory_max_mb=1)
    big = dataclasses.replace(dataset, train_size=2_000)  # 2,000 x 784 bytes: 1.5 MiB
    with pytest.raises(DataError, match=r"takes 1.5 MiB as uint8, over data.memory_max_mb=1; raise it or use "
                                        "data.loader=stream"):
        make_batch_source(big, data, BATCH, seed=0, rank=0, world_size=1, start_sample=0, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pinned memory, device batches)")
@pytest.mark.parametrize("loader", ["stream", "memory"])
def test_cuda_batches_are_pinned_on_the_host_and_equal_the_cpu_ones(tiny_shards, loader):
    dataset, data = tiny(tiny_shards, loader=loader)
    if loader == "stream":
        images, labels = next(train_batches(dataset, data, BATCH, 5, 0, 1, pin_memory=True))
        assert images.is_pinned() and labels.is_pinned() and images.dtype == torch.uint8
    on_cpu, on_gpu = (make_batch_source(dataset, data, BATCH, seed=5, rank=0, world_size=1, start_sample=3 * BATCH,
                                        device=device) for device in ("cpu", "cuda"))
    for _ in range(3):
        (x, y), (x_gpu, y_gpu) = next(on_cpu), next(on_gpu)
        assert x_gpu.device.type == "cuda" and y_gpu.device.type == "cuda"
        assert torch.equal(x_gpu.cpu(), x) and torch.equal(y_gpu.cpu(), y)


def test_the_memory_source_names_a_corrupt_shard(tiny_shards_copy):
    from gan_dist.data.shards import ShardError

    victim = sorted(tiny_shards_copy.glob("mnist-train-*.tar"))[2]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ShardError, match=victim.name):
        source(tiny_shards_copy, loader="memory")


def test_memory_batches_equal_the_stream_decode_pixel_for_pixel(tiny_shards):
    """The same sample (by key) from the memory source and from the shards' own decode: identical floats."""
    from gan_dist.data.loader import eval_batches

    memory = source(tiny_shards, loader="memory")
    dataset, _ = tiny(tiny_shards)
    decoded = {}
    for images, _labels, keys in eval_batches(dataset.train_urls, 64, 0, 1, with_keys=True,
                                              image_shape=dataset.image_shape):
        decoded.update({key: image for key, image in zip(keys, images, strict=True)})
    for _ in range(3):
        index = memory.indices(memory.position)
        images, _ = next(memory)
        for i, image in zip(index.tolist(), images, strict=True):
            assert torch.equal(image, decoded[f"train-{i:06d}"]), i


# -- data.train_subset -----------------------------------------------------------------------------------

def test_subset_indices_are_class_balanced_deterministic_and_seeded():
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 40, 30, 20, 10, 60, 70, 5, 90, 100]))  # (475,)
    chosen = subset_indices(labels, 103, 10, seed=3)
    assert len(chosen) == 103 and len(set(chosen.tolist())) == 103 and torch.equal(chosen, chosen.sort().values)
    counts = torch.bincount(labels[chosen], minlength=10).tolist()
    # 103 = 10 x 10 + 3, and class 7 has only 5: its shortfall and the remainder spread over the other nine.
    assert counts[7] == 5 and sorted(c for i, c in enumerate(counts) if i != 7) == [10] * 1 + [11] * 8, counts
    assert torch.equal(subset_indices(labels, 103, 10, seed=3), chosen)  # the seed alone decides
    assert not torch.equal(subset_indices(labels, 103, 10, seed=4), chosen)
    whole = subset_indices(labels, 475, 10, seed=3)
    assert torch.equal(whole, torch.arange(475))  # all of it: every sample, once
    unlabeled = subset_indices(torch.zeros(475, dtype=torch.long), 40, 0, seed=3)
    assert len(set(unlabeled.tolist())) == 40 and unlabeled.max() < 475
    for size in (0, 476):
        with pytest.raises(DataError, match=rf"data.train_subset={size}: must be in \[1, 475\]"):
            subset_indices(labels, size, 10, seed=3)


def test_the_memory_source_trains_on_the_subset_only_each_image_once_per_epoch(tiny_shards, synthetic_mnist):
    """30 of the 300 synthetic images (3 per class): the batches hold exactly those pixels, each once per epoch
    of 30, for every rank; the draw is recorded (class counts, index digest)."""
    images_u8, labels_all = synthetic_mnist.split("train")
    dataset, data = tiny(tiny_shards, loader="auto", train_subset=30)
    assert resolve_loader(dataset, data) == "memory"
    expected = subset_indices(torch.from_numpy(labels_all).long(), 30, 10, seed=5).tolist()
    streams = []
    for rank in range(2):
        batches = make_batch_source(dataset, data, 5, seed=5, rank=rank, world_size=2, start_sample=0, device="cpu")
        assert isinstance(batches, MemoryBatches) and batches.num_samples == 30
        assert batches.subset["images"] == 30 and batches.subset["split_images"] == 300
        assert batches.subset["class_counts"] == [3] * 10
        taken = [next(batches) for _ in range(6)]  # 6 global batches of 10: two epochs
        for x, y in taken:
            index = sample_indices(x)
            assert torch.equal(x[:, 0], torch.from_numpy(images_u8[index]) / 127.5 - 1)
            assert torch.equal(y, torch.from_numpy(labels_all[index]))
        streams.append([sample_indices(x) for x, _ in taken])
    stream = [i for batch in range(6) for rank in range(2) for i in streams[rank][batch]]
    assert sorted(stream[:30]) == expected and sorted(stream[30:]) == expected
