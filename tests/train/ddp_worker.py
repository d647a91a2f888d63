"""Worker for tests/train/test_ddp.py: run under torchrun with 1 or 2 processes.

Every process builds the same global batch for each step (real images and noise from a per-step seed)
and trains on its slice, so 2 processes x B see exactly the samples of 1 process x 2B.
Writes the final G and D parameters (rank 0) and, per step, whether all ranks held identical
parameters.
"""

import os
import sys

import torch

from gan_dist.config import load_config
from gan_dist.train import Trainer


def main(out_path: str, model_name: str, global_batch: int, num_steps: int, *overrides: str) -> None:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = load_config("configs/debug.yaml", [
        f"model.name={model_name}", f"train.batch_size_per_process={global_batch // world_size}",
        "log.tracker=none", "run.name=ddp", f"run.out_dir={out_path}.runs", "dist.cpu=true", *overrides])
    trainer = Trainer(config)
    rank = trainer.accelerator.process_index
    local_batch = global_batch // world_size
    identical_after_step = []
    initial_G = {k: v.clone() for k, v in trainer.G_raw.state_dict().items()}
    for step in range(num_steps):
        rng = torch.Generator().manual_seed(1000 + step)
        real = torch.rand(global_batch, 1, 28, 28, generator=rng) * 2 - 1  # (2B, 1, 28, 28)
        z = torch.randn(global_batch, config.model.latent_dim, generator=rng)  # (2B, latent)
        part = slice(rank * local_batch, (rank + 1) * local_batch)
        trainer.train_step(real[part], z[part])
        params = torch.cat([p.detach().flatten() for m in (trainer.G_raw, trainer.D_raw) for p in m.parameters()])
        if world_size > 1:
            gathered = [torch.empty_like(params) for _ in range(world_size)]
            torch.distributed.all_gather(gathered, params)
            identical_after_step.append(all(torch.equal(gathered[0], g) for g in gathered[1:]))
        else:
            identical_after_step.append(True)
    if rank == 0:
        torch.save({"G": {k: v.clone() for k, v in trainer.G_raw.state_dict().items()},
                    "D": {k: v.clone() for k, v in trainer.D_raw.state_dict().items()},
                    "initial_G": initial_G,
                    "identical_after_step": identical_after_step,
                    "world_size": trainer.accelerator.num_processes}, out_path)
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:])
