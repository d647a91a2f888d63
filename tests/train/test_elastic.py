"""Elastic resume: a run checkpointed on 2 processes continues on 1, and one from 1 continues on 2, with the
global batch, the data order and the noise of an uninterrupted run (real gloo process groups, torchrun).

The runs are not bit-equal across process counts: DDP averages the ranks' gradients, one process sums the
whole batch at once, so float32 summation order differs (relative differences ~1e-6 per step). They must
stay within atol 1e-5 / rtol 1e-4 after 6 steps, as tests/train/test_ddp.py holds 2 x B against 1 x 2B."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gan_dist.checkpoint import complete_checkpoints
from gan_dist.files import read_lines
from tests.distributed import REPO_ROOT, run_processes

MAIN = REPO_ROOT / "gan_dist" / "__main__.py"
GLOBAL_BATCH = 16
# MLP GAN without dropout or BatchNorm: the run is a function of the global batch alone.
COMMON = ["configs/debug.yaml", "model.name=mlp", "model.d_dropout=0.0", "model.g_width=32", "model.d_width=32",
          "data.loader=memory", "log.tracker=none", "log.sample_every=0", "eval.eval_every=-1", "dist.cpu=true",
          "checkpoint.every=0", "log.log_every=1"]


def train(processes: int, out: Path, name: str, shards: Path, steps: int, *extra: str) -> None:
    per_process = GLOBAL_BATCH // processes
    run_processes(MAIN, processes, ["train", *COMMON, f"data.root={shards}", f"run.out_dir={out}", f"run.name={name}",
                                    f"train.num_steps={steps}", f"train.batch_size_per_process={per_process}",
                                    *extra], timeout_s=600)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    step, path = complete_checkpoints(run)[-1]
    return {**{f"G.{k}": v for k, v in load_file(path / "G.safetensors").items()},
            **{f"D.{k}": v for k, v in load_file(path / "D.safetensors").items()}}


@pytest.mark.slow  # ~1.5 min: five short runs under torchrun
def test_resume_on_another_process_count_continues_the_run(mnist_shards, tmp_path):
    train(1, tmp_path, "uninterrupted", mnist_shards, 6)
    reference = final_weights(tmp_path / "uninterrupted")
    for first, second in ((2, 1), (1, 2)):
        name = f"elastic_{first}_{second}"
        train(first, tmp_path, name, mnist_shards, 3)
        # The second start keeps the config's per-process batch of the FIRST layout: the global batch (16)
        # must come from the checkpoint, the per-process batch adapt (2 -> 1: 8 -> 16; 1 -> 2: 16 -> 8).
        configured = GLOBAL_BATCH // first
        run_processes(MAIN, second, ["train", *COMMON, f"data.root={mnist_shards}", f"run.out_dir={tmp_path}",
                                     f"run.name={name}", "train.num_steps=6",
                                     f"train.batch_size_per_process={configured}", "--resume", "auto"],
                      timeout_s=600)
        run = tmp_path / name
        starts = read_lines(run / "starts.jsonl")
        assert [start["num_processes"] for start in starts] == [first, second]
        assert any(f"elastic resume: {first} -> {second} process(es), the global batch stays 16" in note
                   for note in starts[1]["resume_notes"])
        record = json.loads((run / "run.json").read_text())
        assert record["global_batch_size"] == GLOBAL_BATCH and record["num_processes"] == second
        done = json.loads((run / "done.json").read_text())
        assert done["step"] == 6 and done["images_seen"] == 6 * GLOBAL_BATCH
        weights = final_weights(run)
        for key, value in reference.items():
            torch.testing.assert_close(weights[key], value, atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")


def test_a_global_batch_that_cannot_divide_is_refused_naming_the_keys(mnist_shards, tmp_path):
    """3 images per process on 2 processes (global 6) cannot continue on 4: exit 2 naming both keys."""
    import os
    import subprocess
    import sys

    from tests.distributed import free_port

    train(2, tmp_path, "odd", mnist_shards, 1, "train.batch_size_per_process=3")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(MAIN), "train", *COMMON, f"data.root={mnist_shards}", f"run.out_dir={tmp_path}",
         "run.name=odd", "train.num_steps=2", "train.batch_size_per_process=3", "--resume", "auto"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert ("keys 'train.batch_size_per_process' and 'train.gradient_accumulation_steps'" in result.stderr
            + result.stdout)
