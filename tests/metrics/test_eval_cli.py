"""`gan-dist eval` end to end on a tiny trained run: the table on stdout and the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gan_dist.config import load_config
from gan_dist.train import train

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_eval_command_prints_the_table_and_writes_json(mnist_shards, tmp_path):
    config = load_config(REPO_ROOT / "configs" / "debug.yaml",
                         [f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=tiny"])
    assert train(config) == 0
    out = tmp_path / "eval.json"
    env = {"GAN_DIST_METRICS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "gan_dist", "eval", "--run", str(tmp_path / "tiny"), "--num", "200",
                             "--batch-size", "64", "--out", str(out)], capture_output=True, text=True,
                            env={**os.environ, **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "real floor" in result.stdout and "fid" in result.stdout
    record = json.loads(out.read_text())
    assert record["step"] == 8 and record["num_images"] == 200
    assert record["metrics"]["fid"] > record["floor"]["fid"]
    assert len(record["class_fractions"]) == 10
    assert sorted((tmp_path / "cache").iterdir())  # the reference and the floor were cached
