"""`gan-dist eval` end to end on exported generators: the table on stdout and the JSON, a conditional
generator's class metrics, refusal of a generator made for other data, that nothing in a shared
generator.yaml's data section is ever used (a `pipe:` URL there would run a shell command), and `--ref-stats`
(a statistics .npz instead of the reference split, read without pickle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gan_dist.checkpoint import GeneratorInfo, export_generator
from gan_dist.cli import main
from gan_dist.config import ModelConfig
from gan_dist.models.build import build_generator
from tests.pickle_payload import PicklePayload


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


def test_ref_stats_scores_against_a_statistics_file_read_without_pickle(mnist_shards, metrics_cache, tmp_path,
                                                                         capsys, monkeypatch):
    monkeypatch.setenv("GAN_DIST_METRICS_CACHE", str(metrics_cache))
    run = _export(tmp_path / "run")
    common = ["eval", "--run", str(run), f"data.root={mnist_shards}", "--num", "200", "--batch-size", "100"]

    def evaluate(name: str, *extra: str) -> dict:
        assert main([*common, "--out", str(tmp_path / name), *extra]) == 0, capsys.readouterr().err
        return json.loads((tmp_path / name).read_text())

    split = evaluate("split.json")
    assert split["protocol"]["reference"] == {"split": "test"} and split["protocol_tag"] == "classifier-n200-test"
    # The cached reference of that evaluation is a statistics file itself (features, labels, mu, sigma).
    cached = next(metrics_cache.glob("reference-mnist-*-test10000.npz"))
    from_file = evaluate("file.json", "--ref-stats", str(cached))
    reference = from_file["protocol"]["reference"]
    assert reference["file"] == str(cached) and len(reference["sha256"]) == 64
    assert from_file["protocol_tag"] == f"classifier-n200-file{reference['sha256'][:8]}"
    assert "the statistics in" in capsys.readouterr().out  # the protocol line names the file
    for record in (split, from_file):
        record["metrics"].pop("eval_seconds")
    assert from_file["metrics"] == pytest.approx(split["metrics"], rel=1e-9)  # the same reference, read from a file
    assert from_file["floor"] == pytest.approx(split["floor"], rel=1e-9)
    # Published statistics are often mu and sigma alone: FID (and the floor's) only, no KID or k-NN metrics.
    with np.load(cached) as stored:
        mu, sigma = stored["mu"], stored["sigma"]
    np.savez(tmp_path / "published.npz", mu=mu, sigma=sigma)
    published = evaluate("published.json", "--ref-stats", str(tmp_path / "published.npz"))
    assert published["metrics"]["fid"] == pytest.approx(split["metrics"]["fid"], rel=1e-9)
    assert published["floor"]["fid"] == pytest.approx(split["floor"]["fid"], rel=1e-9)
    assert not {"kid", "precision", "coverage"} & set(published["metrics"]) and published["protocol"]["kid"] is None


@pytest.mark.parametrize("problem", ["pickled", "wrong_dim", "missing"])
def test_a_bad_ref_stats_file_is_one_line_and_exit_1(problem, mnist_shards, metrics_cache, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("GAN_DIST_METRICS_CACHE", str(metrics_cache))
    marker = tmp_path / "MARKER"
    stats = tmp_path / f"{problem}.npz"
    if problem == "pickled":  # an object array: np.load(allow_pickle=False) refuses it without unpickling
        np.savez(stats, mu=np.zeros(128), sigma=np.eye(128), extra=np.array([PicklePayload(marker)], dtype=object))
    elif problem == "wrong_dim":  # Inception's 2048 features against the classifier's 128
        np.savez(stats, mu=np.zeros(2048), sigma=np.eye(2048, dtype=np.float32))
    run = _export(tmp_path / "run")
    assert main(["eval", "--run", str(run), f"data.root={mnist_shards}", "--num", "50", "--ref-stats",
                 str(stats)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"gan-dist eval: eval.reference_stats={stats}"), lines
    expected = {"pickled": "array(s) extra hold pickled Python objects: refused (never unpickled)",
                "wrong_dim": "do not fit the feature network's 128",
                "missing": "no such file"}[problem]
    assert expected in lines[0] and not marker.exists()


