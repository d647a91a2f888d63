"""Static and cheap checks of launch/: shell syntax, shellcheck, the commands the sbatch scripts build,
and the accelerate config files (the CPU one really forms a 2-rank gloo group)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.launch.helpers import REPO_ROOT, training_env

SHELL_SCRIPTS = sorted(
    [*REPO_ROOT.glob("launch/**/*.sh"), *REPO_ROOT.glob("launch/**/*.sbatch")], key=str)
ACCELERATE_CONFIGS = sorted(REPO_ROOT.glob("launch/accelerate/*.yaml"))


def test_the_launch_scripts_exist():
    names = {path.relative_to(REPO_ROOT).as_posix() for path in SHELL_SCRIPTS}
    assert {"launch/slurm/single_node.sbatch", "launch/slurm/multi_node.sbatch", "launch/slurm/common.sh",
            "launch/slurm/test_cluster.sh", "launch/local/two_nodes.sh"} <= names


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_bash_syntax(script: Path):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.relative_to(REPO_ROOT).as_posix())
def test_shellcheck(script: Path):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    # -x follows `source` (common.sh); run from the repository root, where the source= paths start.
    result = subprocess.run(["shellcheck", "-x", str(script.relative_to(REPO_ROOT))], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dry_run(script: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """The sbatch script outside SLURM with DRY_RUN=1 and a fake allocation: prints the step command."""
    full_env = training_env({"DRY_RUN": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "gan_dist",
                             "SLURM_SUBMIT_DIR": str(REPO_ROOT), **env})
    full_env.pop("CPU", None)
    full_env.pop("SLURM_NNODES", None)
    full_env.update(env)
    return subprocess.run(["bash", str(REPO_ROOT / script)], cwd=tmp_path, env=full_env, capture_output=True,
                          text=True, timeout=60)


def test_multi_node_command_reads_the_machine_rank_on_each_node(tmp_path):
    result = dry_run("launch/slurm/multi_node.sbatch", tmp_path, SLURM_NNODES="3", GPUS_PER_NODE="4",
                     MAIN_PROCESS_IP="10.1.2.3", OVERRIDES="train.num_steps=5 model.name=mlp")
    assert result.returncode == 0, result.stderr
    command = next(line for line in result.stdout.splitlines() if "running: srun" in line)
    # Single-quoted, so the node's own bash expands it (in the batch shell it would be 0 everywhere).
    assert "'trap \"\" USR1 TERM;" in command
    assert 'launch --machine_rank "$SLURM_NODEID"' in command
    for expected in ("--nodes=3 --ntasks=3 --ntasks-per-node=1", "--num_machines 3", "--num_processes 12",
                     "--main_process_ip 10.1.2.3", "--main_process_port 24242",
                     "--config_file launch/accelerate/multi_node.yaml", "-m gan_dist train configs/mnist_dcgan.yaml",
                     "run.out_dir=runs run.name=gan_dist-4242", "train.num_steps=5 model.name=mlp --resume auto"):
        assert expected in command, f"{expected!r} not in {command}"
    assert "dist.cpu=true" not in command


def test_cpu_mode_uses_the_gloo_config_and_one_process_per_node(tmp_path):
    result = dry_run("launch/slurm/multi_node.sbatch", tmp_path, SLURM_NNODES="2", CPU="1",
                     MAIN_PROCESS_IP="127.0.0.1", RUN_DIR=str(tmp_path / "runs" / "r1"))
    assert result.returncode == 0, result.stderr
    command = next(line for line in result.stdout.splitlines() if "running: srun" in line)
    for expected in ("--config_file launch/accelerate/cpu_multi_process.yaml", "--num_machines 2",
                     "--num_processes 2", f"run.out_dir={tmp_path / 'runs'} run.name=r1", "dist.cpu=true"):
        assert expected in command, f"{expected!r} not in {command}"


def test_single_node_command_uses_every_gpu_of_the_node(tmp_path):
    result = dry_run("launch/slurm/single_node.sbatch", tmp_path, SLURM_NNODES="1", GPUS_PER_NODE="8")
    assert result.returncode == 0, result.stderr
    command = next(line for line in result.stdout.splitlines() if "running: srun" in line)
    for expected in ("--nodes=1 --ntasks=1", "--num_machines 1 --num_processes 8",
                     "--config_file launch/accelerate/one_node_bf16.yaml"):
        assert expected in command, f"{expected!r} not in {command}"
    assert "--main_process_ip" not in command


def test_run_folder_overrides_are_refused(tmp_path):
    """The script must know the run folder to decide whether to requeue: RUN_DIR, not run.name=."""
    result = dry_run("launch/slurm/multi_node.sbatch", tmp_path, SLURM_NNODES="2", GPUS_PER_NODE="1",
                     MAIN_PROCESS_IP="127.0.0.1", OVERRIDES="run.name=x")
    assert result.returncode == 2
    assert "RUN_NAME" in result.stderr


def test_submitting_from_elsewhere_names_the_fix(tmp_path):
    env = {k: v for k, v in training_env({"DRY_RUN": "1", "SLURM_SUBMIT_DIR": str(tmp_path)}).items()
           if k != "REPO_DIR"}
    result = subprocess.run(["bash", str(REPO_ROOT / "launch/slurm/multi_node.sbatch")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "REPO_DIR" in result.stderr


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_files_load(config: Path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    loaded = load_config_from_file(str(config))
    # MULTI_GPU everywhere: it is the torchrun path (see cpu_multi_process.yaml for why, on CPUs too).
    assert loaded.distributed_type == DistributedType.MULTI_GPU
    expected_precision = {"one_node_bf16.yaml": "bf16", "one_node_fp16.yaml": "fp16", "multi_node.yaml": "bf16",
                          "cpu_multi_process.yaml": "no"}[config.name]
    assert loaded.mixed_precision == expected_precision
    assert loaded.use_cpu == (config.name == "cpu_multi_process.yaml")


def test_cpu_config_forms_a_two_rank_gloo_group(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(REPO_ROOT / "launch/accelerate/cpu_multi_process.yaml"),
               "--main_process_port", "0", str(Path(__file__).with_name("dist_probe.py"))]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("probe-rank*.json"))]
    assert [(r["rank"], r["world_size"], r["backend"], r["rank_sum"]) for r in reports] == [
        (0, 2, "gloo", 3.0), (1, 2, "gloo", 3.0)]
