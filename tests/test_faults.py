"""Fault injection on real runs of configs/debug.yaml (data.loader=stream, the debug config's loader):

- SIGKILL at seeded random moments, some of them while a checkpoint is being written (the instant a
  `.tmp-step_*` folder appears, or a few milliseconds later), restarting `gan-dist train --resume auto` after
  each until the run is done: the result must equal an uninterrupted run's bit for bit;
- NaN weights planted in the newest checkpoint with a meta.json rewritten to match (its sizes and hashes
  verify): `--resume auto` must set it aside and fall back, an explicit `--resume PATH` must exit 1 naming
  the file;
- two trainings of one run folder at a random offset (exactly one trains, the other exits 1 naming it), a
  disk filling at a random byte (exit 1 in one line; resume after freeing space completes the run bit for
  bit), a run resumed from a (copied) checkpoint of another run (the source is never written), Ctrl-C at a
  random step (checkpoint, exit 130; a second one stops at once).
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
from tests.filling_disk import FillingDisk

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


# -- new guarantees, each a seeded trial -----------------------------------------------------------------

def _start_named(shards: Path, out_dir: Path, name: str, log: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "gan_dist", "train", "configs/debug.yaml", f"data.root={shards}",
               f"run.out_dir={out_dir}", f"run.name={name}", *COMMON, *extra]
    with open(log, "w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=_environment())


def test_two_writers_of_one_run_folder_at_random_offsets_exactly_one_trains(mnist_shards, tmp_path):
    """Started together or seconds apart: one trains to the end, the other exits 1 naming the holder (its pid)
    before writing anything; nothing of the first is lost."""
    rng = random.Random(KILL_SEED)
    offset = rng.uniform(0.0, 2.0)
    # 60 steps (~4 s here): the first start holds the lock long enough to overlap a second one started up to
    # 2 s later, whatever the start-up jitter.
    extra = ["train.num_steps=60", "--resume", "auto"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    first = _start_named(mnist_shards, tmp_path, "shared", logs[0], *extra)
    time.sleep(offset)
    second = _start_named(mnist_shards, tmp_path, "shared", logs[1], *extra)
    codes = [first.wait(WAIT_S), second.wait(WAIT_S)]
    outputs = [log.read_text() for log in logs]
    assert sorted(codes) == [0, 1], (offset, codes, outputs)
    winner, loser = (0, 1) if codes[0] == 0 else (1, 0)
    pid = (first, second)[winner].pid
    [line] = [line for line in outputs[loser].splitlines() if line.strip()]  # one line, no traceback
    assert f"is in use by pid {pid} on " in line and "choose another run.name" in line, (offset, line)
    run_dir = tmp_path / "shared"
    assert json.loads((run_dir / "done.json").read_text())["step"] == 60
    assert [step for step, _ in complete_checkpoints(run_dir)] == [58, 60]
    for _, path in complete_checkpoints(run_dir):
        verify_checkpoint(path)
    assert len(read_lines(run_dir / "starts.jsonl")) == 1  # the refused start recorded nothing
    assert "removed the unfinished checkpoint write" not in outputs[winner]


def test_a_disk_filling_at_a_random_byte_exits_1_in_one_line_and_resume_after_freeing_space_completes(
        mnist_shards, tmp_path, capsys, monkeypatch, one_thread):
    """ENOSPC from gan_dist.files' writers after a seeded number of bytes (during a start's records, a grid, a
    checkpoint or the export): exit 1, one line naming the file and the free space; then, with space again,
    --resume auto continues from the newest complete checkpoint to the uninterrupted run's result."""
    import gan_dist.files

    def args(name: str, *extra: str) -> list[str]:
        return ["train", "configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}",
                f"run.name={name}", *COMMON, "train.num_steps=8", "log.sample_every=4", *extra]

    meter = FillingDisk(None)
    monkeypatch.setattr(gan_dist.files, "open", meter.open, raising=False)
    assert cli_main(args("straight")) == 0
    total = meter.written  # what an uninterrupted run writes through gan_dist.files
    rng = random.Random(KILL_SEED)
    for trial, budget in enumerate(sorted(rng.randrange(1, total) for _ in range(2))):
        name = f"full{trial}"
        monkeypatch.setattr(gan_dist.files, "open", FillingDisk(budget).open, raising=False)
        capsys.readouterr()
        status = cli_main(args(name))
        err = capsys.readouterr().err
        assert status == 1, (budget, total, err)
        [line] = err.splitlines()  # one line, no traceback
        assert "no space left on device writing " + str(tmp_path / name) in line and " free there" in line, line
        monkeypatch.setattr(gan_dist.files, "open", open, raising=False)  # space freed
        newest = complete_checkpoints(tmp_path / name)
        capsys.readouterr()
        assert cli_main(args(name, "--resume", "auto")) == 0
        out = capsys.readouterr().out
        if newest:
            assert f"resumed from {newest[-1][1]} at step {newest[-1][0]}" in out
        straight, resumed = _tensors_at(tmp_path / "straight", 8), _tensors_at(tmp_path / name, 8)
        assert straight.keys() == resumed.keys()
        for key, value in straight.items():
            assert torch.equal(value, resumed[key]), (budget, key)


