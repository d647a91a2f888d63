"""Reliability and security of real training runs: planted pickles never run, damaged checkpoints are set
aside and an older one resumed, divergence stops the run without saving anything non-finite."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gan_dist.checkpoint import complete_checkpoints, verify_checkpoint
from gan_dist.cli import main as cli_main
from gan_dist.configure import load_config
from gan_dist.files import read_lines
from gan_dist.train.trainer import EXIT_DIVERGED, train


def run_config(shards: Path, out_dir: Path, *overrides: str):
    return load_config("configs/debug.yaml", [f"data.root={shards}", f"run.out_dir={out_dir}", "run.name=r",
                                              "log.sample_every=0", *overrides])


class Payload:
    """Unpickling this runs `touch MARKER` (what a crafted checkpoint file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


def test_planted_pickles_never_run_and_resume_falls_back(mnist_shards, tmp_path, monkeypatch, capsys):
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=4", "checkpoint.every=2",
                            "checkpoint.keep_last=5")) == 0
    run_dir = tmp_path / "r"
    newest = run_dir / "checkpoints" / "step_00000004"
    marker = tmp_path / "MARKER"
    # accelerate's pickle file names (what an older gan_dist or a crafted folder holds) and a replaced
    # optimizer file: none of them may ever be unpickled.
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scaler.pt", "optimizer_D.safetensors"):
        _plant(newest / name, marker)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a) or pytest.fail("torch.load called"))
    capsys.readouterr()
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=6", "checkpoint.resume=auto")) == 0
    out, err = capsys.readouterr()
    assert not marker.exists() and not loads
    assert "checkpoint at step 4 is damaged" in err and "optimizer_D.safetensors: " in err
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in out
    assert [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("damaged-")]
    assert json.loads((run_dir / "done.json").read_text())["step"] == 6


def test_an_explicit_resume_of_a_damaged_checkpoint_exits_1_naming_the_file(mnist_shards, tmp_path, capsys):
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=2", "checkpoint.every=2")) == 0
    path = tmp_path / "r" / "checkpoints" / "step_00000002"
    (path / "rng_rank0.json").write_text("{")
    status = cli_main(["train", "configs/debug.yaml", f"data.root={mnist_shards}", f"run.out_dir={tmp_path}",
                       "run.name=r", "train.num_steps=4", "--resume", str(path)])
    err = capsys.readouterr().err
    assert status == 1
    assert err.strip().count("\n") == 0 and "rng_rank0.json" in err and "Traceback" not in err
    assert path.is_dir()  # an explicitly named checkpoint is reported, not moved


