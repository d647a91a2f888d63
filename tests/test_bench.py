"""The benchmark's logic on the CPU with tiny settings: every objective and both loaders measured against
the bare loop in one run, both sides doing the same work (lazy R1), and the prepared GPU check script in its
CPU mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gan_dist.objectives.objective as objective_module
from gan_dist.bench.training import (
    BenchCase,
    FrameworkRunner,
    _bare_step,
    bench_training,
    case_config,
    count_flops,
    time_interleaved,
)
from gan_dist.configure import load_config, validate

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_bench_measures_every_objective_and_loader_against_the_bare_loop(mnist_shards, tmp_path, capsys):
    config = load_config("configs/debug.yaml", [f"data.root={mnist_shards}", f"run.out_dir={tmp_path}"])
    rows = bench_training(config, batch_sizes=[8], num_steps=3, warmup_steps=1, precisions=["no"],
                          loaders=["stream", "memory"], modes=["eager"], objectives=["ns", "lsgan", "wgan_gp", "hinge"],
                          device="cpu", repeats=1, out_json=str(tmp_path / "bench.json"))
    assert [(r["loader"], r["objective"]) for r in rows] == [
        (loader, objective) for loader in ("stream", "memory") for objective in ("ns", "lsgan", "wgan_gp", "hinge")]
    for row in rows:
        assert row["framework_images_per_s"] > 0 and row["bare_images_per_s"] > 0
        low, high = row["ratio_range"]
        assert 0 < low <= row["ratio"] <= high
        assert row["flops_per_step"] > 0 and row["bound"] == "cpu" and row["adam"] == "fused"
    # The gradient penalty's double backward costs FLOPs the other objectives do not have.
    flops = {r["objective"]: r["flops_per_step"] for r in rows if r["loader"] == "memory"}
    assert flops["wgan_gp"] > 1.3 * flops["ns"]
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(rows))
    assert "framework img/s" in capsys.readouterr().out


def test_chunks_alternate_so_that_drift_hits_both_sides():
    """Each round times one chunk per side, the side that goes first alternating, so a machine that slows
    down over the run slows both sides alike and each round's pair is adjacent in time."""
    order: list[tuple[str, int]] = []

    class Side:
        def __init__(self, name: str):
            self.name = name

        def run(self, num_steps: int) -> None:
            order.append((self.name, num_steps))

    framework, bare = Side("framework"), Side("bare")
    framework_s, bare_s = time_interleaved(framework, bare, num_steps=7, rounds=4)
    assert [name for name, _ in order] == ["framework", "bare", "bare", "framework"] * 2
    assert {steps for _, steps in order} == {7}
    assert len(framework_s) == len(bare_s) == 4


def test_the_bare_loop_applies_lazy_r1_on_the_frameworks_schedule(tiny_shards, tmp_path, monkeypatch):
    """loss.r1_every=4 with 2 D steps per G step: R1 at D steps 0, 4, ... in the framework and the bare loop
    alike, so their ratio compares equal work."""
    config = load_config("configs/debug.yaml", [
        f"data.root={tiny_shards}", "data.auto_prepare=false", f"run.out_dir={tmp_path}", "log.tracker=none",
        "loss.name=hinge", "loss.r1_gamma=1", "loss.r1_every=4", "model.d_norm=layer", "train.d_steps_per_g=2"])
    calls: list[int] = []
    r1_penalty = objective_module.r1_penalty
    monkeypatch.setattr(objective_module, "r1_penalty", lambda grads: calls.append(1) or r1_penalty(grads))
    framework = FrameworkRunner(config)
    try:
        framework.run(4)  # 4 G steps = 8 D steps
    finally:
        framework.close()
    framework_calls, calls[:] = len(calls), []
    step, tensors = _bare_step(config, torch.device("cpu"), (1, 28, 28), 0)
    for _ in range(4):
        step(tensors[0], tensors[-1])
    assert framework_calls == len(calls) == 2
    # The FLOPs of a step average R1 over its schedule: between no R1 and R1 at every D step.
    every_step = load_config("configs/debug.yaml", ["loss.name=hinge", "loss.r1_gamma=1", "model.d_norm=layer",
                                                    "train.d_steps_per_g=2"])
    flops = {name: count_flops(cfg, torch.device("cpu"), (1, 28, 28), 0) for name, cfg in (
        ("lazy", config), ("every", every_step), ("none", load_config("configs/debug.yaml", [
            "loss.name=hinge", "model.d_norm=layer", "train.d_steps_per_g=2"])))}
    assert flops["none"] < flops["lazy"] < flops["every"]
    assert flops["lazy"] == pytest.approx(flops["none"] + (flops["every"] - flops["none"]) / 4, rel=1e-6)


def test_a_case_whose_loss_penalizes_gradients_gets_a_critic_without_batchnorm():
    config = load_config("configs/debug.yaml")  # d_norm=batch
    for objective in ("ns", "lsgan", "wgan_gp", "hinge"):
        case = case_config(config, BenchCase(8, "no", "memory", "eager", objective, False), "cpu")
        assert case.model.d_norm == ("layer" if objective == "wgan_gp" else "batch")
        validate(case)


@pytest.mark.slow
def test_the_gpu_check_script_runs_in_its_cpu_mode(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_check.py"), "--out", str(out),
                             "--device", "cpu", "--small"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert summary == {"env": "pass", "sync": "skipped", "numerics": "skipped", "resume": "pass",
                       "cuda_graph": "skipped", "bench": "pass", "compile": "skipped"}
    phases = {line["phase"]: line for line in map(json.loads, (out / "report.jsonl").read_text().splitlines())}
    [resume] = phases["resume"]["runs"]
    assert resume["precision"] == "bf16" and resume["exact"] and resume["finite"]
    # G, D, G_ema and both optimizers are compared (the EMA and Adam's moments, not only the weights)
    assert resume["tensors"] > 50 and json.loads((out / "bench.json").read_text())[0]["loader"] == "memory"


def test_the_gpu_check_script_fails_when_a_phase_cannot_run(tmp_path):
    """A check that can fail: a phase that does not run to its end (here: no time left for it) makes the whole
    script exit 1 and say which."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path),
                             "--device", "cpu", "--small", "--phases", "resume", "--budget-s", "0"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1 and "resume: FAIL" in result.stdout and "budget" in result.stdout, result.stdout
