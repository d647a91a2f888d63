"""Streaming loader on the tiny synthetic shards: exact uint8 pixels, reproducibility and resume, rank/worker
streams, exact eval coverage, http and pipe: urls, corrupt and truncated shards. (32x32x3 folder data:
tests/data/test_folder.py.)"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import random
import socket
import tarfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_dist.bench.data import bench_data
from gan_dist.config import DataConfig
from gan_dist.configure import load_config
from gan_dist.data import loader as loader_module
from gan_dist.data.datasets import ResolvedDataset, resolve_dataset
from gan_dist.data.loader import ShardError, epoch_batches, eval_batches, to_unit_range, train_batches
from gan_dist.data.shards import shard_urls
from gan_dist.registry.datasets import MNIST
from tests.data.synthetic import sample_indices

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)

BATCH = 16


def tiny_data(shards: Path, **overrides) -> DataConfig:
    return dataclasses.replace(DataConfig(root=str(shards), num_workers=0, shuffle_buffer=64, auto_prepare=False,
                                          samples_per_shard=50), **overrides)


def tiny(shards: Path, **overrides) -> tuple[ResolvedDataset, DataConfig]:
    """(resolved dataset, data config) of a tiny shard folder, read as it is (a damaged shard is the loader's
    to find)."""
    data = tiny_data(shards, **overrides)
    return resolve_dataset(data, prepare=False), data


def stream(shards: Path, seed: int = 0, rank: int = 0, world_size: int = 1, start_step: int = 0, urls: str = "",
           **overrides):
    dataset, data = tiny(shards, **overrides)
    if urls:
        dataset = dataclasses.replace(dataset, train_urls=urls)
    return train_batches(dataset, data, BATCH, seed, rank, world_size, start_step)


def take(stream, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(stream) for _ in range(count)]


def assert_same_batches(actual, expected) -> None:
    assert len(actual) == len(expected)
    for k, ((x, y), (want_x, want_y)) in enumerate(zip(actual, expected, strict=True)):
        assert torch.equal(x, want_x) and torch.equal(y, want_y), f"batch {k} differs"


def eval_keys(urls: str, rank: int, world_size: int, **kwargs) -> list[str]:
    return [key for _, _, keys in eval_batches(urls, 32, rank, world_size, with_keys=True, image_shape=MNIST_SHAPE, **kwargs) for key in keys]


def test_train_batches_are_exact_uint8_pixels_and_labels(tiny_shards, synthetic_mnist):
    batches = stream(tiny_shards)
    assert batches.steps_per_epoch == math.ceil(300 / BATCH) == 19
    images_u8, labels = synthetic_mnist.split("train")
    seen = []
    for x, y in take(batches, 19):
        assert x.shape == (BATCH, 1, 28, 28) and x.dtype == torch.uint8 and not x.is_pinned()
        assert y.shape == (BATCH,) and y.dtype == torch.int64
        index = sample_indices(x)
        assert torch.equal(x[:, 0], torch.from_numpy(images_u8[index]))
        assert torch.equal(y, torch.from_numpy(labels[index]))
        scaled = to_unit_range(x)  # what the consumer does on its device
        assert scaled.dtype == torch.float32 and torch.equal(scaled, x.float() / 127.5 - 1)
        seen += index
    assert len(set(seen)) > 150  # shuffled across shards, not one shard repeated
    assert batches.step == 19 and batches.stats.skipped_shards == batches.stats.skipped_samples == 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_stream_is_reproducible_and_start_step_resumes_exactly(tiny_shards, num_workers):
    steps = math.ceil(300 / (BATCH * 2))  # 10 per epoch for each of 2 ranks
    fresh = take(stream(tiny_shards, 3, 1, 2, num_workers=num_workers), 2 * steps + 3)
    assert_same_batches(take(stream(tiny_shards, 3, 1, 2, num_workers=num_workers), 2 * steps + 3), fresh)
    for start in (4, steps, steps + 7):  # mid-epoch, an epoch boundary, mid second epoch
        resumed = stream(tiny_shards, 3, 1, 2, start_step=start, num_workers=num_workers)
        assert_same_batches(take(resumed, 2 * steps + 3 - start), fresh[start:])
    epochs = [fresh[:steps], fresh[steps:2 * steps]]
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(*epochs, strict=True))  # each epoch reshuffled
    other_seed = take(stream(tiny_shards, 4, 1, 2, num_workers=num_workers), 3)
    assert not any(torch.equal(a[0], b[0]) for a, b in zip(other_seed, fresh, strict=False))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_stream_leaves_the_global_rngs_alone(tiny_shards, num_workers):
    """Epochs rebuild the DataLoader; drawing its seed from torch's global RNG would shift the training
    randomness (noise, dropout) differently in a resumed run than in an uninterrupted one."""
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    take(stream(tiny_shards, start_step=15, num_workers=num_workers), 10)  # crosses an epoch boundary (19 per epoch)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_resume_skips_batches_without_decoding_them(tiny_shards, monkeypatch):
    decoded = collections.Counter()
    real_decode = loader_module._ShardSamples.decode

    def counting_decode(self, sample):
        decoded["calls"] += 1
        return real_decode(self, sample)

    monkeypatch.setattr(loader_module._ShardSamples, "decode", counting_decode)
    fresh = take(stream(tiny_shards, 1), 10)
    fresh_calls, decoded["calls"] = decoded["calls"], 0
    resumed = take(stream(tiny_shards, 1, start_step=9), 1)
    assert_same_batches(resumed, fresh[9:])
    assert decoded["calls"] == fresh_calls - 9 * BATCH  # the 9 skipped batches were never decoded


def test_streams_differ_across_ranks_and_workers(tiny_shards):
    ranks = [take(stream(tiny_shards, 0, r, 2), 10) for r in range(2)]
    assert all(sample_indices(a[0]) != sample_indices(b[0]) for a, b in zip(*ranks, strict=True))
    # No shuffles: the training process gets whole in-pipeline batches from workers 0, 1, 0, 1, ...
    batches = take(stream(tiny_shards, num_workers=2, shuffle_buffer=0), 12)
    worker_0, worker_1 = batches[0::2], batches[1::2]
    assert all(sample_indices(a[0]) != sample_indices(b[0]) for a, b in zip(worker_0, worker_1, strict=True))
    for x, _ in batches:  # a whole shard's run of consecutive samples: not shuffled
        index = sample_indices(x)
        assert index == list(range(index[0], index[0] + BATCH)) or index[0] % 50 > 50 - BATCH


def test_epoch_batches_yields_exactly_one_epoch(tiny_shards):
    dataset, data = tiny(tiny_shards, num_workers=1)
    for world_size, batch in ((1, 16), (3, 16), (2, 7)):
        for rank in range(world_size):
            count = sum(1 for _ in epoch_batches(dataset, data, batch, seed=0, rank=rank, world_size=world_size,
                                                 epoch=0))
            assert count == math.ceil(300 / (batch * world_size))
    assert sum(1 for _ in epoch_batches(dataset, data, 16, 0, 0, 1, epoch=2, skip_batches=5)) == 19 - 5


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_eval_covers_every_test_sample_exactly_once(tiny_shards, synthetic_mnist, world_size):
    urls = shard_urls(tiny_shards, "test")  # 2 shards of 50
    images_u8, labels = synthetic_mnist.split("test")
    per_rank = []
    for rank in range(world_size):
        stream = eval_batches(urls, 32, rank, world_size, with_keys=True, image_shape=MNIST_SHAPE)
        keys = []
        for x, y, batch_keys in stream:
            index = [int(key.split("-")[1]) for key in batch_keys]
            assert sample_indices(x) == index
            assert torch.equal(x[:, 0], torch.from_numpy(images_u8[index]).float() / 127.5 - 1)
            assert torch.equal(y, torch.from_numpy(labels[index]))
            keys += batch_keys
        assert stream.num_samples == len(keys)
        per_rank.append(keys)
    assert collections.Counter(k for keys in per_rank for k in keys) == {f"test-{i:06d}": 1 for i in range(100)}
    if world_size == 2:  # whole shards per rank
        assert per_rank == [[f"test-{i:06d}" for i in range(50)], [f"test-{i:06d}" for i in range(50, 100)]]
    else:  # every world_size-th sample, in order
        assert per_rank == [[f"test-{i:06d}" for i in range(r, 100, world_size)] for r in range(world_size)]


def test_eval_batch_sizes_and_order(tiny_shards):
    batches = list(eval_batches(shard_urls(tiny_shards, "test"), 32, 0, 1, image_shape=MNIST_SHAPE))
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    assert sample_indices(torch.cat([x for x, _ in batches])) == list(range(100))


def test_shards_over_http_and_pipe_give_the_same_stream(tiny_shards, http_server):
    base = http_server(tiny_shards)
    local_test = shard_urls(tiny_shards, "test")
    http_train = f"{base}/mnist-train-{{000000..000005}}.tar"
    assert_same_batches(take(stream(tiny_shards, 2, urls=http_train, num_workers=1), 25),
                        take(stream(tiny_shards, 2, num_workers=1), 25))
    expected = eval_keys(local_test, 0, 1)
    assert eval_keys(f"{base}/mnist-test-{{000000..000001}}.tar", 0, 1) == expected
    assert eval_keys(f"pipe:cat {local_test}", 0, 1) == expected
    with pytest.raises(ShardError, match=rf"{base}/mnist-test-000009.tar"):
        eval_keys(f"{base}/mnist-test-000009.tar", 0, 1)  # 404


# --- corrupt and truncated shards ---------------------------------------------------------------


def member_offsets(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as archive:
        return archive.getmembers()


def damage(path: Path, how: str, sample: int = 8) -> None:
    """Damage shard `path` at its `sample`-th sample (members come in pairs: .cls, .png)."""
    members = member_offsets(path)
    data = bytearray(path.read_bytes())
    if how == "cut_between_members":  # what a copy killed on a 4 KiB page boundary leaves here
        del data[members[2 * sample].offset:]
    elif how == "cut_inside_member":
        del data[members[2 * sample + 1].offset_data + 100:]
    elif how == "bad_header":
        data[members[2 * sample].offset + 10] ^= 0x55
    elif how == "bad_png":
        data[members[2 * sample + 1].offset_data + 60] ^= 0x55
    elif how == "missing":
        path.unlink()
        return
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["cut_between_members", "cut_inside_member", "bad_header", "bad_png", "missing"])
def test_a_damaged_shard_raises_an_error_naming_it(tiny_shards_copy, how):
    shard = tiny_shards_copy / "mnist-test-000001.tar"
    damage(shard, how)
    with pytest.raises(ShardError, match=rf"shard {shard}\b") as raised:
        eval_keys(shard_urls(tiny_shards_copy, "test"), 0, 1)
    assert raised.value.url == str(shard)
    if how == "bad_png":
        assert "corrupt sample test-000058 in shard" in str(raised.value)


def test_training_workers_report_the_damaged_shard(tiny_shards_copy):
    shard = tiny_shards_copy / "mnist-train-000004.tar"
    damage(shard, "cut_between_members", sample=20)
    batches = stream(tiny_shards_copy, num_workers=1, shuffle_buffer=16)
    with pytest.raises(ShardError, match=rf"corrupt or truncated shard {shard}: ends at byte \d+ \(between members\)") \
            as raised:
        take(batches, 200)
    # One line, as the user sees it: torch re-raises a worker's error with the worker's traceback in the
    # message ("Caught ShardError in DataLoader worker process 0. Original Traceback ...").
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value), str(raised.value)


@contextlib.contextmanager
def silent_http_server() -> Iterator[str]:
    """An http "server" that accepts connections and never answers: base URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


