"""A full disk under several processes: whichever rank's checkpoint write fails (the main process's files, or
another rank's RNG state), every rank learns it at the same collective and exits 1 with one line; none waits
for the others until the process-group timeout."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gan_dist.checkpoint import complete_checkpoints
from tests.distributed import REPO_ROOT, free_port


@pytest.mark.slow  # two torchrun starts of two processes: ~25 s each on 2 shared cores
@pytest.mark.parametrize("full_rank", [0, 1])
def test_a_checkpoint_write_that_fails_on_one_rank_stops_every_rank_with_one_line(mnist_shards, tmp_path, full_rank):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(REPO_ROOT / "tests" / "train" / "disk_full_worker.py"), "train",
               "configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=two",
               "dist.cpu=true", "dist.timeout_s=600", "data.loader=memory", "log.sample_every=0",
               "checkpoint.every=2", "log.tracker=none", "train.num_steps=8"]
    # No hang: a rank waiting for the other would sit until dist.timeout_s (600 s), past this timeout.
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                                 "GAN_DIST_TEST_FULL_RANK": str(full_rank)})
    text = result.stdout + result.stderr
    # torchrun's own status when a worker exits non-zero; the ranks still closing when the first one exits get
    # its SIGTERM (exitcode -15), after they said the line.
    assert result.returncode == 1, text
    lines = [line for line in text.splitlines() if line.startswith("gan-dist train: ")]
    assert len(lines) == 1, text  # every rank agreed on it; rank 0 says it
    assert "no space left on device writing" in lines[0] and "free there" in lines[0], lines
    assert (f"rank {full_rank}: " in lines[0]) == (full_rank == 1), lines
    # torchrun prints its own ChildFailedError traceback; no gan_dist frame may appear in any.
    assert "gan_dist/" not in "".join(line for line in text.splitlines() if line.lstrip().startswith("File ")), text
    assert "exitcode  : 1" in text, text
    assert complete_checkpoints(tmp_path / "two") == []  # the failed write never published
    assert not [p for p in (tmp_path / "two" / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
