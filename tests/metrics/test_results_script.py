"""scripts/results.py end to end on a tiny schedule: table, JSON, the sample figure, and the FID plot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GAN_DIST_METRICS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "results.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)


@pytest.mark.slow  # ~80 s on 2 shared CPU cores: two recipes trained and evaluated in segments, then plotted
def test_results_script_writes_table_json_figure_and_plot(mnist_shards, tmp_path):
    out = tmp_path / "results"
    tiny = [f"data.root={mnist_shards}", "model.g_width=32", "model.d_width=32", "data.num_workers=0"]
    result = _run(["--out", str(out), "--models", "mlp", "cgan", "--steps", "2", "4", "--grid-steps", "1",
                   "--num", "100", "--eval-every", "2", *tiny, "log.num_samples=4"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "results.md").read_text()
    assert "| mlp | 2 | 64 |" in table and "| mlp | 4 | 128 |" in table and "real train images (mnist floor)" in table
    cgan_row = next(line for line in table.splitlines() if line.startswith("| cgan | 4 |"))
    assert cgan_row.count(" - ") == 0  # a conditional row has class accuracy and intra-FID
    record = json.loads((out / "results.json").read_text())
    assert [(row["recipe"], row["step"]) for row in record["rows"]] == [("mlp", 2), ("mlp", 4), ("cgan", 2), ("cgan", 4)]
    assert record["rows"][0]["floor"]["classes_covered"] == 10 and record["rows"][-1]["minutes"] > 0
    assert (out / "samples.png").is_file()
    evals = [json.loads(line) for line in (out / "runs" / "mlp" / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4] and all(e["elapsed_s"] > 0 and "fid" in e["metrics"] for e in evals)
    pytest.importorskip("matplotlib")
    plot = _run(["--plot", str(out / "runs" / "mlp"), "--plot-images-only", str(out / "runs" / "cgan"),
                 "--out", str(tmp_path / "fid.png")], tmp_path)
    assert plot.returncode == 0, plot.stderr[-3000:]
    from PIL import Image

    assert Image.open(tmp_path / "fid.png").size[0] > 800