@pytest.mark.parametrize("source", ["pipe", "http"])
def test_a_stalled_source_times_out_naming_the_shard(tiny_shards, source):
    """A `pipe:` command that hangs, or an http server that never answers, must fail after
    data.read_timeout_s, naming the shard, in eval passes and in training workers alike."""
    with contextlib.ExitStack() as stack:
        if source == "pipe":
            url = "pipe:sleep 600 # mnist-train-000000.tar"
        else:
            url = f"{stack.enter_context(silent_http_server())}/mnist-train-000000.tar"
        start = time.monotonic()
        with pytest.raises(ShardError, match=r"sent no data for 1 s: the source stalled \(raise data.read_timeout_s"):
            eval_keys(url, 0, 1, read_timeout_s=1.0)
        batches = stream(tiny_shards, urls=url, num_workers=1, read_timeout_s=1.0)
        with pytest.raises(ShardError, match=r"sent no data for 1 s") as raised:
            next(batches)
        batches.close()
        assert "\n" not in str(raised.value)
        assert time.monotonic() - start < 30  # two stalls of 1 s, plus start-up; not sleep's 600 s


def test_warn_mode_skips_and_counts_what_it_skipped(tiny_shards_copy):
    damage(tiny_shards_copy / "mnist-test-000001.tar", "cut_between_members", sample=8)
    damage(tiny_shards_copy / "mnist-test-000000.tar", "bad_png", sample=3)
    stream = eval_batches(shard_urls(tiny_shards_copy, "test"), 32, 0, 1, on_corrupt="warn", with_keys=True,
                          image_shape=MNIST_SHAPE)
    with pytest.warns(RuntimeWarning) as caught:
        keys = [key for _, _, batch_keys in stream for key in batch_keys]
    # shard 0 without its sample 3; shard 1's 8 samples before the cut, then the shard is given up
    assert keys == [f"test-{i:06d}" for i in range(58) if i != 3]
    assert (stream.stats.skipped_shards, stream.stats.skipped_samples) == (1, 1)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "corrupt sample test-000003 in shard" in messages[0] and "mnist-test-000000.tar" in messages[0]
    assert messages[1].startswith(f"skipping the rest of shard {tiny_shards_copy / 'mnist-test-000001.tar'}")