@pytest.mark.parametrize("damage", ["truncated D weights", "missing optimizer file", "unreadable RNG state"])
def test_every_later_start_recovers_from_a_damaged_newest_checkpoint(mnist_shards, tmp_path, damage, capsys):
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=4", "checkpoint.every=2",
                            "checkpoint.keep_last=5")) == 0
    newest = tmp_path / "r" / "checkpoints" / "step_00000004"
    if damage == "truncated D weights":
        data = (newest / "D.safetensors").read_bytes()
        (newest / "D.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "missing optimizer file":
        (newest / "optimizer_G.json").unlink()
    else:
        (newest / "rng_rank0.safetensors").write_bytes(b"\x00" * 16)
    for num_steps in (6, 8):  # the first start sets the damaged one aside; the next one is not bothered
        assert train(run_config(mnist_shards, tmp_path, f"train.num_steps={num_steps}", "checkpoint.resume=auto",
                                "checkpoint.every=2", "checkpoint.keep_last=5")) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "step_00000002 at step 2" in out and "step_00000006 at step 6" in out
    assert [step for step, _ in complete_checkpoints(tmp_path / "r")] == [2, 4, 6, 8]


DIVERGING = ["loss.name=lsgan", "model.g_norm=none", "model.d_norm=none"]


@pytest.mark.parametrize("log_every", [1, 100])  # caught at the log cadence, or before the next checkpoint
def test_divergence_stops_the_run_and_saves_nothing_non_finite(mnist_shards, tmp_path, capsys, log_every):
    common = [*DIVERGING, "checkpoint.keep_last=1", f"log.log_every={log_every}"]
    assert train(run_config(mnist_shards, tmp_path, *common, "train.num_steps=4", "checkpoint.every=2")) == 0
    run_dir = tmp_path / "r"
    export_before = (run_dir / "generator.safetensors").read_bytes()
    capsys.readouterr()
    # The same run continued with an absurd learning rate: its losses overflow within a step or two.
    status = train(run_config(mnist_shards, tmp_path, *common, "train.num_steps=30", "checkpoint.every=1",
                              "checkpoint.resume=auto", "optim.lr_d=1e6", "optim.lr_g=1e6"))
    err = capsys.readouterr().err
    assert status == EXIT_DIVERGED
    [line] = [line for line in err.splitlines() if "diverged" in line]
    match = re.search(r"training diverged: (\w+) became (nan|inf|-inf) at step (\d+)", line)
    assert match and int(match.group(3)) > 4, line
    assert "step_00000004" in line  # the newest good checkpoint is named
    # Retention never deleted the newest finite checkpoint, nothing newer was written, all of it is finite.
    [(step, path)] = complete_checkpoints(run_dir)
    assert step == 4
    verify_checkpoint(path)
    for name in ("G.safetensors", "D.safetensors", "optimizer_D.safetensors", "generator.safetensors"):
        assert all(t.isfinite().all() for t in load_file(str(path / name)).values()), name
    assert (run_dir / "generator.safetensors").read_bytes() == export_before  # no non-finite export
    assert not (run_dir / "done.json").exists()
    # After a fix of the recipe, the run continues from the newest good checkpoint.
    capsys.readouterr()
    assert train(run_config(mnist_shards, tmp_path, *common, "train.num_steps=8", "checkpoint.resume=auto")) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((run_dir / "done.json").read_text())["step"] == 8


def test_the_run_folder_records_every_start_and_a_failed_resume_changes_nothing(mnist_shards, tmp_path, capsys):
    """What each segment of a run used is recoverable: config.yaml / run.json are the latest successful
    start's, starts.jsonl holds one line per start; a changed optimizer setting is applied and said."""
    run_dir = tmp_path / "r"
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=2", "checkpoint.every=2")) == 0
    capsys.readouterr()
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=4", "checkpoint.every=2",
                            "checkpoint.resume=auto", "optim.lr_d=1e-4")) == 0
    out = capsys.readouterr().out
    assert "optimizer setting changed on resume: optimizer_D lr 0.0002 -> 0.0001 (optim.lr_d" in out
    assert "optimizer_G" not in out
    record = {name: (run_dir / name).read_text() for name in ("config.yaml", "run.json", "starts.jsonl")}
    # A start whose (explicit) resume fails must not pass for what the run used.
    damaged = run_dir / "checkpoints" / "step_00000002"
    (damaged / "train_state.json").write_text("{")
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=6", f"checkpoint.resume={damaged}",
                            "optim.lr_d=5e-5")) == 1
    assert {name: (run_dir / name).read_text() for name in record} == record
    assert load_config(run_dir / "config.yaml").optim.lr_d == 1e-4
    starts = read_lines(run_dir / "starts.jsonl")
    assert [(s["start_step"], s["resumed_from"]) for s in starts] == [
        (0, None), (2, str(run_dir / "checkpoints" / "step_00000002"))]
    assert [s["config"]["optim"]["lr_d"] for s in starts] == [2e-4, 1e-4]
    assert starts[0]["resume_notes"] == [] and "optim.lr_d" in starts[1]["resume_notes"][0]
    assert starts[0]["record"]["run_id"] == starts[1]["record"]["run_id"] == json.loads(record["run.json"])["run_id"]


def test_auto_falls_back_past_a_checkpoint_that_does_not_fit_the_model(mnist_shards, tmp_path, capsys):
    """A checkpoint whose files verify (meta.json agrees) but whose G lacks a tensor: set aside, not exit 1."""
    common = ("checkpoint.every=2", "checkpoint.keep_last=5")
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=4", *common)) == 0
    run_dir = tmp_path / "r"
    newest = run_dir / "checkpoints" / "step_00000004"
    tensors = load_file(str(newest / "G.safetensors"))
    tensors.pop(sorted(tensors)[-1])
    save_file(tensors, str(newest / "G.safetensors"))
    data = (newest / "G.safetensors").read_bytes()
    meta = json.loads((newest / "meta.json").read_text())
    meta["files"]["G.safetensors"] = {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (newest / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert train(run_config(mnist_shards, tmp_path, "train.num_steps=6", "checkpoint.resume=auto", *common)) == 0
    out, err = capsys.readouterr()
    assert "step_00000004 could not be loaded and was set aside" in err and "G.safetensors: weights do not fit" in err
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000002'} at step 2" in out
    assert json.loads((run_dir / "done.json").read_text())["step"] == 6
