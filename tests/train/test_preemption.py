"""A real SIGTERM to the whole process group (as SLURM and `timeout` send it), with DataLoader workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

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


def _rank_pids(launcher_pid: int, timeout_s: float = 60) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun started (read from their environment)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ranks = {}
        for child in psutil.Process(launcher_pid).children(recursive=True):
            try:
                environ = child.environ()
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                continue
            if "RANK" in environ and "gan_dist" in " ".join(child.cmdline()):
                ranks[int(environ["RANK"])] = child.pid
        if len(ranks) == 2:
            return ranks
        time.sleep(0.2)
    raise AssertionError("torchrun did not start two workers")


def test_a_signal_to_one_rank_stops_every_rank_with_a_checkpoint(mnist_shards, tmp_path):
    """SIGUSR1 to rank 1 only (as a node that got SLURM's warning first): the flag travels in the log
    all-reduce, so both ranks stop at the same step, each writes its RNG state into one checkpoint, and they
    exit 75 (torchrun itself exits 1)."""
    from tests.distributed import free_port

    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(REPO_ROOT / "gan_dist" / "__main__.py"), "train",
         "configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=two",
         "dist.cpu=true", "data.loader=memory", "log.log_every=2", "log.sample_every=0", "checkpoint.every=0",
         "eval.eval_every=-1", "log.tracker=none", "train.num_steps=100000"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("4 [D loss"):
            os.kill(_rank_pids(process.pid)[1], signal.SIGUSR1)
            break
    output.extend(process.stdout)
    process.wait(timeout=300)
    text = "".join(output)
    assert "preempted (signal on another rank)" in text, text  # rank 0 never got the signal itself
    [(step, path)] = complete_checkpoints(tmp_path / "two")
    assert step % 2 == 0 and step >= 4  # at a log step, the same for both ranks
    assert (path / "rng_rank0.safetensors").is_file() and (path / "rng_rank1.safetensors").is_file()
    # torchrun reports a worker's 75 as its own exit 1, and stops the ranks still closing once one exited
    # (-15): the exit status cannot say "stopped early", the new checkpoint does (launch/slurm/common.sh).
    assert process.returncode == 1 and "exitcode  : 75" in text, text
    assert 'gan_dist/' not in "".join(line for line in output if line.lstrip().startswith("File ")), text  # no crash


@pytest.mark.slow  # accelerate launch of 2 CPU ranks: ~30 s on 2 shared cores
def test_sigterm_to_accelerate_launch_checkpoints_every_rank_and_the_launcher_exits_143(mnist_shards, tmp_path):
    """What a scheduler sees when it signals the launcher only (`timeout`, `kill PID`): accelerate's torchrun
    agent forwards SIGTERM to the ranks and waits for them (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s by default,
    then SIGKILL); they finish the step, write one checkpoint and exit 75; the launcher itself exits 143
    (128 + SIGTERM), not 75 (README "Failure behaviour": the new checkpoint says "stopped early")."""
    from tests.distributed import free_port

    process = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO_ROOT / "launch/accelerate/cpu_multi_process.yaml"), "--main_process_port", str(free_port()),
         "-m", "gan_dist", "train", "configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}",
         "run.name=two", "dist.cpu=true", "data.loader=memory", "log.log_every=2", "log.sample_every=0",
         "checkpoint.every=0", "eval.eval_every=-1", "log.tracker=none", "train.num_steps=100000"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("4 [D loss"):
            process.send_signal(signal.SIGTERM)  # the launcher alone
            break
    output.extend(process.stdout)
    process.wait(timeout=300)
    text = "".join(output)
    assert process.returncode == 128 + signal.SIGTERM, text
    assert "preempted (SIGTERM)" in text, text
    [(step, path)] = complete_checkpoints(tmp_path / "two")
    assert step % 2 == 0 and step >= 4
    assert (path / "rng_rank0.safetensors").is_file() and (path / "rng_rank1.safetensors").is_file()
    assert not (tmp_path / "two" / "done.json").exists()
    assert 'gan_dist/' not in "".join(line for line in output if line.lstrip().startswith("File ")), text
