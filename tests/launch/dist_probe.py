"""Run under `accelerate launch`: prints one JSON line per process with what the process group really is
(rank, world size, backend, and the sum of rank+1 over an all-reduce, which only a real group gets right)."""

import json

import torch
import torch.distributed as dist
from accelerate import Accelerator

accelerator = Accelerator()
total = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0], device=accelerator.device), "sum")
print(json.dumps({"rank": accelerator.process_index, "world_size": accelerator.num_processes,
                  "backend": dist.get_backend() if dist.is_initialized() else None,
                  "distributed_type": str(accelerator.distributed_type), "rank_sum": total.item()}), flush=True)
