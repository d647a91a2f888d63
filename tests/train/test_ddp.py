"""DDP correctness with real gloo process groups on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.distributed import run_processes

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    """MLP GAN without dropout or BN: 2 x B equals 1 x 2B, parameter for parameter, after several steps."""
    args = ["mlp", "16", "6", "model.d_dropout=0.0", "model.g_width=32", "model.d_width=32"]
    run_processes(WORKER, 1, [str(tmp_path / "one.pt"), *args])
    run_processes(WORKER, 2, [str(tmp_path / "two.pt"), *args])
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for model in ("G", "D"):
        for name, value in one[model].items():
            torch.testing.assert_close(two[model][name], value, atol=1e-5, rtol=1e-4, msg=f"{model}.{name}")
    # Training really moved every G parameter, so equality is not that of two untouched copies.
    assert all(not torch.equal(one["G"][k], one["initial_G"][k]) for k in one["G"])


def test_keras_dcgan_ranks_hold_identical_parameters_after_every_step(tmp_path):
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
