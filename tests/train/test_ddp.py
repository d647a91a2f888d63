"""DDP correctness with real gloo process groups on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed import run_processes

WORKER = Path(__file__).with_name("ddp_worker.py")


def _assert_two_match_one(tmp_path, name: str, args: list[str], per_rank_buffers: tuple[str, ...] = ()) -> dict:
    """Returns the 1-process result. `per_rank_buffers`: buffers that are statistics of each rank's own batch
    (StyleGAN2's w_avg, as in the reference's multi-GPU training); they are not compared."""
    run_processes(WORKER, 1, [str(tmp_path / f"{name}1.pt"), *args])
    run_processes(WORKER, 2, [str(tmp_path / f"{name}2.pt"), *args])
    one, two = torch.load(tmp_path / f"{name}1.pt"), torch.load(tmp_path / f"{name}2.pt")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for model in ("G", "D"):
        for key, value in one[model].items():
            if key.endswith(per_rank_buffers) and per_rank_buffers:
                continue
            torch.testing.assert_close(two[model][key], value, atol=1e-5, rtol=1e-4, msg=f"{model}.{key}")
    for key, value in one["augment"].items():  # ADA's p and window: one process's equal the two's
        torch.testing.assert_close(two["augment"][key], value, atol=1e-6, rtol=1e-5, msg=f"augment.{key}")
    assert two["augment_equal_on_ranks"]
    # Training really moved every G parameter, so equality is not that of two untouched copies.
    # (Constants: a spectral norm's u of a layer with one output row is a unit scalar, +-1; StyleGAN2's const
    # noise maps.)
    unmoved = [k for k in one["G"] if torch.equal(one["G"][k], one["initial_G"][k])]
    assert all((k.endswith("._u") and one["G"][k].numel() == 1) or k.endswith(".noise_const") for k in unmoved), unmoved
    assert two["identical_after_step"] == [True] * len(two["identical_after_step"])
    return one


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


# The new architectures at CPU width, G without BatchNorm (per-rank batch statistics cannot equal one process's
# at twice the batch without SyncBatchNorm, which PyTorch has for CUDA only; `train.sync_batchnorm` there).

@pytest.mark.slow  # 4 torchrun starts
def test_resnet_sngan_with_diffaugment_and_biggan_conditional_match_one_process(mnist_shards, tmp_path):
    """resnet_sngan (SN D, hinge, 2 D steps per G step) with DiffAugment on everything D sees; biggan
    class-conditional (shared embedding, hierarchical z, self-attention, SN in G and D, orthogonal
    regularization): 2 processes x B equal 1 x 2B. DiffAugment's draws are global (rank r takes its slice)."""
    _assert_two_match_one(tmp_path, "sngan", [
        "resnet_sngan", "8", "3", "model.g_width=16", "model.d_width=16", "model.g_norm=none", "loss.name=hinge",
        "train.d_steps_per_g=2", "augment.name=diffaugment"])
    _assert_two_match_one(tmp_path, "biggan", [
        "biggan", "8", "3", "model.g_width=16", "model.d_width=16", "model.g_norm=none", "loss.name=hinge",
        "model.conditioning=projection", "model.options.attention=[14]",
        "model.options.ortho_reg=0.0001"])


@pytest.mark.slow  # 2 torchrun starts
def test_stylegan2_with_ada_and_lazy_regularization_matches_one_process(mnist_shards, tmp_path):
    """stylegan2 (mapping, modulated convs, const noise, skip G, residual D) with lazy R1 and ADA adjusting p
    every 2 D steps from the sign sums of all ranks: 2 processes equal 1 process, and p is the same on every
    rank and equal to the 1-process p. Per-rank statistics are left out: minibatch stddev groups (0 channels
    here), style mixing (0 here: its draw is per rank, as in the reference) and w_avg (not compared)."""
    one = _assert_two_match_one(tmp_path, "stylegan2", [
        "stylegan2", "8", "4", "model.g_width=32", "model.d_width=32", "model.latent_dim=16",
        "model.options.w_dim=16", "model.options.mapping_layers=2", "model.options.mixing_prob=0",
        "model.options.noise_mode=const", "model.options.mbstd_channels=0", "model.options.pl_weight=0",
        "loss.name=ns", "loss.r1_gamma=1.0", "loss.r1_every=2", "model.d_norm=none",
        "augment.name=ada", "augment.p=0.5", "augment.interval=2", "augment.speed_kimg=1"],
        per_rank_buffers=("w_avg",))
    # p moved (by 8 x 2 / 1000 per adjustment, up or down: r_t = k / 16 never equals the target 0.6).
    assert float(one["augment"]["p"]) != 0.5


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


def test_a_launched_rank_ends_after_flushing_without_the_interpreter_teardown(tiny_shards, tmp_path):
    """torch's DDP keeps the gloo group's threads alive after destroy_process_group; one of them may release a
    finished collective's tensors while the interpreter finalizes, which aborts the rank ("terminate called
    without an active exception": 4 of 117 two-process runs here, each a failed job to torchrun). `gan-dist`
    ends each rank of a multi-process run with its output flushed and its status, before that teardown: an
    atexit hook planted through sitecustomize never runs there, while a single process still exits normally."""
    from tests.distributed import REPO_ROOT, free_port

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "if os.environ.get('GAN_DIST_TEST_TEARDOWN'):\n"
        "    _name = 'teardown-' + os.environ.get('RANK', 'single')\n"
        "    atexit.register(lambda: open(os.path.join(os.environ['GAN_DIST_TEST_TEARDOWN'], _name), 'w').close())\n")
    common = ["configs/debug.yaml", f"data.root={tiny_shards}", "data.auto_prepare=false", "data.loader=memory",
              *MLP, "model.name=mlp", "train.num_steps=2", "log.sample_every=0", "checkpoint.every=0",
              f"run.out_dir={tmp_path}", "dist.cpu=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "GAN_DIST_TEST_TEARDOWN": str(hooks),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(hooks), str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    one = subprocess.run([sys.executable, "-m", "gan_dist", "train", *common, "run.name=one"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stdout + one.stderr
    assert sorted(p.name for p in hooks.glob("teardown-*")) == ["teardown-single"]  # the hook works

    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                          "127.0.0.1", "--master_port", str(free_port()), "-m", "gan_dist", "train", *common,
                          "run.name=two"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "done: 2 steps" in two.stdout  # flushed before the process ended
    assert sorted(p.name for p in hooks.glob("teardown-*")) == ["teardown-single"]
    assert json.loads((tmp_path / "two" / "done.json").read_text())["num_processes"] == 2
