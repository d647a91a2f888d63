"""DDP correctness with real gloo process groups on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.distributed import run_processes

WORKER = Path(__file__).with_name("ddp_worker.py")


def _assert_two_match_one(tmp_path, name: str, args: list[str]) -> None:
    run_processes(WORKER, 1, [str(tmp_path / f"{name}1.pt"), *args])
    run_processes(WORKER, 2, [str(tmp_path / f"{name}2.pt"), *args])
    one, two = torch.load(tmp_path / f"{name}1.pt"), torch.load(tmp_path / f"{name}2.pt")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for model in ("G", "D"):
        for key, value in one[model].items():
            torch.testing.assert_close(two[model][key], value, atol=1e-5, rtol=1e-4, msg=f"{model}.{key}")
    # Training really moved every G parameter, so equality is not that of two untouched copies.
    assert all(not torch.equal(one["G"][k], one["initial_G"][k]) for k in one["G"])
    assert two["identical_after_step"] == [True] * len(two["identical_after_step"])


MLP = ["model.d_dropout=0.0", "model.g_width=32", "model.d_width=32"]


def test_two_processes_match_one_process_with_the_global_batch(mnist_shards, tmp_path):
    """MLP GAN without dropout or BN: 2 x B equals 1 x 2B, parameter for parameter, after several steps."""
    _assert_two_match_one(tmp_path, "ns", ["mlp", "16", "6", *MLP])


def test_wgan_gp_double_backward_under_ddp_matches_one_process(mnist_shards, tmp_path):
    """The gradient penalty's double backward through the DDP-wrapped critic, 5 critic steps per G step,
    and gradient accumulation: 2 processes equal 1 process with the same global batch."""
    _assert_two_match_one(tmp_path, "wgan", ["mlp", "16", "3", *MLP, "loss.name=wgan_gp",
                                             "train.d_steps_per_g=3", "train.gradient_accumulation_steps=2"])


def test_conditional_projection_with_r1_matches_one_process(mnist_shards, tmp_path):
    """A class-conditional G and a projection D with the R1 penalty: 2 processes equal 1."""
    _assert_two_match_one(tmp_path, "cond", ["mlp", "16", "4", *MLP, "model.conditioning=projection",
                                             "loss.name=hinge", "loss.r1_gamma=1.0"])


def test_keras_dcgan_ranks_hold_identical_parameters_after_every_step(mnist_shards, tmp_path):
    run_processes(WORKER, 2, [str(tmp_path / "two.pt"), "keras_dcgan", "8", "4"])
    result = torch.load(tmp_path / "two.pt")
    assert result["world_size"] == 2
    assert result["identical_after_step"] == [True] * 4


def test_accelerate_launch_multi_gpu_on_a_cpu_machine_forms_a_gloo_group(mnist_shards, tmp_path):
    """The users' command, `accelerate launch --multi_gpu --num_processes 2 -m gan_dist train`, on a
    machine without a GPU: both processes join one group (not two silent copies) and train the run."""

    from tests.distributed import REPO_ROOT, free_port

    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "gan_dist", "train", "configs/debug.yaml",
               f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=launched", "train.num_steps=4"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    done = json.loads((tmp_path / "launched" / "done.json").read_text())
    assert done["num_processes"] == 2
    assert done["images_seen"] == 4 * 2 * 8  # steps x processes x batch_size_per_process
    assert [p.name for p in tmp_path.iterdir()] == ["launched"]
    assert "2 process(es)" in result.stdout


def test_whole_runs_on_the_memory_loader_are_the_same_for_one_and_two_processes(tiny_shards, tmp_path):
    """`gan-dist train` end to end with data.loader=memory: 2 processes x 8 equal 1 process x 16, because the
    memory source gives the 2 ranks the two halves of the 1-process batch and the noise is drawn for the
    global batch; DDP's gradient average does the rest."""
    from safetensors.torch import load_file

    from tests.distributed import REPO_ROOT, free_port

    common = ["configs/debug.yaml", f"data.root={tiny_shards}", "data.auto_prepare=false", "data.loader=memory",
              *MLP, "model.name=mlp", "train.num_steps=6", "log.sample_every=0", "checkpoint.every=0",
              f"run.out_dir={tmp_path}", "dist.cpu=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    one = subprocess.run([sys.executable, "-m", "gan_dist", "train", *common, "run.name=one",
                          "train.batch_size_per_process=16"], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "--main_process_port", str(free_port()), "-m", "gan_dist", "train", *common,
                          "run.name=two", "train.batch_size_per_process=8"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    for name in ("G.safetensors", "D.safetensors"):
        single = load_file(str(tmp_path / "one" / "checkpoints" / "step_00000006" / name))
        double = load_file(str(tmp_path / "two" / "checkpoints" / "step_00000006" / name))
        for key, value in single.items():
            torch.testing.assert_close(double[key], value, atol=1e-5, rtol=1e-4, msg=f"{name} {key}")
    done = [json.loads((tmp_path / run / "done.json").read_text()) for run in ("one", "two")]
    assert [d["images_seen"] for d in done] == [6 * 16, 6 * 16] and [d["num_processes"] for d in done] == [1, 2]
