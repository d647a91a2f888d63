"""A real SIGTERM to the whole process group (as SLURM and `timeout` send it), with DataLoader workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from gan_dist.checkpoint import complete_checkpoints
from gan_dist.train.trainer import EXIT_STOPPED_EARLY
from tests.distributed import REPO_ROOT


def test_sigterm_to_the_process_group_checkpoints_then_resume_finishes(mnist_shards, tmp_path):
    common = ["configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=p",
              "data.num_workers=1", "log.log_every=1", "log.sample_every=0", "checkpoint.every=0"]
    process = subprocess.Popen([sys.executable, "-m", "gan_dist", "train", *common, "train.num_steps=100000"],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("5 [D loss"):
            os.killpg(process.pid, signal.SIGTERM)  # trainer, its loader worker: every process of the group
            break
    output.extend(process.stdout)
    assert process.wait(timeout=120) == EXIT_STOPPED_EARLY, "".join(output)
    assert "preempted (SIGTERM)" in "".join(output)
    [(stopped_at, _)] = complete_checkpoints(tmp_path / "p")
    assert 5 <= stopped_at < 100000
    assert not (tmp_path / "p" / "done.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "gan_dist", "train", *common, f"train.num_steps={stopped_at + 3}",
                              "--resume", "auto"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from {tmp_path / 'p' / 'checkpoints'}" in resumed.stdout
    assert json.loads((tmp_path / "p" / "done.json").read_text())["step"] == stopped_at + 3