def _tensors_at(run_dir: Path, num_steps: int) -> dict[str, torch.Tensor]:
    step, path = complete_checkpoints(run_dir)[-1]
    assert step == num_steps
    tensors = {}
    for name in ("G", "D", "optimizer_G", "optimizer_D"):
        tensors.update({f"{name}.{k}": v for k, v in load_file(str(path / f"{name}.safetensors")).items()})
    tensors.update({f"export.{k}": v for k, v in load_file(str(run_dir / "generator.safetensors")).items()})
    return tensors


def test_a_run_resumed_from_a_copied_checkpoint_never_writes_into_the_source_folder(mnist_shards, tmp_path, capsys,
                                                                                     one_thread):
    """A seeded choice of checkpoint (older or newest of its run), of where it is read (in its run folder or a
    copy in a downloads folder) and of the new run's name: the source folder and the copy's folder are left
    byte for byte as they were; without run.name nothing is written at all (exit 2)."""
    import shutil

    def args(*extra: str) -> list[str]:
        return ["train", "configs/debug.yaml", f"data.root={mnist_shards}", *COMMON, "checkpoint.every=2",
                "checkpoint.keep_last=5", *extra]

    assert cli_main(args(f"run.out_dir={tmp_path / 'runs'}", "run.name=src", "train.num_steps=6")) == 0
    source = tmp_path / "runs" / "src"
    rng = random.Random(KILL_SEED)
    step = rng.choice([2, 4, 6])
    checkpoint_path = source / "checkpoints" / f"step_{step:08d}"
    if rng.random() < 0.5:
        checkpoint_path = Path(shutil.copytree(checkpoint_path, tmp_path / "downloads" / checkpoint_path.name))

    def snapshot() -> dict[str, bytes]:
        return {str(p): p.read_bytes() for folder in (source, tmp_path / "downloads") if folder.exists()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    before = snapshot()
    capsys.readouterr()
    assert cli_main(args(f"run.out_dir={tmp_path / 'runs'}", "train.num_steps=8", "--resume",
                         str(checkpoint_path))) == 2
    assert "key 'run.name'" in capsys.readouterr().err
    out_dir = rng.choice([tmp_path / "runs", tmp_path / "elsewhere"])
    assert cli_main(args(f"run.out_dir={out_dir}", "run.name=new", "train.num_steps=8", "--resume",
                         str(checkpoint_path))) == 0
    assert snapshot() == before, (step, checkpoint_path, out_dir)
    assert json.loads((out_dir / "new" / "done.json").read_text())["step"] == 8
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == (["new", "src"] if out_dir == tmp_path / "runs"
                                                                    else ["src"])


@pytest.mark.slow  # two starts in subprocesses: ~20 s on 2 shared cores
def test_ctrl_c_at_a_random_step_checkpoints_and_exits_130_and_a_second_one_stops_at_once(mnist_shards, tmp_path):
    """SIGINT after a seeded number of steps: the step finishes, a checkpoint of it is written, one line, exit
    130. Then a start that resumes it gets two in quick succession: exit 130 at once, no traceback, and its
    checkpoints all verify."""
    rng = random.Random(KILL_SEED)
    extra = ["train.num_steps=200", "checkpoint.every=100", "--resume", "auto"]
    log = tmp_path / "first.log"
    process = _start_named(mnist_shards, tmp_path, "r", log, *extra)
    steps = rng.randint(2, 6)
    assert _poll(process, lambda: len(STEP_LINE.findall(log.read_text())) >= steps), log.read_text()
    process.send_signal(signal.SIGINT)
    assert process.wait(WAIT_S) == 130, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    match = re.search(r"interrupted \(SIGINT\): checkpoint at step (\d+) in (\S+); continue with --resume auto",
                      output)
    assert match and int(match.group(1)) >= steps, output
    assert [step for step, _ in complete_checkpoints(tmp_path / "r")] == [int(match.group(1))]

    log = tmp_path / "second.log"
    process = _start_named(mnist_shards, tmp_path, "r", log, *extra)
    assert _poll(process, lambda: len(STEP_LINE.findall(log.read_text())) >= 1), log.read_text()
    process.send_signal(signal.SIGINT)
    time.sleep(rng.uniform(0.0, 0.05))
    process.send_signal(signal.SIGINT)
    assert process.wait(WAIT_S) == 130, log.read_text()
    output = log.read_text()
    assert "Traceback" not in output, output
    assert "gan-dist train: interrupted (Ctrl-C), stopped at once" in output or "interrupted (SIGINT)" in output
    assert "resumed from" in output
    for _, path in complete_checkpoints(tmp_path / "r"):  # what the abort left resumes (--resume auto)
        verify_checkpoint(path)
