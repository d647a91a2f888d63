"""The benchmark's logic on the CPU with tiny settings: every objective and both loaders measured against
the bare loop in one run, and the prepared GPU check script in its CPU mode."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gan_dist.bench import bench_training
from gan_dist.config import load_config

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
        assert math.isclose(row["ratio"], row["framework_images_per_s"] / row["bare_images_per_s"])
        assert row["flops_per_step"] > 0 and row["bound"] == "cpu" and row["adam"] == "fused"
    # The gradient penalty's double backward costs FLOPs the other objectives do not have.
    flops = {r["objective"]: r["flops_per_step"] for r in rows if r["loader"] == "memory"}
    assert flops["wgan_gp"] > 1.3 * flops["ns"]
    assert json.loads((tmp_path / "bench.json").read_text()) == json.loads(json.dumps(rows))
    assert "framework img/s" in capsys.readouterr().out


@pytest.mark.slow
def test_the_gpu_check_script_runs_in_its_cpu_mode(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gpu_check.py"), "--out", str(out),
                             "--device", "cpu", "--small"], capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    [resume] = report["resume"]
    assert resume["precision"] == "bf16" and resume["exact"] and resume["finite"]
    assert {row["loader"] for row in report["bench"]} == {"stream", "memory"}
