"""`gan-dist eval` end to end on exported generators: the table on stdout and the JSON, a conditional
generator's class metrics, refusal of a generator made for other data, and that nothing in a shared
generator.yaml's data section is ever used (a `pipe:` URL there would run a shell command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gan_dist.checkpoint import GeneratorInfo, export_generator
from gan_dist.cli import main
from gan_dist.config import ModelConfig
from gan_dist.models.build import build_generator


@pytest.fixture(scope="module")
def metrics_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval_cli_cache")


def _export(out_dir: Path, conditioning: str = "none", dataset: str = "mnist",
            image_shape: tuple[int, int, int] = (1, 28, 28)) -> Path:
    """An untrained (seeded) generator exported like the trainer does: generator.safetensors + .yaml."""
    model = ModelConfig(conditioning=conditioning)
    num_classes = 10 if conditioning != "none" else 0
    torch.manual_seed(0)
    G = build_generator(model, image_shape, num_classes)
    info = GeneratorInfo(model=model, dataset=dataset, image_shape=image_shape, num_classes=num_classes, step=8,
                         is_ema=False)
    export_generator(G, info, out_dir)
    return out_dir


def _eval(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GAN_DIST_METRICS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gan_dist", "eval", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=cwd)


def test_eval_command_prints_the_table_and_writes_json(mnist_shards, metrics_cache, tmp_path):
    run = _export(tmp_path / "run")
    out = tmp_path / "eval.json"
    result = _eval(["--run", str(run), f"data.root={mnist_shards}", "--num", "200", "--batch-size", "64",
                    "--out", str(out)], metrics_cache, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "real floor" in result.stdout and "fid" in result.stdout and "class_accuracy" not in result.stdout
    record = json.loads(out.read_text())
    assert record["step"] == 8 and record["num_images"] == 200 and record["dataset"] == "mnist"
    assert record["metrics"]["fid"] > record["floor"]["fid"]
    assert len(record["class_fractions"]) == 10
    assert sorted(metrics_cache.iterdir())  # the reference and the floor were cached


def test_a_pipe_url_in_a_shared_generator_yaml_never_runs(mnist_shards, metrics_cache, tmp_path):
    shared = _export(tmp_path / "shared", conditioning="concat")
    marker = tmp_path / "MARKER"
    test_shard = next(Path(mnist_shards).glob("mnist-test-*.tar"))
    attack = f"pipe:touch {marker}; cat {test_shard}"
    with open(shared / "generator.yaml", "a") as handle:  # what an attacker would add to a shared file
        handle.write(f"data:\n  dataset: mnist\n  train_urls: '{attack}'\n  test_urls: '{attack}'\n"
                     f"  root: {tmp_path / 'elsewhere'}\neval:\n  feature_net: {tmp_path / 'evil.safetensors'}\n")
    out = tmp_path / "eval.json"
    result = _eval(["--checkpoint", str(shared), f"data.root={mnist_shards}", "--num", "200", "--batch-size", "64",
                    "--out", str(out)], metrics_cache, tmp_path)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "a command from the generator's yaml ran"
    assert not (tmp_path / "elsewhere").exists()
    # The generator is conditional: evaluated with balanced labels and the class metrics.
    assert "class_accuracy" in result.stdout and "intra_fid" in result.stdout
    record = json.loads(out.read_text())
    assert record["num_classes"] == 10 and record["conditioning"] == "concat"
    assert {"class_accuracy", "intra_fid"} <= set(record["metrics"]) and {"class_accuracy", "intra_fid"} <= set(
        record["floor"])
    assert len(record["intra_fid_per_class"]) == 10 and len(record["floor_intra_fid_per_class"]) == 10


def test_a_generator_for_another_dataset_is_refused(mnist_shards, tmp_path, capsys):
    fashion = _export(tmp_path / "fashion", dataset="fashion_mnist")
    assert main(["eval", "--checkpoint", str(fashion), f"data.root={mnist_shards}", "--num", "100"]) == 2
    error = capsys.readouterr().err
    assert "data.dataset" in error and "fashion_mnist" in error
    rgb = _export(tmp_path / "rgb", image_shape=(3, 32, 32))
    assert main(["eval", "--checkpoint", str(rgb), f"data.root={mnist_shards}", "--num", "100"]) == 2
    error = capsys.readouterr().err
    assert "data.dataset" in error and "3x32x32" in error and "1x28x28" in error
