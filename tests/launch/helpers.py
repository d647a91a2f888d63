"""Helpers for the launch tests: the environment every launched training gets (offline wandb, one
thread per process), a polled SLURM batch job, and wandb run ids of a run folder."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def training_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The submitting environment: sbatch exports it to the job. wandb offline, never a prompt or a key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": "1", "REPO_DIR": str(REPO_ROOT), "CPU": "1", "CPU_THREADS_PER_PROCESS": "1"})
    env.update(extra or {})
    return env


class SlurmJob:
    """A submitted batch job: polls `scontrol show job` (no sacct without accounting)."""

    def __init__(self, job_id: str, env: dict[str, str], log: Path) -> None:
        self.job_id, self.env, self.log = job_id, env, log

    def info(self) -> dict[str, str]:
        result = subprocess.run(["scontrol", "show", "job", "-o", self.job_id], env=self.env,
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"scontrol show job {self.job_id}: {result.stderr}")
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout))

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, predicate: Callable[[dict[str, str]], bool], timeout_s: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info()
            if predicate(info):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {self.job_id}: timed out after {timeout_s:.0f}s waiting for {what}; "
                                     f"state {info.get('JobState')}\n--- job log ---\n{self.log_text()[-6000:]}")
            time.sleep(0.5)

    def wait_for_log(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while True:
            match = re.search(pattern, self.log_text(), re.MULTILINE)
            if match:
                return match
            info = self.info()
            if info.get("JobState") in FINISHED or time.monotonic() > deadline:
                raise AssertionError(f"job {self.job_id}: no /{pattern}/ in the log (state {info.get('JobState')})"
                                     f"\n--- job log ---\n{self.log_text()[-6000:]}")
            time.sleep(0.25)

    def wait_finished(self, timeout_s: float) -> dict[str, str]:
        return self.wait(lambda info: info.get("JobState") in FINISHED, timeout_s, "the end of the job")


FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE"}


def wandb_run_ids(run_dir: Path) -> list[str]:
    """The run id of every offline wandb run folder under RUN_DIR/wandb (one folder per start)."""
    return sorted(path.name.rsplit("-", 1)[1] for path in (run_dir / "wandb").glob("offline-run-*"))
