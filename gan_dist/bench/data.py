"""Throughput of the training stream (samples/s) per DataLoader worker count: `gan-dist bench-data`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from gan_dist.config import Config
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.loader import train_batches


def bench_data(config: Config, num_batches: int, workers: list[int]) -> list[dict[str, Any]]:
    """Time num_batches batches of config.train.batch_size_per_process from one process's training
    stream (uint8, as the trainer gets it), for each worker count; prints one line each and returns them
    as dicts.

    The first batch (worker start-up, first shard, shuffle buffer warm-up) is timed separately.
    """
    if num_batches <= 0:
        raise ValueError(f"num_batches must be > 0, got {num_batches}")
    dataset = resolve_dataset(config.data)
    batch_size = config.train.batch_size_per_process
    results = []
    for num_workers in workers:
        data = dataclasses.replace(config.data, num_workers=num_workers)
        started = time.perf_counter()
        stream = train_batches(dataset, data, batch_size, seed=config.run.seed, rank=0, world_size=1)
        next(stream)
        first_batch_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(num_batches):
            next(stream)
        seconds = time.perf_counter() - started
        stream.close()
        result = {"num_workers": num_workers, "batch_size": batch_size, "num_batches": num_batches,
                  "seconds": seconds, "samples_per_s": num_batches * batch_size / seconds,
                  "first_batch_s": first_batch_s, "dataset": dataset.name}
        print(f"bench-data: num_workers={num_workers}: {result['samples_per_s']:,.0f} samples/s "
              f"({num_batches} batches of {batch_size} {dataset.describe()} in {seconds:.2f} s; first batch "
              f"after {first_batch_s:.2f} s)", flush=True)
        results.append(result)
    return results
