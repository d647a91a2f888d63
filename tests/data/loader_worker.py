"""One rank of the data loader under a real gloo process group; run by torchrun from
test_loader_multiprocess.py. Usage: loader_worker.py SHARD_DIR OUT_JSON"""

from __future__ import annotations

import datetime
import json
import sys

import torch
import torch.distributed as dist

from gan_dist.config import DataConfig
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.loader import epoch_batches, split_batches
from tests.data.synthetic import sample_indices

BATCH = 16
SEED = 11


def main(shard_dir: str, out_json: str) -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world_size = dist.get_rank(), dist.get_world_size()
    data = DataConfig(root=shard_dir, num_workers=1, shuffle_buffer=64, auto_prepare=False)
    dataset = resolve_dataset(data)
    counts, indices = [], []
    for epoch in range(2):
        count = 0
        for images, _labels in epoch_batches(dataset, data, BATCH, SEED, rank, world_size, epoch):
            step = torch.ones(1)
            dist.all_reduce(step)  # a collective per batch, as DDP's gradient all-reduce: unequal counts hang
            assert step.item() == world_size
            indices.append(sample_indices(images))
            count += 1
        counts.append(count)
    keys = [key for _, _, batch in split_batches(dataset, "test", 32, rank, world_size, with_keys=True)
            for key in batch]
    gathered: list[dict | None] = [None] * world_size
    dist.all_gather_object(gathered, {"rank": rank, "world_size": world_size, "counts": counts,
                                      "train_indices": indices, "eval_keys": keys})
    if rank == 0:
        with open(out_json, "w") as stream:
            json.dump(gathered, stream)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
