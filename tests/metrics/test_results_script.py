"""scripts/results.py end to end on a tiny schedule: table, JSON and the sample figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_results_script_writes_table_json_and_figure(mnist_shards, tmp_path):
    out = tmp_path / "results"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "results.py"), "--out", str(out), "--models", "mlp",
               "--steps", "2", "4", "--grid-steps", "1", "--num", "100",
               f"data.root={mnist_shards}", "model.g_width=32", "model.d_width=32", "data.num_workers=0"]
    env = {**os.environ, "GAN_DIST_METRICS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "results.md").read_text()
    assert "| mlp | 2 | 64 |" in table and "| mlp | 4 | 128 |" in table and "real train images (floor)" in table
    record = json.loads((out / "results.json").read_text())
    assert [row["step"] for row in record["rows"]] == [2, 4] and record["floor"]["classes_covered"] == 10
    assert (out / "samples.png").is_file()
