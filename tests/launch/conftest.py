"""Fixtures for the launch tests: `slurm` (the local SLURM test cluster from launch/slurm/test_cluster.sh,
or a skip that says how to start it) and `submit` (sbatch a script from launch/slurm, cancelled at teardown)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.launch.helpers import REPO_ROOT, SlurmJob, training_env

DEFAULT_SLURM_DIR = Path(os.environ.get("GAN_DIST_SLURM_DIR", "/tmp/gan_dist_slurm"))
START_HINT = "start it with: launch/slurm/test_cluster.sh start && export SLURM_CONF=/tmp/gan_dist_slurm/slurm.conf"


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """Environment with SLURM_CONF for the running local test cluster; skips when there is none."""
    conf = os.environ.get("SLURM_CONF") or (
        str(DEFAULT_SLURM_DIR / "slurm.conf") if (DEFAULT_SLURM_DIR / "slurm.conf").is_file() else "")
    if not conf:
        pytest.skip(f"no SLURM cluster: SLURM_CONF is not set and {DEFAULT_SLURM_DIR}/slurm.conf does not exist; {START_HINT}")
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        pytest.skip(f"no SLURM client (sinfo/sbatch) on PATH; launch/slurm/test_cluster.sh install; {START_HINT}")
    if not Path(conf).is_file():
        pytest.skip(f"no SLURM cluster: SLURM_CONF={conf} does not exist; {START_HINT}")
    env = {**os.environ, "SLURM_CONF": conf}
    try:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True,
                                timeout=15)
    except subprocess.TimeoutExpired:
        pytest.skip(f"SLURM cluster not answering within 15 s (SLURM_CONF={conf}); {START_HINT}")
    if result.returncode != 0:
        pytest.skip(f"SLURM cluster not reachable with SLURM_CONF={conf}: {result.stderr.strip()}; {START_HINT}")
    usable = [line for line in result.stdout.splitlines() if re.search(r" (idle|mix|alloc)$", line)]
    if len(usable) < 2:
        pytest.skip(f"the SLURM cluster needs 2 usable nodes, sinfo says: {result.stdout.strip()!r}; {START_HINT}")
    return {"SLURM_CONF": conf}


@pytest.fixture
def submit(slurm: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., SlurmJob]]:
    """submit(script, env_extra, *sbatch_args) -> SlurmJob; runs in tmp_path; cancels leftovers at teardown."""
    jobs: list[SlurmJob] = []

    def _submit(script: str, env_extra: dict[str, str], *sbatch_args: str) -> SlurmJob:
        env = training_env({**slurm, **env_extra})
        log = tmp_path / f"job-{len(jobs)}.out"
        command = ["sbatch", "--parsable", f"--chdir={tmp_path}", f"--output={log}", *sbatch_args,
                   str(REPO_ROOT / script)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        job = SlurmJob(result.stdout.strip().split(";")[0], env, log)
        jobs.append(job)
        return job

    yield _submit
    for job in jobs:
        subprocess.run(["scancel", job.job_id], env=job.env, capture_output=True, timeout=30)
