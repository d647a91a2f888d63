"""Fault injection on real runs of configs/debug.yaml (data.loader=stream, the debug config's loader):

- SIGKILL at seeded random moments, some of them while a checkpoint is being written (the instant a
  `.tmp-step_*` folder appears, or a few milliseconds later), restarting `gan-dist train --resume auto` after
  each until the run is done: the result must equal an uninterrupted run's bit for bit;
- NaN weights planted in the newest checkpoint with a meta.json rewritten to match (its sizes and hashes
  verify): `--resume auto` must set it aside and fall back, an explicit `--resume PATH` must exit 1 naming
  the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gan_dist.checkpoint import complete_checkpoints, verify_checkpoint
from gan_dist.cli import main as cli_main
from gan_dist.configure import load_config
from gan_dist.files import read_lines
from gan_dist.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
# The kill plan (kinds, order, delays) is seeded: GAN_DIST_KILL_SEED=N explores others. Where a kill lands
# still depends on the machine's speed; every landing must give the same result.
KILL_SEED = int(os.environ.get("GAN_DIST_KILL_SEED", "8"))
NUM_STEPS = 12  # a start takes ~4 s here, almost all of it imports: the steps themselves ~1 s
COMMON = ["train.num_steps=12", "checkpoint.every=2", "checkpoint.keep_last=2", "train.ema_decay=0.9",
          "log.log_every=1", "data.num_workers=0", "log.tracker=none"]
STEP_LINE = re.compile(r"^\d+ \[D loss", re.MULTILINE)
WAIT_S = 120.0  # per start: far above a normal start; a hang fails the test instead of blocking the suite


def _environment() -> dict[str, str]:
    # One OpenMP thread per process: with 2 shared cores, spinning OpenMP threads make starts several times
    # slower. Both the reference and the killed run use it (bit-exactness needs the same thread count).
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(shards: Path, out_dir: Path, name: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "gan_dist", "train", "configs/debug.yaml", f"data.root={shards}",
               f"run.out_dir={out_dir}", f"run.name={name}", *COMMON, "--resume", "auto"]
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=_environment())


def _poll(process: subprocess.Popen, condition: Callable[[], bool]) -> bool:
    """Wait until `condition()` (True) or the process exits by itself (False)."""
    deadline = time.monotonic() + WAIT_S
    while process.poll() is None:
        if condition():
            return True
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"a start ran for over {WAIT_S} s")
        time.sleep(0.0005)
    return False


def _writing(checkpoints: Path) -> bool:
    """Whether a checkpoint write is in progress (or was left by a kill): a `.tmp-step_*` folder exists."""
    try:
        return any(name.startswith(".tmp-") for name in os.listdir(checkpoints))
    except FileNotFoundError:
        return False


def _tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the final checkpoint (G, D, G_ema, both optimizers) and of the exported generator."""
    step, path = complete_checkpoints(run_dir)[-1]
    assert step == NUM_STEPS
    tensors = {}
    for name in ("G", "D", "G_ema", "optimizer_G", "optimizer_D", "generator"):
        tensors.update({f"{name}.{k}": v for k, v in load_file(str(path / f"{name}.safetensors")).items()})
    tensors.update({f"export.{k}": v for k, v in load_file(str(run_dir / "generator.safetensors")).items()})
    return tensors


