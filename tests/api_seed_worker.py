"""One of N processes (torchrun, gloo) sampling its contiguous share of the seeds with the API; rank 0 gathers
the shares and writes them in the order asked.

    python -m torch.distributed.run --nproc_per_node 2 tests/api_seed_worker.py GENERATOR_DIR 3,1,4 OUT.npz
"""

from __future__ import annotations

import sys

import numpy as np
import torch.distributed as dist

from gan_dist.api import load_generator
from gan_dist.sampling import parse_seeds


def main(folder: str, seeds_text: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    seeds = parse_seeds(seeds_text)
    share = -(-len(seeds) // world)
    mine = seeds[rank * share:(rank + 1) * share]
    G = load_generator(folder)
    images = G.sample(seed=mine).numpy() if mine else None
    shares: list = [None] * world
    dist.all_gather_object(shares, images)
    if rank == 0:
        np.savez(out, images=np.concatenate([s for s in shares if s is not None]))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
