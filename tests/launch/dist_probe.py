"""Run under `accelerate launch`: writes probe-rank<N>.json (in the working folder) per process with what
the process group really is: rank, world size, backend, and the sum of rank+1 over an all-reduce, which
only a real group gets right. (Files, not stdout: the ranks' output lines can interleave.)"""

import json
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator

accelerator = Accelerator()
total = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0], device=accelerator.device), "sum")
report = {"rank": accelerator.process_index, "world_size": accelerator.num_processes,
          "backend": dist.get_backend() if dist.is_initialized() else None,
          "distributed_type": str(accelerator.distributed_type), "rank_sum": total.item()}
Path(f"probe-rank{accelerator.process_index}.json").write_text(json.dumps(report))
# Without this, gloo's threads can abort the interpreter at exit ("terminate called without an active
# exception", SIGABRT) on recent torch versions.
accelerator.wait_for_everyone()
dist.destroy_process_group()
