"""launch/local/two_nodes.sh: two `accelerate launch` "nodes" on one machine, no SLURM, trains to the end."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.launch.helpers import REPO_ROOT, training_env


@pytest.mark.slow
def test_two_local_nodes_train_to_completion(tmp_path, mnist_shards):
    run_dir = tmp_path / "runs" / "two"
    env = training_env({"RUN_DIR": str(run_dir), "LOG_DIR": str(tmp_path / "logs"),
                        "OVERRIDES": f"train.num_steps=6 data.num_workers=0 data.root={mnist_shards}"})
    result = subprocess.run([str(REPO_ROOT / "launch/local/two_nodes.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"node 0: .*--machine_rank 0 --main_process_ip 127\.0\.0\.1", output)
    assert re.search(r"node 1: .*--machine_rank 1 --main_process_ip 127\.0\.0\.1", output)
    done = json.loads((run_dir / "done.json").read_text())
    assert (done["step"], done["num_processes"]) == (6, 2)
    assert (tmp_path / "logs" / "node0.log").is_file() and (tmp_path / "logs" / "node1.log").is_file()


@pytest.mark.slow
def test_one_failing_node_stops_the_other_and_fails(tmp_path):
    """Node 1's launcher dies at once (a stand-in `accelerate` that exits 3 for machine rank 1): node 0
    would wait for it in the rendezvous; the script must stop node 0 and return 3, not hang."""
    fake = tmp_path / "accelerate"
    fake.write_text('#!/usr/bin/env bash\n'
                    'if [[ " $* " == *" --machine_rank 1 "* ]]; then echo "node 1 broken" >&2; exit 3; fi\n'
                    'exec accelerate "$@"\n')
    fake.chmod(0o755)
    env = training_env({"RUN_DIR": str(tmp_path / "runs" / "bad"), "ACCELERATE": str(fake),
                        "OVERRIDES": "train.num_steps=6 data.num_workers=0"})
    result = subprocess.run([str(REPO_ROOT / "launch/local/two_nodes.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    assert "node 1 exited with status 3" in result.stdout
    assert "FAILED" in result.stderr