def test_sigkill_at_random_moments_then_resume_auto_equals_an_uninterrupted_run(mnist_shards, tmp_path):
    reference = _start(mnist_shards, tmp_path, "straight", tmp_path / "straight.log")  # runs alongside
    rng = random.Random(KILL_SEED)
    # Two kills while a checkpoint is written (at once, and a few ms in), one at a random moment of a step.
    plan = [("write", 0.0), ("write", rng.uniform(0.0, 0.03)), ("moment", rng.uniform(0.0, 0.3))]
    rng.shuffle(plan)
    run_dir = tmp_path / "killed"
    checkpoints = run_dir / "checkpoints"
    killed_mid_write, logs = [], []
    for kind, delay in plan:
        logs.append(tmp_path / f"start{len(logs)}.log")
        process = _start(mnist_shards, tmp_path, "killed", logs[-1])
        if kind == "write":
            # During this start's first or second checkpoint write. A `.tmp-` left by the previous kill is
            # removed at start: each write is waited for as "no .tmp- folder, then one".
            reached = all(_poll(process, lambda: not _writing(checkpoints)) and _poll(process, lambda: _writing(checkpoints))
                          for _ in range(rng.randint(1, 2)))
        else:
            # After this start's 3rd to 6th step (so its first checkpoint is published: the next start resumes).
            steps = rng.randint(3, 6)
            reached = _poll(process, lambda log=logs[-1], steps=steps: len(STEP_LINE.findall(log.read_text())) >= steps)
        if not reached:  # the run finished first
            assert process.returncode == 0, logs[-1].read_text()
            break
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed_mid_write.append(_writing(checkpoints))
    logs.append(tmp_path / f"start{len(logs)}.log")
    assert _start(mnist_shards, tmp_path, "killed", logs[-1]).wait(WAIT_S) == 0, logs[-1].read_text()
    assert reference.wait(WAIT_S) == 0, (tmp_path / "straight.log").read_text()

    # At least one kill interrupted a checkpoint write, and the next start cleaned it up; a start resumed.
    assert any(killed_mid_write), killed_mid_write
    output = "".join(log.read_text() for log in logs)
    assert "removed the unfinished checkpoint write" in output and "resumed from" in output
    # No kill ever produced a checkpoint that fails verification (publishing is atomic).
    assert not [p for p in checkpoints.iterdir() if p.name.startswith("damaged-")]
    for _, path in complete_checkpoints(run_dir):
        verify_checkpoint(path)
    assert json.loads((run_dir / "done.json").read_text())["step"] == NUM_STEPS
    assert json.loads((run_dir / "run.json").read_text())["loader"] == "stream"

    straight, killed = _tensors(tmp_path / "straight"), _tensors(run_dir)
    assert straight.keys() == killed.keys()
    for key, value in straight.items():
        assert torch.equal(value, killed[key]), key
    assert (run_dir / "generator.safetensors").read_bytes() == (tmp_path / "straight" / "generator.safetensors").read_bytes()
    # Every start that got past its resume is on record, in order, with what it resumed from.
    starts = read_lines(run_dir / "starts.jsonl")
    assert starts and starts[-1]["resumed_from"] is not None
    assert [s["start_step"] for s in starts] == sorted(s["start_step"] for s in starts)


def _plant_nan(checkpoint: Path, name: str) -> None:
    """A NaN in the first floating-point tensor of `name`, and meta.json rewritten to match it."""
    tensors = load_file(str(checkpoint / name))
    key = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel() > 0)
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(checkpoint / name))
    data = (checkpoint / name).read_bytes()
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"][name] = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def one_thread():
    """In-process runs with one intra-op thread, as the subprocesses above (2 shared cores: see _environment)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nan_weights_in_the_newest_checkpoint_are_set_aside_and_an_older_one_resumed(mnist_shards, tmp_path, capsys,
                                                                                      one_thread):
    def config(*overrides: str):
        return load_config("configs/debug.yaml", [f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=r",
                                                  "log.sample_every=0", "checkpoint.every=2", "checkpoint.keep_last=5",
                                                  "data.num_workers=0", "log.tracker=none", *overrides])

    assert train(config("train.num_steps=4")) == 0
    run_dir = tmp_path / "r"
    newest = run_dir / "checkpoints" / "step_00000004"
    _plant_nan(newest, "G.safetensors")
    capsys.readouterr()

    # Named explicitly: one line naming the file, exit 1, the checkpoint left where it is.
    status = cli_main(["train", "configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}",
                       "run.name=r", "train.num_steps=6", "--resume", str(newest)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "G.safetensors: tensor" in err and "non-finite" in err
    assert newest.is_dir()

    # auto: set aside with the reason, the previous complete checkpoint resumed, the run finished, finite.
    assert train(config("train.num_steps=6", "checkpoint.resume=auto")) == 0
    out, err = capsys.readouterr()
    assert "checkpoint at step 4 is damaged" in err and "G.safetensors: tensor" in err
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in out
    [aside] = [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("damaged-")]
    assert aside.name.endswith("step_00000004") and "non-finite" in (aside / "SET_ASIDE.txt").read_text()
    assert json.loads((run_dir / "done.json").read_text())["step"] == 6
    assert [step for step, _ in complete_checkpoints(run_dir)] == [2, 4, 6]  # a new, finite step 4
    for _, path in complete_checkpoints(run_dir):
        verify_checkpoint(path)
    assert all(t.isfinite().all() for t in load_file(str(run_dir / "generator.safetensors")).values())
