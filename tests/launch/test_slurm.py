"""The sbatch scripts on a real SLURM cluster: the local 2-node test cluster of launch/slurm/test_cluster.sh
(slurmctld + 2 slurmd on 127.0.0.1). One CPU training process per node, gloo, wandb offline.

Skipped, with the reason, when no cluster answers (`sinfo` fails or SLURM_CONF is not set)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.launch.helpers import wandb_run_ids

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Small enough for 2 CPU cores; checkpoints only at the end or on preemption, a log line every few steps.
QUICK = "data.num_workers=0 log.tracker=wandb log.wandb_mode=offline log.sample_every=0 checkpoint.every=0"


def overrides(mnist_shards: Path, num_steps: int, log_every: int) -> str:
    return f"train.num_steps={num_steps} log.log_every={log_every} data.root={mnist_shards} {QUICK}"


def only_run_folder(out_dir: Path) -> Path:
    folders = [path for path in out_dir.iterdir()]
    assert len(folders) == 1, f"expected one run folder in {out_dir}, found {folders}"
    return folders[0]


def test_multi_node_sbatch_trains_on_two_nodes(submit, tmp_path, mnist_shards):
    out_dir = tmp_path / "runs"
    job = submit("launch/slurm/multi_node.sbatch",
                 {"CONFIG": "configs/debug.yaml", "OUT_DIR": str(out_dir),
                  "OVERRIDES": overrides(mnist_shards, num_steps=8, log_every=2)},
                 "--nodes=2", "--time=15", "--job-name=gd_multi")
    info = job.wait_finished(timeout_s=240)
    log = job.log_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log[-6000:]
    assert info["NodeList"] == "n[1-2]"
    # One task per node, each with its own machine rank (read on the node, not in the batch shell).
    assert sorted(re.findall(r"node (n\d): machine_rank (\d)", log)) == [("n1", "0"), ("n2", "1")]
    run_dir = only_run_folder(out_dir)
    assert run_dir.name == f"gd_multi-{job.job_id}"  # ${SLURM_JOB_NAME}-${SLURM_JOB_ID}: stable on requeue
    done = json.loads((run_dir / "done.json").read_text())
    assert (done["step"], done["num_processes"]) == (8, 2)
    assert "2 process(es)" in log
    # Both ranks took part in the checkpoint: one RNG state file per process (safetensors, no pickle).
    final = run_dir / "checkpoints" / "step_00000008"
    assert (final / "rng_rank0.safetensors").is_file() and (final / "rng_rank1.safetensors").is_file()
    assert not list(final.glob("*.pkl"))
    # One wandb run (offline), the one the trainer recorded.
    assert wandb_run_ids(run_dir) == [done["run_id"]]


def test_preempted_job_checkpoints_requeues_resumes_and_finishes(submit, tmp_path, mnist_shards, slurm):
    """SIGUSR1 to the batch shell (what `--signal=B:USR1@T` does before the time limit): the shell forwards
    it to the training step, the trainer checkpoints, the job requeues itself and resumes to the exact
    step count, in the same run folder and the same wandb run."""
    num_steps = 300
    out_dir = tmp_path / "runs"
    job = submit("launch/slurm/multi_node.sbatch",
                 {"CONFIG": "configs/debug.yaml", "OUT_DIR": str(out_dir),
                  "OVERRIDES": overrides(mnist_shards, num_steps=num_steps, log_every=10)},
                 "--nodes=2", "--time=15", "--job-name=gd_preempt")
    # A first loss line means the trainer is in its loop (its signal handlers are installed).
    job.wait_for_log(r"^10 \[D loss", timeout_s=180)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job.job_id], env={**os.environ, **slurm}, check=True,
                   timeout=30)

    # The requeued job waits for its BeginTime: cred_expire + 1 = 11 s on the test cluster. Not
    # `scontrol update StartTime=now`: started before the old job credential expires, the job is killed
    # as "non-startable ... Job credential revoked" and ends FAILED (seen on slurm 22.05).
    job.wait(lambda info: info.get("Restarts") == "1", 120, "the job to be requeued")
    info = job.wait_finished(timeout_s=240)
    log = job.log_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), log[-6000:]

    stopped = re.findall(r"preempted.*checkpoint at step (\d+)", log)
    assert stopped, log[-6000:]
    stop_step = int(stopped[0])
    assert 10 <= stop_step < num_steps
    assert f"requeueing job {job.job_id}" in log
    assert re.search(rf"resumed from \S*step_{stop_step:08d} at step {stop_step}\b", log), log[-6000:]
    assert f"steps {stop_step}->{num_steps}" in log

    run_dir = only_run_folder(out_dir)
    done = json.loads((run_dir / "done.json").read_text())
    assert (done["step"], done["num_processes"]) == (num_steps, 2)
    assert done["images_seen"] == num_steps * 8 * 2  # debug.yaml: 8 per process, 2 processes
    assert (run_dir / "checkpoints" / f"step_{num_steps:08d}").is_dir()
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    # Two starts, one wandb run: the second start reopened the first one's id.
    ids = wandb_run_ids(run_dir)
    assert len(ids) == 2 and set(ids) == {done["run_id"]}, ids


def test_single_node_sbatch_runs_two_processes(submit, tmp_path, mnist_shards):
    out_dir = tmp_path / "runs"
    job = submit("launch/slurm/single_node.sbatch",
                 {"CONFIG": "configs/debug.yaml", "OUT_DIR": str(out_dir), "PROCS_PER_NODE": "2",
                  "OVERRIDES": overrides(mnist_shards, num_steps=6, log_every=2)},
                 "--time=15", "--job-name=gd_single")
    info = job.wait_finished(timeout_s=240)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), job.log_text()[-6000:]
    done = json.loads((only_run_folder(out_dir) / "done.json").read_text())
    assert (done["step"], done["num_processes"]) == (6, 2)


def test_scancel_stops_the_job_without_requeue(submit, tmp_path, mnist_shards, slurm):
    """A user's scancel (SIGTERM to every process of the job) must end the job, not requeue it; the
    trainer still leaves a complete checkpoint to resume from."""
    out_dir = tmp_path / "runs"
    job = submit("launch/slurm/multi_node.sbatch",
                 {"CONFIG": "configs/debug.yaml", "OUT_DIR": str(out_dir),
                  "OVERRIDES": overrides(mnist_shards, num_steps=5000, log_every=10)},
                 "--nodes=2", "--time=15", "--job-name=gd_cancel")
    job.wait_for_log(r"^10 \[D loss", timeout_s=180)
    subprocess.run(["scancel", job.job_id], env={**os.environ, **slurm}, check=True, timeout=30)
    info = job.wait_finished(timeout_s=120)
    log = job.log_text()
    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0"), log[-6000:]
    assert "requeueing" not in log
    checkpoints = sorted((only_run_folder(out_dir) / "checkpoints").glob("step_*"))
    assert len(checkpoints) == 1 and (checkpoints[0] / "meta.json").is_file(), log[-6000:]


def test_time_limit_signal_checkpoints_and_requeues(submit, tmp_path, mnist_shards, slurm):
    """SLURM's own `--signal=B:USR1@45` with a 1-minute limit: the signal is due 15 s after the start, and
    slurmctld, which checks every ~30 s, sends it up to ~30 s early: 0-15 s in, usually while the trainer
    is still starting and ignores it. The batch shell repeats it (every 5 s here) until the trainer
    checkpoints; then the job requeues itself and resumes."""
    out_dir = tmp_path / "runs"
    job = submit("launch/slurm/multi_node.sbatch",
                 {"CONFIG": "configs/debug.yaml", "OUT_DIR": str(out_dir), "FORWARD_EVERY_S": "5",
                  "OVERRIDES": overrides(mnist_shards, num_steps=100000, log_every=10)},
                 "--nodes=2", "--time=1", "--signal=B:USR1@45", "--job-name=gd_timelimit")
    job.wait(lambda info: info.get("Restarts") == "1", 120, "the job to requeue itself")
    log = job.log_text()
    stopped = re.findall(r"preempted.*checkpoint at step (\d+)", log)
    assert stopped and int(stopped[0]) > 0, log[-6000:]
    assert (only_run_folder(out_dir) / "checkpoints" / f"step_{int(stopped[0]):08d}").is_dir()
    job.wait_for_log(rf"resumed from \S*step_{int(stopped[0]):08d} at step {stopped[0]}\b", timeout_s=150)
