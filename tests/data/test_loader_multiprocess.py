"""The loader in 2 real processes (torchrun, gloo on 127.0.0.1): equal batch counts per epoch, different
streams per rank, an exact eval pass across ranks. No mocks."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from gan_dist.config import DataConfig
from gan_dist.data.datasets import resolve_dataset
from gan_dist.data.loader import epoch_batches
from tests.data import loader_worker
from tests.data.synthetic import sample_indices
from tests.distributed import REPO_ROOT, run_processes


def test_two_ranks_get_equal_epochs_different_streams_and_an_exact_eval(tiny_shards, tmp_path):
    out = tmp_path / "ranks.json"
    run_processes(Path(loader_worker.__file__), 2, [str(tiny_shards), str(out)],
                  env={"PYTHONPATH": str(REPO_ROOT)})
    rank_0, rank_1 = json.loads(out.read_text())
    assert (rank_0["rank"], rank_1["rank"], rank_0["world_size"]) == (0, 1, 2)
    assert rank_0["counts"] == rank_1["counts"] == [10, 10]  # ceil(300 / (16 * 2)) per epoch, per rank
    assert all(a != b for a, b in zip(rank_0["train_indices"], rank_1["train_indices"], strict=True))
    assert collections.Counter(rank_0["eval_keys"] + rank_1["eval_keys"]) == {f"test-{i:06d}": 1 for i in range(100)}
    assert rank_0["eval_keys"] == [f"test-{i:06d}" for i in range(50)]  # 2 shards, 2 ranks: a shard each
    # The stream is a function of (seed, rank, world_size, ...), not of the process it runs in.
    data = DataConfig(root=str(tiny_shards), num_workers=1, shuffle_buffer=64, auto_prepare=False)
    here = [sample_indices(x) for x, _ in epoch_batches(resolve_dataset(data), data, loader_worker.BATCH,
                                                        loader_worker.SEED, rank=1, world_size=2, epoch=1)]
    assert here == rank_1["train_indices"][10:]
