"""train.compile=true through the whole Trainer on the CPU: a short run writes its checkpoint and done.json
with finite losses, and resuming from that checkpoint compiles again and carries on.

aot_eager traces G's and D's forward and backward through dynamo and AOTAutograd like inductor does, without
generating C++; the inductor case runs the code the Trainer runs by default (torch.compile's default
backend), whose first compile of these graphs takes minutes on 2 cores (later ones hit its cache)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from gan_dist.configure import load_config
from gan_dist.train.trainer import train

LOSSES = re.compile(r"^(\d+) \[D loss: (\S+), acc\.: \S+%\] \[G loss: (\S+)\]", re.MULTILINE)


@pytest.mark.slow  # about 25 s with aot_eager here; inductor's first compile takes minutes on 2 cores
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_run_checkpoints_finishes_and_resumes(backend, tiny_shards, tmp_path, monkeypatch, capsys):
    compiled: list[str] = []
    real_compile = torch.compile

    def compile_with_backend(model: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
        compiled.append(type(model).__name__)
        return real_compile(model, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch, "compile", compile_with_backend)
    torch._dynamo.reset()

    def run(num_steps: int, *overrides: str) -> list[tuple[str, str, str]]:
        config = load_config("configs/debug.yaml", [
            f"data.root={tiny_shards}", "data.auto_prepare=false", f"run.out_dir={tmp_path}", "run.name=compiled",
            "train.compile=true", f"train.num_steps={num_steps}", "log.log_every=1", "checkpoint.every=2",
            *overrides])
        assert train(config) == 0
        return LOSSES.findall(capsys.readouterr().out)

    first = run(2)
    run_dir = Path(tmp_path) / "compiled"
    assert sorted(compiled) == ["KerasDCGANDiscriminator", "KerasDCGANGenerator"]  # the Trainer compiled G and D
    assert [int(step) for step, *_ in first] == [1, 2]
    assert (run_dir / "checkpoints" / "step_00000002" / "meta.json").is_file()
    assert json.loads((run_dir / "done.json").read_text())["step"] == 2

    resumed = run(4, "checkpoint.resume=auto")
    assert len(compiled) == 4  # compiled again after the resume
    assert [int(step) for step, *_ in resumed] == [3, 4]  # carried on from step 2
    assert json.loads((run_dir / "done.json").read_text())["step"] == 4
    assert (run_dir / "checkpoints" / "step_00000004" / "meta.json").is_file()
    assert all(math.isfinite(float(value)) for _, d_loss, g_loss in first + resumed for value in (d_loss, g_loss))


@pytest.mark.slow  # ~15 s per objective with aot_eager
@pytest.mark.parametrize("overrides", [
    ["loss.name=ns"], ["loss.name=minimax"], ["loss.name=lsgan"], ["loss.name=hinge"],
    ["loss.name=wgan_gp", "model.d_norm=layer", "train.d_steps_per_g=2"],
    ["loss.name=hinge", "loss.r1_gamma=1", "loss.r1_every=2", "model.d_norm=none"],
], ids=["ns", "minimax", "lsgan", "hinge", "wgan_gp", "hinge+r1"])
def test_every_objective_trains_compiled(overrides, tiny_shards, tmp_path, monkeypatch):
    """The penalized forwards (WGAN-GP's interpolates, R1's reals) run through the uncompiled D: AOTAutograd
    has no double backward, and before they did every penalized step crashed."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: real_compile(model, **{**kwargs,
                                                                                        "backend": "aot_eager"}))
    torch._dynamo.reset()
    config = load_config("configs/debug.yaml", [
        f"data.root={tiny_shards}", "data.auto_prepare=false", f"run.out_dir={tmp_path}", "run.name=c",
        "train.compile=true", "train.num_steps=3", "log.log_every=1", "checkpoint.every=0", "eval.eval_every=-1",
        "log.tracker=none", *overrides])
    assert train(config) == 0
    assert json.loads((Path(tmp_path) / "c" / "done.json").read_text())["step"] == 3
