"""Single-process training on the real MNIST shards: outputs, resume, preemption, precision, trackers."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from gan_dist.checkpoint import complete_checkpoints, select_resume
from gan_dist.cli import main as cli_main
from gan_dist.configure import load_config
from gan_dist.data.shards import shard_urls
from gan_dist.train.trainer import EXIT_STOPPED_EARLY, Trainer, train

LOG_LINE = re.compile(r"^(\d+) \[D loss: (\S+), acc\.: (\S+)%\] \[G loss: (\S+)\]", re.MULTILINE)


def debug_config(shards: Path, out_dir: Path, *overrides: str):
    return load_config("configs/debug.yaml", [f"data.root={shards}", f"run.out_dir={out_dir}", *overrides])


def test_short_run_writes_losses_grids_checkpoints_and_export(mnist_shards, tmp_path, capsys):
    status = cli_main(["train", "configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}",
                       "run.name=short", "train.num_steps=8", "checkpoint.every=4", "checkpoint.keep_last=1"])
    assert status == 0
    run_dir = tmp_path / "short"
    losses = LOG_LINE.findall(capsys.readouterr().out)
    assert [int(step) for step, *_ in losses] == [2, 4, 6, 8]
    assert all(math.isfinite(float(value)) for _, d_loss, acc, g_loss in losses for value in (d_loss, acc, g_loss))
    # Grids at step 1, every sample_every (4) and at the end; 2x2 grid of 28x28 images with 2px padding,
    # each pixel shown as a 4x4 block (log.grid_pixel_scale=0: auto, 28 -> 4).
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == [
        "step_00000001.png", "step_00000004.png", "step_00000008.png"]
    assert Image.open(run_dir / "samples" / "step_00000008.png").size == (4 * (2 + 2 * 30), 4 * (2 + 2 * 30))
    # keep_last=1: only the final checkpoint remains, complete, with its exported generator.
    assert [step for step, _ in complete_checkpoints(run_dir)] == [8]
    final = run_dir / "checkpoints" / "step_00000008"
    names = {p.name for p in final.iterdir()}
    assert names == {"G.safetensors", "D.safetensors", "optimizer_G.safetensors", "optimizer_G.json",
                     "optimizer_D.safetensors", "optimizer_D.json", "rng_rank0.safetensors", "rng_rank0.json",
                     "train_state.json", "generator.safetensors", "generator.yaml", "meta.json"}
    assert not [name for name in names if name.endswith((".pkl", ".bin", ".pt"))]  # nothing unpickled, ever
    assert json.loads((run_dir / "run.json").read_text())["mixed_precision"] == "no"
    done = json.loads((run_dir / "done.json").read_text())
    assert (done["step"], done["images_seen"], done["num_processes"]) == (8, 64, 1)
    assert load_config(run_dir / "config.yaml") == load_config(
        "configs/debug.yaml", [f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=short",
                               "train.num_steps=8", "checkpoint.every=4", "checkpoint.keep_last=1"])
    # `gan-dist sample` from the run folder: a grid and the raw uint8 images.
    grid_path, npz_path = tmp_path / "grid.png", tmp_path / "samples.npz"
    assert cli_main(["sample", "--run", str(run_dir), "--num", "16", "--out", str(grid_path),
                     "--npz", str(npz_path)]) == 0
    images = np.load(npz_path)["images"]
    assert images.shape == (16, 28, 28) and images.dtype == np.uint8
    assert Image.open(grid_path).size == (4 * (2 + 4 * 30), 4 * (2 + 4 * 30))


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    step, path = complete_checkpoints(run_dir)[-1]
    tensors = {f"G.{k}": v for k, v in load_file(str(path / "G.safetensors")).items()}
    tensors.update({f"D.{k}": v for k, v in load_file(str(path / "D.safetensors")).items()})
    tensors.update({f"G_ema.{k}": v for k, v in load_file(str(path / "G_ema.safetensors")).items()})
    for name in ("optimizer_G.safetensors", "optimizer_D.safetensors"):
        tensors.update({f"{name}.{k}": v for k, v in load_file(str(path / name)).items()})
    return tensors


def _kill_self_when(trainer: Trainer, step: int) -> threading.Thread:
    """SIGUSR1 to this process once the trainer reaches `step`, as SLURM does before a time limit."""

    def watch() -> None:
        while trainer.counters.step < step:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR1)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_preempted_then_resumed_equals_uninterrupted(mnist_shards, tmp_path):
    """N steps straight vs SIGUSR1 mid-run (checkpoint, exit 75) + --resume auto: identical parameters."""
    overrides = ("train.num_steps=10", "checkpoint.every=100", "train.ema_decay=0.9", "run.deterministic=true",
                 "log.sample_every=0")
    assert train(debug_config(mnist_shards, tmp_path, "run.name=straight", *overrides)) == 0

    trainer = Trainer(debug_config(mnist_shards, tmp_path, "run.name=split", *overrides))
    _kill_self_when(trainer, 4)
    try:
        assert trainer.fit() == EXIT_STOPPED_EARLY
    finally:
        trainer.close()
    stopped_at = [step for step, _ in complete_checkpoints(tmp_path / "split")]
    assert len(stopped_at) == 1 and 4 <= stopped_at[0] < 10
    assert not (tmp_path / "split" / "done.json").exists()

    resumed = Trainer(debug_config(mnist_shards, tmp_path, "run.name=split", "checkpoint.resume=auto", *overrides))
    assert resumed.counters.step == stopped_at[0]
    try:
        assert resumed.fit() == 0
    finally:
        resumed.close()
    straight, split = _final_state(tmp_path / "straight"), _final_state(tmp_path / "split")
    assert straight.keys() == split.keys()
    for name, value in straight.items():
        assert torch.equal(value, split[name]), name
    done_straight = json.loads((tmp_path / "straight" / "done.json").read_text())
    done_split = json.loads((tmp_path / "split" / "done.json").read_text())
    assert (done_split["step"], done_split["images_seen"]) == (done_straight["step"], done_straight["images_seen"])


def test_resume_auto_ignores_partial_checkpoints(mnist_shards, tmp_path):
    assert train(debug_config(mnist_shards, tmp_path, "run.name=r", "train.num_steps=4", "checkpoint.every=2",
                              "checkpoint.keep_last=5")) == 0
    run_dir = tmp_path / "r"
    # A kill during a later write leaves a temp folder, or (another filesystem) a folder without meta.json.
    (run_dir / "checkpoints" / ".tmp-step_00000006").mkdir()
    (run_dir / "checkpoints" / "step_00000008").mkdir()
    (run_dir / "checkpoints" / "step_00000008" / "model.safetensors").write_bytes(b"partial")
    assert select_resume(run_dir, "auto") == run_dir / "checkpoints" / "step_00000004"
    resumed = Trainer(debug_config(mnist_shards, tmp_path, "run.name=r", "train.num_steps=6", "checkpoint.resume=auto"))
    try:
        assert resumed.counters.step == 4
        assert resumed.fit() == 0
    finally:
        resumed.close()
    assert json.loads((run_dir / "done.json").read_text())["step"] == 6
    # A repeated (e.g. requeued) start of the finished run does nothing and rewrites nothing.
    final_meta = run_dir / "checkpoints" / "step_00000006" / "meta.json"
    written_at = final_meta.stat().st_mtime_ns
    assert train(debug_config(mnist_shards, tmp_path, "run.name=r", "train.num_steps=6",
                              "checkpoint.resume=auto")) == 0
    assert final_meta.stat().st_mtime_ns == written_at


def test_bf16_autocast_trains_on_cpu(mnist_shards, tmp_path):
    config = debug_config(mnist_shards, tmp_path, "run.name=bf16", "train.mixed_precision=bf16", "train.num_steps=4")
    trainer = Trainer(config)
    try:
        assert trainer.accelerator.mixed_precision == "bf16"
        real = torch.rand(8, 1, 28, 28) * 2 - 1
        for stats in trainer.step.run(iter([(real, torch.zeros(8, dtype=torch.int64))])):
            assert all(torch.isfinite(v) for v in stats.values())
        with trainer.accelerator.autocast():
            assert trainer.networks.G_wrapped(torch.randn(2, config.model.latent_dim)).dtype == torch.float32  # outputs upcast
        assert trainer.fit() == 0
    finally:
        trainer.close()


def test_trains_from_shards_served_over_http(mnist_shards, tmp_path, http_server):
    base_url = http_server(mnist_shards)
    local_pattern = shard_urls(mnist_shards, "train")  # /cache/mnist-train-{000000..000011}.tar
    urls = local_pattern.replace(str(mnist_shards), base_url)
    assert urls.startswith("http://127.0.0.1:")
    config = debug_config(tmp_path / "no-local-shards", tmp_path, "run.name=http", f"data.train_urls={urls}",
                          "train.num_steps=3", "data.auto_prepare=false")
    assert train(config) == 0
    assert json.loads((tmp_path / "http" / "done.json").read_text())["step"] == 3


def test_wandb_offline_files_hold_the_logged_keys_and_images(mnist_shards, tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    # Any attempt to reach the network fails fast through a closed local port.
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    config = debug_config(mnist_shards, tmp_path, "run.name=wb", "log.tracker=wandb", "train.num_steps=4")
    assert train(config) == 0
    run_dir = tmp_path / "wb"
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    run_id = json.loads((run_dir / "done.json").read_text())["run_id"]
    log_file = offline_runs[0] / f"run-{run_id}.wandb"
    keys = ("train/d_loss", "train/g_loss", "model.name")
    # wandb's service process writes the file; after run.finish() it may still be flushing it (the process's
    # own teardown at exit waits for it), so give it a few seconds here.
    deadline = time.monotonic() + 20
    while not all(key.encode() in log_file.read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.2)
    content = log_file.read_bytes()
    for key in ("train/d_loss", "train/g_loss", "train/d_accuracy", "train/d_real", "train/d_fake",
                "train/images_per_s", "train/lr_g", "train/lr_d", "samples", "model.name"):
        assert key.encode() in content, key
    assert list((offline_runs[0] / "files" / "media" / "images").glob("samples_*.png"))


def test_a_tracker_that_breaks_mid_run_does_not_stop_training(mnist_shards, tmp_path, monkeypatch, capsys):
    """Under SLURM, scancel and preemption SIGTERM wandb's service with the rest of the step: the next log
    call raises. The run must go on to its checkpoint (and here to the end), saying so once."""
    from accelerate import Accelerator

    calls = {"n": 0}
    real_log = Accelerator.log

    def log_then_break(self, values, step=None, log_kwargs=None):
        calls["n"] += 1
        if calls["n"] > 2:
            raise ConnectionResetError("Connection lost")
        return real_log(self, values, step=step, log_kwargs=log_kwargs or {})

    monkeypatch.setattr(Accelerator, "log", log_then_break)
    config = debug_config(mnist_shards, tmp_path, "run.name=broken", "log.tracker=tensorboard",
                          "train.num_steps=8", "log.log_every=2", "log.sample_every=2")
    assert train(config) == 0
    run_dir = tmp_path / "broken"
    assert json.loads((run_dir / "done.json").read_text())["step"] == 8
    assert (run_dir / "checkpoints" / "step_00000008" / "meta.json").is_file()
    assert (run_dir / "samples" / "step_00000008.png").is_file()  # the run folder keeps everything
    err = capsys.readouterr().err
    assert err.count("tracker failed (ConnectionResetError: Connection lost)") == 1, err
    assert calls["n"] == 3  # no further calls once it broke


def test_tensorboard_tracker_writes_events(mnist_shards, tmp_path):
    assert train(debug_config(mnist_shards, tmp_path, "run.name=tb", "log.tracker=tensorboard",
                              "train.num_steps=4")) == 0
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_precision_from_accelerate_launch_is_honoured_or_refused(monkeypatch):
    from gan_dist.config import ConfigError
    from gan_dist.distributed import precision_with_launcher

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert precision_with_launcher("no") == "bf16"  # the config left the default: the launcher decides
    assert precision_with_launcher("bf16") == "bf16"
    with pytest.raises(ConfigError, match="train.mixed_precision=fp16"):
        precision_with_launcher("fp16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert precision_with_launcher("bf16") == "bf16"  # the launcher's default is not a choice


def test_a_train_subset_run_records_its_draw_and_resumes_exactly(tiny_shards, tmp_path):
    """data.train_subset=40 of the 300 synthetic images: run.json records the draw (4 per class, its index digest);
    stopped at step 3 and resumed, the run equals an uninterrupted one (the same subset, the same order); a
    subset larger than the split is refused before anything is written."""
    overrides = ("data.loader=auto", "data.auto_prepare=false", "data.train_subset=40", "train.num_steps=6",
                 "checkpoint.every=3",
                 "train.ema_decay=0.9", "run.deterministic=true", "log.sample_every=0")
    assert train(debug_config(tiny_shards, tmp_path, "run.name=straight", *overrides)) == 0
    record = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert record["loader"] == "memory" and record["train_images"] == 40
    subset = record["train_subset"]
    assert (subset["images"], subset["split_images"], subset["class_counts"]) == (40, 300, [4] * 10)
    assert json.loads((tmp_path / "straight" / "done.json").read_text())["images_seen"] == 6 * 8

    assert train(debug_config(tiny_shards, tmp_path, "run.name=split", *overrides, "train.num_steps=3")) == 0
    assert train(debug_config(tiny_shards, tmp_path, "run.name=split", *overrides, "checkpoint.resume=auto")) == 0
    resumed_record = json.loads((tmp_path / "split" / "run.json").read_text())
    assert resumed_record["train_subset"] == subset and resumed_record["start_step"] == 3
    straight, split = _final_state(tmp_path / "straight"), _final_state(tmp_path / "split")
    for name, value in straight.items():
        assert torch.equal(value, split[name]), name

    from gan_dist.configure import ConfigError

    with pytest.raises(ConfigError, match=r"data.train_subset': 301 is more than the 300 images"):
        Trainer(debug_config(tiny_shards, tmp_path, "run.name=big", "data.loader=auto", "data.auto_prepare=false",
                        "data.train_subset=301"))
    assert not (tmp_path / "big").exists()
