"""Worker for tests/train/test_ddp.py: run under torchrun with 1 or 2 processes.

Every process builds the same global batch for each step (real images, labels and every random draw of
the step from a per-step seed) and trains on its slice, so 2 processes x B see exactly the samples of
1 process x 2B. The draws reach the step through its noise seam (`GANStep.noise`), the batches through
its batch iterator: the Trainer's real step, DDP and objective run unchanged. Writes the final G and D
parameters (rank 0) and, per step, whether all ranks held identical parameters.
"""

import os
import sys

import torch

from gan_dist.cli import end_process
from gan_dist.configure import load_config
from gan_dist.train.trainer import Trainer


class SlicedNoise:
    """The step's draws, each the rank's slice of a global draw made identically on every rank."""

    def __init__(self, rng: torch.Generator, rank: int, world_size: int) -> None:
        self.rng, self.rank, self.world_size = rng, rank, world_size

    def _slice(self, global_draw: torch.Tensor) -> torch.Tensor:
        local = global_draw.shape[0] // self.world_size
        return global_draw[self.rank * local:(self.rank + 1) * local]

    def latent(self, batch_size: int, latent_dim: int) -> torch.Tensor:
        return self._slice(torch.randn(batch_size * self.world_size, latent_dim, generator=self.rng))

    def labels(self, batch_size: int, num_classes: int) -> torch.Tensor:
        return self._slice(torch.randint(num_classes, (batch_size * self.world_size,), generator=self.rng))

    def mix(self, batch_size: int) -> torch.Tensor:
        return self._slice(torch.rand(batch_size * self.world_size, generator=self.rng))


def main(out_path: str, model_name: str, global_batch: int, num_steps: int, *overrides: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_batch = global_batch // world_size
    config = load_config("configs/debug.yaml", [
        f"model.name={model_name}", f"train.batch_size_per_process={local_batch}",
        "log.tracker=none", "run.name=ddp", f"run.out_dir={out_path}.runs", "dist.cpu=true", *overrides])
    trainer = Trainer(config)
    rank = trainer.accelerator.process_index
    identical_after_step = []
    initial_G = {k: v.clone() for k, v in trainer.networks.G.state_dict().items()}
    shape = trainer.dataset.image_shape
    num_batches = config.train.d_steps_per_g * config.train.gradient_accumulation_steps
    for step in range(num_steps):
        rng = torch.Generator().manual_seed(1000 + step)
        batches = []
        for _ in range(num_batches):
            real = torch.rand(global_batch, *shape, generator=rng) * 2 - 1  # (2B, C, H, W)
            labels = torch.randint(10, (global_batch,), generator=rng)  # (2B,)
            part = slice(rank * local_batch, (rank + 1) * local_batch)
            batches.append((real[part], labels[part]))
        trainer.step.noise = SlicedNoise(rng, rank, world_size)
        trainer.step.run(iter(batches))
        params = torch.cat([p.detach().flatten() for m in (trainer.networks.G, trainer.networks.D) for p in m.parameters()])
        if world_size > 1:
            gathered = [torch.empty_like(params) for _ in range(world_size)]
            torch.distributed.all_gather(gathered, params)
            identical_after_step.append(all(torch.equal(gathered[0], g) for g in gathered[1:]))
        else:
            identical_after_step.append(True)
    # ADA's p (and its window) after the run: the same on every rank (adjusted from sums over all ranks).
    augment_state = trainer.augment.state_tensors() if trainer.augment is not None else {}
    augment_equal = True
    if world_size > 1 and "p" in augment_state:
        gathered = [torch.empty_like(augment_state["p"]) for _ in range(world_size)]
        torch.distributed.all_gather(gathered, augment_state["p"])
        augment_equal = all(torch.equal(gathered[0], g) for g in gathered[1:])
    if rank == 0:
        torch.save({"augment": augment_state, "augment_equal_on_ranks": augment_equal,"G": {k: v.clone() for k, v in trainer.networks.G.state_dict().items()},
                    "D": {k: v.clone() for k, v in trainer.networks.D.state_dict().items()},
                    "initial_G": initial_G,
                    "identical_after_step": identical_after_step,
                    "world_size": trainer.accelerator.num_processes}, out_path)
    trainer.close(succeeded=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:])
    end_process(0)  # as `gan-dist` ends a rank (no interpreter teardown with DDP's gloo threads alive)
