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


# A command substitution hidden in an array subscript: bash arithmetic ((...)) / $((...)) would run it
# (the array name is a set variable, so that `set -u` does not stop bash before the subscript).
def payload(marker: Path) -> str:
    return f"PATH[$(touch {marker})]"


@pytest.mark.parametrize(("script", "variable", "env"), [
    pytest.param("single_node.sbatch", "GPUS_PER_NODE", {}, id="GPUS_PER_NODE"),
    pytest.param("single_node.sbatch", "PROCS_PER_NODE", {"GPUS_PER_NODE": "2"}, id="PROCS_PER_NODE"),
    pytest.param("single_node.sbatch", "PROCS_PER_NODE", {"CPU": "1"}, id="PROCS_PER_NODE-cpu"),
    pytest.param("multi_node.sbatch", "SLURM_NNODES", {"GPUS_PER_NODE": "1", "MAIN_PROCESS_IP": "127.0.0.1"},
                 id="SLURM_NNODES"),
    *(pytest.param("single_node.sbatch", name, {"GPUS_PER_NODE": "1"}, id=name)
      for name in ("SLURM_JOB_ID", "MASTER_PORT", "MAX_REQUEUES", "FORWARD_EVERY_S", "SLURM_RESTART_COUNT",
                   "CPUS_PER_TASK", "STEP_WAIT_S", "CPU_THREADS_PER_PROCESS")),
])
def test_numeric_settings_are_never_evaluated_as_code(tmp_path, script, variable, env):
    marker = tmp_path / "PWNED"
    result = dry_run(f"launch/slurm/{script}", tmp_path, **{"SLURM_NNODES": "1", **env, variable: payload(marker)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: {variable}=" in result.stderr and "must be a non-negative integer" in result.stderr
    assert not marker.exists(), "the payload ran"
    assert "running:" not in result.stdout


def test_numbers_with_leading_zeros_are_decimal(tmp_path):
    """08 is digits only, so it is accepted, and read as 8 (bash arithmetic alone would fail on octal)."""
    result = dry_run("launch/slurm/single_node.sbatch", tmp_path, SLURM_NNODES="1", GPUS_PER_NODE="08")
    assert result.returncode == 0, result.stderr
    assert "--num_processes 8 " in result.stdout


def test_overrides_reach_the_trainer_literally(tmp_path):
    """OVERRIDES is split into words, never glob-expanded: `a=*` must not become the file `a=1` of
    REPO_DIR (the scripts cd there). Every line of a multi-line OVERRIDES counts."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "launch", "configs"):
        (repo / name).symlink_to(REPO_ROOT / name)
    (repo / "a=1").write_text("")
    (repo / "b=2").write_text("")
    result = dry_run("launch/slurm/single_node.sbatch", tmp_path, REPO_DIR=str(repo), SLURM_NNODES="1",
                     GPUS_PER_NODE="1", OVERRIDES="train.num_steps=5 a=*\n\tb=? model.name=mlp")
    assert result.returncode == 0, result.stderr
    command = next(line for line in result.stdout.splitlines() if "running: srun" in line)
    assert "train.num_steps=5 'a=*' 'b=?' model.name=mlp --resume auto" in command
    assert "a=1" not in command and "b=2" not in command


def test_run_folder_overrides_are_refused_after_any_whitespace(tmp_path):
    result = dry_run("launch/slurm/single_node.sbatch", tmp_path, SLURM_NNODES="1", GPUS_PER_NODE="1",
                     OVERRIDES="train.num_steps=5\trun.name=x")
    assert result.returncode == 2 and "RUN_NAME" in result.stderr


def two_nodes(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """two_nodes.sh with a stand-in `accelerate` (true): it prints both node commands and exits 0."""
    full_env = training_env({"RUN_DIR": str(tmp_path / "runs" / "two"), "ACCELERATE": "true",
                             "MASTER_PORT": "29999", **env})
    return subprocess.run([str(REPO_ROOT / "launch/local/two_nodes.sh")], cwd=tmp_path, env=full_env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("variable", ["PROCS_PER_NODE", "MASTER_PORT", "CPU_THREADS_PER_PROCESS"])
def test_two_nodes_numeric_settings_are_never_evaluated_as_code(tmp_path, variable):
    marker = tmp_path / "PWNED"
    result = two_nodes(tmp_path, **{variable: payload(marker)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"error: {variable}=" in result.stderr
    assert not marker.exists(), "the payload ran"
    assert "node 0:" not in result.stdout


def test_two_nodes_overrides_reach_the_trainer_literally(tmp_path):
    # The script runs in the repository root, where pyproject.* would match pyproject.toml.
    result = two_nodes(tmp_path, OVERRIDES="train.num_steps=2 pyproject.*")
    assert result.returncode == 0, result.stdout + result.stderr
    nodes = [line for line in result.stdout.splitlines() if line.startswith("two_nodes: node ") and " -m " in line]
    assert len(nodes) == 2, result.stdout
    assert all("train.num_steps=2 'pyproject.*' --resume auto" in line for line in nodes), nodes


# -- gd_run's decisions, outside SLURM: stand-ins for srun (the training step), scontrol and scancel -------

def batch_run(tmp_path: Path, step: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """single_node.sbatch for real (no DRY_RUN) with srun replaced by the bash code `step`, which plays the
    training step (it may signal the batch shell, $PPID). Each stand-in records its arguments in
    tmp_path/calls/<name>; `scontrol requeue` ends the batch shell as SLURM does (SIGKILL)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for name, body in {"srun": step,
                       "scontrol": 'if [[ $1 == requeue ]]; then kill -KILL "$PPID"; fi',
                       "scancel": ""}.items():
        (bin_dir / name).write_text(f'#!/usr/bin/env bash\necho "$*" >>{calls / name}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    full_env = training_env({"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "gan_dist", "SLURM_NNODES": "1",
                             "SLURM_SUBMIT_DIR": str(REPO_ROOT), "CONFIG": "configs/debug.yaml",
                             "RUN_DIR": str(tmp_path / "run"), "FORWARD_EVERY_S": "1",
                             "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env})
    for name in ("DRY_RUN", "SLURM_RESTART_COUNT", "MAX_REQUEUES"):
        full_env.pop(name, None)
    result = subprocess.run(["bash", str(REPO_ROOT / "launch/slurm/single_node.sbatch")], cwd=tmp_path,
                            env=full_env, capture_output=True, text=True, timeout=120)
    return result, calls


def write_done(run_dir: Path, step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "done.json").write_text(json.dumps({"step": step}) + "\n")


def write_checkpoint(run_dir: Path, step: int) -> str:
    path = run_dir / "checkpoints" / f"step_{step:08d}"
    path.mkdir(parents=True)
    (path / "meta.json").write_text("{}\n")
    return str(path)


@pytest.mark.parametrize("step_rc", [0, 1])
def test_done_json_of_a_shorter_run_does_not_skip_training(tmp_path, step_rc):
    """done.json at step 8, the job trains to 16: the step runs. Finished only when the new done.json
    says 16; a step that fails leaves the old done.json, and the job fails."""
    run_dir = tmp_path / "run"
    write_done(run_dir, 8)
    finish = f"echo '{{\"step\": 16}}' >{run_dir / 'done.json'}; " if step_rc == 0 else ""
    result, calls = batch_run(tmp_path, f"{finish}exit {step_rc}", OVERRIDES="train.num_steps=16")
    output = result.stdout + result.stderr
    assert (calls / "srun").is_file(), output
    if step_rc == 0:
        assert result.returncode == 0, output
        assert 'finished: {"step": 16}' in result.stdout
    else:
        assert result.returncode == 1, output
        assert "done.json records step 8 < train.num_steps 16: not finished" in result.stdout
        assert "finished:" not in result.stdout
    assert not (calls / "scontrol").exists()


def test_a_finished_run_is_handed_to_the_trainer_and_ends_finished(tmp_path):
    """done.json at step 16 and train.num_steps=16: the trainer says "nothing to do" (exit 0)."""
    write_done(tmp_path / "run", 16)
    result, calls = batch_run(tmp_path, "exit 0", OVERRIDES="train.num_steps=16")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (calls / "srun").is_file() and 'finished: {"step": 16}' in result.stdout


def test_stopped_early_with_a_new_checkpoint_requeues(tmp_path):
    """SIGUSR1, then the trainer checkpoints and exits 75, which torchrun reports as 1: requeue."""
    run_dir = tmp_path / "run"
    write_checkpoint(run_dir, 4)
    new = run_dir / "checkpoints" / "step_00000012"
    step = f'kill -USR1 "$PPID"; sleep 1; mkdir -p {new}; touch {new}/meta.json; exit 1'
    result, calls = batch_run(tmp_path, step, OVERRIDES="train.num_steps=16")
    output = result.stdout + result.stderr
    assert (calls / "scontrol").read_text().split() == ["requeue", "4242"], output
    assert f"with a new checkpoint: {new}; requeueing job 4242" in result.stdout
    assert "--signal=USR1 4242" in (calls / "scancel").read_text()  # forwarded to the step


def test_a_step_that_fails_after_sigusr1_without_a_checkpoint_is_not_requeued(tmp_path):
    """A data error, a divergence or a crash after the signal saves nothing new: a requeue would start
    from the same checkpoint and fail again, MAX_REQUEUES times."""
    run_dir = tmp_path / "run"
    old = write_checkpoint(run_dir, 8)
    result, calls = batch_run(tmp_path, 'kill -USR1 "$PPID"; sleep 1; exit 3', OVERRIDES="train.num_steps=16")
    output = result.stdout + result.stderr
    assert result.returncode == 3, output
    assert not (calls / "scontrol").exists(), output
    assert f"without writing a new checkpoint (newest: {old})" in result.stdout
    assert "not requeueing" in result.stdout


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