def test_warn_mode_counts_reach_the_training_process_from_workers(tiny_shards_copy):
    damage(tiny_shards_copy / "mnist-train-000002.tar", "bad_header", sample=10)
    counts = []
    for _ in range(2):
        batches = stream(tiny_shards_copy, num_workers=1, on_corrupt="warn", shuffle_buffer=16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _, y in take(batches, 60):
                assert int(y.min()) >= 0  # no placeholder or broken sample slipped through
        counts.append((batches.stats.skipped_shards, batches.stats.skipped_samples))
        batches.close()
    assert counts[0][0] >= 1 and counts[0][1] == 0
    assert counts[0] == counts[1]  # deterministic


def test_warn_mode_gives_up_when_no_shard_is_readable(tiny_shards_copy):
    for path in tiny_shards_copy.glob("mnist-train-*.tar"):
        damage(path, "bad_header", sample=0)
    batches = stream(tiny_shards_copy, on_corrupt="warn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ShardError, match="shard reads in a row failed"):
            next(batches)


def test_bench_data_measures_each_worker_count(tiny_shards, capsys):
    config = load_config(None, [f"data.root={tiny_shards}", "data.auto_prepare=false", "data.samples_per_shard=50",
                                "data.shuffle_buffer=64", "train.batch_size_per_process=16"])
    results = bench_data(config, num_batches=5, workers=[0, 1])
    assert [r["num_workers"] for r in results] == [0, 1]
    assert all(r["samples_per_s"] > 0 and r["num_batches"] == 5 and r["batch_size"] == 16 for r in results)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["num_workers=0", "num_workers=1"]
    assert np.isfinite([r["seconds"] for r in results]).all()
