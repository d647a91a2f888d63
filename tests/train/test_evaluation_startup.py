"""A run that will evaluate checks its feature network at start-up, before the data is prepared and before anything
is written: a missing Inception weights file (named, or not in the cache on an offline machine), a file that is
not the official one, or a missing eval.reference_stats stops `gan-dist train` with one line and exit 1, never at
the first evaluation. The data here is a benchmark read by `download`: had the data come first, it would have
tried to fetch CIFAR-10 (and said so instead)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from gan_dist.cli import main as cli_main
from gan_dist.metrics import inception
from gan_dist.metrics.inception import WEIGHTS_ENV, WEIGHTS_NAME
from tests.pickle_payload import PicklePayload


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Path:
    """Empty data, weights and source caches under tmp_path; no weights named in the environment."""
    monkeypatch.setenv("GAN_DIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    return tmp_path


def train_args(tmp_path: Path, *overrides: str) -> list[str]:
    return ["train", "configs/debug.yaml", "data.dataset=cifar10", "data.source=download", "eval.eval_every=0",
            "eval.feature_net=inception", f"run.out_dir={tmp_path / 'runs'}", "run.name=r", *overrides]


def error_line(err: str) -> str:
    """The one error line (data progress notes, "gan_dist.data: ...", may precede it)."""
    lines = [line for line in err.splitlines()
             if line.strip() and not line.startswith(("warning:", "gan_dist.data: "))]
    assert len(lines) == 1 and lines[0].startswith("gan-dist train: ") and "Traceback" not in err, err
    return lines[0]


def nothing_written(tmp_path: Path) -> bool:
    """No shards, no downloaded archive, no run folder."""
    sources = tmp_path / "xdg" / "gan_dist" / "sources"
    return not (tmp_path / "data").exists() and not sources.exists() and not (tmp_path / "runs").exists()


def test_a_named_weights_file_that_is_not_there_stops_the_run_before_the_data(isolated, capsys):
    missing = isolated / "nowhere" / WEIGHTS_NAME
    assert cli_main(train_args(isolated, f"eval.inception_weights={missing}")) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith("gan-dist train: the Inception-v3 weights for FID/KID/IS are missing")
    assert str(missing) in line and WEIGHTS_ENV in line and "cifar" not in line.lower()
    assert nothing_written(isolated)


def test_offline_without_the_weights_stops_in_seconds_saying_where_to_put_them(isolated, capsys, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on: what an offline machine answers, at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(inception, "WEIGHTS_URL", f"http://127.0.0.1:{port}/{WEIGHTS_NAME}")
    monkeypatch.setattr(inception, "DOWNLOAD_TIMEOUT_S", 2.0)
    start = time.perf_counter()
    assert cli_main(train_args(isolated)) == 1
    assert time.perf_counter() - start < 30  # torch, accelerate and the refusal; no retry, no hang
    line = error_line(capsys.readouterr().err)
    cache = isolated / "xdg" / "gan_dist" / "weights"
    assert "downloading" in line and "failed" in line and str(cache / WEIGHTS_NAME) in line and WEIGHTS_ENV in line
    assert not cache.exists() or not any(cache.iterdir())  # no partial file left
    assert nothing_written(isolated)


def test_a_file_that_is_not_the_official_one_is_refused_at_start_up(isolated, capsys):
    impostor = isolated / WEIGHTS_NAME
    impostor.write_bytes(b"not the Inception weights" * 100)
    assert cli_main(train_args(isolated, f"eval.inception_weights={impostor}")) == 1
    line = error_line(capsys.readouterr().err)
    assert str(impostor) in line and inception.WEIGHTS_SHA256 in line and "sha256" in line
    assert nothing_written(isolated)


@pytest.mark.parametrize(("problem", "expected"), [
    ("missing", "no such file"),
    ("not_npz", "not a readable .npz of arrays"),
    ("no_sigma", "needs arrays 'mu' (D,) and 'sigma' (D, D); it has mu"),
    ("pickled", "array(s) names hold pickled Python objects: refused (never unpickled)"),
    ("inception_dim", "mu (128,) and sigma (128, 128) do not fit the feature network's 2048 features"),
])
def test_a_bad_reference_statistics_file_stops_the_run_before_the_data(problem, expected, isolated, capsys):
    stats = isolated / "published" / "cifar10_train.npz"
    stats.parent.mkdir()
    marker = isolated / "MARKER"
    if problem == "not_npz":
        stats.write_bytes(b"mu,sigma\n1,2\n")
    elif problem == "no_sigma":
        np.savez(stats, mu=np.zeros(8))
    elif problem == "pickled":  # checked from the .npy headers: the object array is never unpickled
        np.savez(stats, mu=np.zeros(8), sigma=np.eye(8), names=np.array([PicklePayload(marker)], dtype=object))
    elif problem == "inception_dim":  # the classifier's 128 features against Inception's 2048
        np.savez(stats, mu=np.zeros(128), sigma=np.eye(128))
    network = "inception" if problem == "inception_dim" else "classifier"
    weights = [f"eval.inception_weights={isolated / 'nowhere.pth'}"] if network == "inception" else []
    # (for inception_dim the weights are missing too: the statistics are checked first, on every rank)
    assert cli_main(train_args(isolated, f"eval.feature_net={network}", f"eval.reference_stats={stats}",
                               *weights)) == 1
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"gan-dist train: eval.reference_stats={stats}: {expected}"), line
    assert nothing_written(isolated) and not marker.exists()




def test_a_run_that_never_evaluates_does_not_ask_for_the_weights(isolated, capsys):
    # eval.eval_every=-1: no weights needed, so the data comes first (and, offline, fails on the download instead).
    assert cli_main(train_args(isolated, "eval.eval_every=-1", "data.source=auto")) == 1
    line = error_line(capsys.readouterr().err)
    assert "no CIFAR-10 archive at hand" in line and "Inception" not in line


def test_two_processes_both_stop_in_one_line_when_rank_0_cannot_get_the_weights(isolated):
    """The check is collective: rank 0 (the node's main process) fails to find the weights, rank 1 learns it from
    rank 0 and stops too (no rank waits in a collective forever); each prints one line, nothing is written."""
    import os
    import subprocess
    import sys

    from tests.distributed import REPO_ROOT, free_port

    missing = isolated / "nowhere" / WEIGHTS_NAME
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "--tee", "3", "-m", "gan_dist",
         *train_args(isolated, f"eval.inception_weights={missing}", "dist.cpu=true")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    lines = [line for line in output.splitlines() if "gan-dist train: " in line]
    assert len(lines) == 2, output
    rank0, rank1 = sorted(lines)  # torchrun's prefixes: [default0]:, [default1]:
    assert rank0.startswith("[default0]:gan-dist train: the Inception-v3 weights for FID/KID/IS are missing: ")
    assert rank1.startswith("[default1]:gan-dist train: the feature network or eval.reference_stats is unavailable (")
    assert str(missing) in rank0 and str(missing) in rank1  # rank 0's reason, handed on
    ranks = [line for line in output.splitlines() if line.startswith("[default")]  # the ranks' own output
    assert not any("Traceback" in line for line in ranks), output  # (torchrun prints its own after they exit)
    assert nothing_written(isolated)
