"""Worker for tests/models/test_spectral_norm.py: a spectrally normalized D under DDP (gloo), torchrun.

Every rank seeds identically before building D (as the trainer does), then trains it on its own data
for a few hinge steps with two forwards (real, fake) before each backward, once with DDP's
broadcast_buffers=True and once with False. After each step it checks that every parameter and every
power-iteration vector (u, v) is identical on all ranks. A control run seeds each rank differently: DDP
copies rank 0's parameters at wrap time but, with broadcast_buffers=False, not the u, v buffers, which then
differ. Rank 0 writes the results as JSON.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from gan_dist.cli import end_process
from gan_dist.config import ModelConfig
from gan_dist.models.build import build_discriminator

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
BATCH = 4
STEPS = 3


def synced_state(d: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and spectral-norm vectors: what must agree across ranks (BN running statistics are
    per rank when buffers are not broadcast)."""
    state = dict(d.named_parameters())
    state |= {name: b for name, b in d.named_buffers() if name.endswith(("._u", "._v"))}
    return state


def identical_on_all_ranks(state: dict[str, torch.Tensor]) -> bool:
    flat = torch.cat([t.detach().flatten() for t in state.values()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def train(broadcast_buffers: bool, rank: int, seed: int) -> dict:
    torch.manual_seed(seed)  # the same seed on every rank: identical init, u and v included
    d = build_discriminator(ModelConfig(name="keras_dcgan", d_width=4, d_dropout=0.0, spectral_norm=True,
                                        conditioning="projection"), IMAGE_SHAPE, NUM_CLASSES)
    initial_u = d.conv1.parametrizations.weight[0]._u.clone()
    ddp = DistributedDataParallel(d, broadcast_buffers=broadcast_buffers)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3, betas=(0.0, 0.9))
    identical = [identical_on_all_ranks(synced_state(d))]
    for step in range(STEPS):
        data = torch.Generator().manual_seed(1000 * step + rank)  # each rank its own batch
        real = torch.rand(BATCH, *IMAGE_SHAPE, generator=data) * 2 - 1
        fake = torch.rand(BATCH, *IMAGE_SHAPE, generator=data) * 2 - 1
        labels = torch.randint(NUM_CLASSES, (BATCH,), generator=data)
        optimizer.zero_grad()
        loss = F.relu(1 - ddp(real, labels)).mean() + F.relu(1 + ddp(fake, labels)).mean()  # hinge
        loss.backward()
        optimizer.step()
        identical.append(identical_on_all_ranks(synced_state(d)))
    return {"identical": identical,
            "u_moved": not torch.equal(initial_u, d.conv1.parametrizations.weight[0]._u)}


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {"broadcast": train(True, rank, seed=0), "no_broadcast": train(False, rank, seed=0),
               "no_broadcast_seed_per_rank": train(False, rank, seed=rank)}
    results["world_size"] = dist.get_world_size()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    end_process(0)  # as `gan-dist` ends a rank (no interpreter teardown with DDP's gloo threads alive)
