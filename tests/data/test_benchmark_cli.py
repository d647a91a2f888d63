"""The benchmarks from the command line, on tiny archives in their official formats (tests/data/official_formats.py):
`prepare-data --crop / --verify-checksums`, `train --dry-run` of a benchmark that is not prepared yet (shape, classes
and official split sizes from the registry; the evaluation protocol; nothing written or fetched), and
`train-classifier` on a labeled benchmark (the unlabeled ones are refused, pointing at Inception).

The tiny archives fail the official checksums and counts by design. The CLI has no switch for the counts (only the
official ones are accepted), so these tests put a copy of the registry entry with the tiny archive's split sizes in
its place (monkeypatch.setitem on DATASETS, which every lookup by name goes through)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from gan_dist.cli import main as cli_main
from gan_dist.registry.datasets import CELEBA, CELEBA_ARCHIVE, DATASETS
from tests.data.official_formats import cifar10_files, random_images, write_archive, write_celeba

PARTITIONS = [0, 2, 1, 0, 2, 0]  # image i's partition: train 3 (+ valid 1) | test 2


def one_line(err: str) -> str:
    """The error line of a failed command (progress notes, "gan_dist.data: ...", may precede it)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("gan_dist.data: ")]
    assert len(lines) == 1 and lines[0].startswith("gan-dist ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def tiny_celeba(tmp_path, monkeypatch) -> Path:
    """The zip (+ list_eval_partition.txt beside it) of 6 images; the registry's celeba accepts its sizes."""
    protocol = dataclasses.replace(CELEBA.benchmark, official_split_sizes={"train": 3, "valid": 1, "test": 2})
    monkeypatch.setitem(DATASETS, "celeba", dataclasses.replace(CELEBA, benchmark=protocol))
    return write_celeba(tmp_path / "celeba", PARTITIONS)


def test_prepare_data_refuses_a_repacked_archive_and_crops_as_asked_without_verification(tiny_celeba, tmp_path,
                                                                                        capsys):
    out = tmp_path / "shards"
    base = ["prepare-data", "--dataset", "celeba", "--source", f"archive:{tiny_celeba}", "--out", str(out)]
    # The official digests are checked by default: one line naming the file, nothing written.
    assert cli_main([*base, "--crop", "140"]) == 1
    line = one_line(capsys.readouterr().err)
    assert str(tiny_celeba) in line and CELEBA_ARCHIVE.sha256 in line and "data.verify_checksums=false" in line
    assert not (out / "manifest.json").exists()
    # --no-verify-checksums: one warning naming the file, and the mismatch recorded in manifest.json.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main([*base, "--crop", "140", "--image-size", "64", "--no-verify-checksums"]) == 0
    mismatches = [w for w in caught if "used anyway (verify_checksums=False)" in str(w.message)]
    assert len(mismatches) == 1 and str(tiny_celeba) in str(mismatches[0].message)
    report = capsys.readouterr().out
    assert "train 4 samples" in report and "test 2 samples" in report and "3x64x64" in report
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["benchmark"]["crop"] == 140 and manifest["benchmark"]["image_size"] == 64
    checksums = manifest["benchmark"]["checksums"]
    assert checksums["verify_checksums"] is False and checksums["verified"] is False
    assert any(entry["file"] == str(tiny_celeba) and not entry["match"] for entry in checksums["files"])
    assert "crop 140" in (out / "protocol.txt").read_text()


@pytest.mark.parametrize(("flags", "named"), [(["--dataset", "celeba", "--crop", "100"], "--crop"),
                                              (["--dataset", "celeba", "--image-size", "96"], "--image-size"),
                                              (["--dataset", "stl10", "--crop", "108"], "--crop")])
def test_prepare_data_flags_the_benchmark_does_not_offer_are_refused_naming_the_flag(flags, named, tmp_path,
                                                                                     capsys):
    assert cli_main(["prepare-data", *flags, "--source", "download", "--out", str(tmp_path / "out")]) == 2
    line = one_line(capsys.readouterr().err)
    assert named in line and "data." not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("dataset", "overrides", "shape", "classes", "sizes", "folder"), [
    ("stl10", ["data.image_size=96", "model.name=dcgan"], [3, 96, 96], 0, (100_000, 8_000), "stl10/stl10-96"),
    ("celeba", ["data.crop=178", "model.name=dcgan"], [3, 64, 64], 0, (182_637, 19_962), "celeba/celeba-64-crop178"),
    ("cifar10", ["model.conditioning=projection", "model.name=dcgan", "loss.name=hinge"], [3, 32, 32], 10,
     (50_000, 10_000), "cifar10/cifar10-32"),
])
def test_dry_run_previews_a_benchmark_not_prepared_yet_and_writes_nothing(dataset, overrides, shape, classes, sizes,
                                                                          folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GAN_DIST_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # an empty weights cache
    monkeypatch.delenv("GAN_DIST_INCEPTION_WEIGHTS", raising=False)
    assert cli_main(["train", "--dry-run", f"data.dataset={dataset}", "data.source=download", *overrides,
                     f"run.out_dir={tmp_path / 'runs'}"]) == 0
    record = json.loads(capsys.readouterr().out.split("--dry-run)\n")[1])
    assert record["image_shape"] == shape and record["num_classes"] == classes
    assert (record["train_size"], record["test_size"]) == sizes
    assert record["shards"].startswith("not written yet") and folder in record["shards"]
    assert record["conditional_classes"] == classes  # a conditional G for the labeled one
    evaluation = record["evaluation"]
    assert evaluation["num_generated"] == 10_000 and evaluation["reference"] == {"split": "test"}
    if classes:  # the dataset's classifier (trained by `gan-dist train-classifier`): no resize, no download
        assert evaluation["feature_net"] == "classifier" and "resize" not in evaluation
    else:  # the unlabeled benchmarks evaluate with Inception, TF-FID resizing, 10-split IS
        assert evaluation["feature_net"] == "inception" and evaluation["resize"] == "tf"
        assert evaluation["inception_score_splits"] == 10
        assert evaluation["weights"].startswith("not on this machine: downloaded at start-up")
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists() and not (tmp_path / "xdg").exists()


def test_dry_run_names_a_missing_weights_file_without_reading_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GAN_DIST_DATA_DIR", str(tmp_path / "data"))
    assert cli_main(["train", "--dry-run", "data.dataset=cifar10", "eval.feature_net=inception", "eval.resize=clean",
                     f"eval.inception_weights={tmp_path / 'nowhere.pth'}", "eval.reference_split=train",
                     "eval.num_samples=50000", f"run.out_dir={tmp_path / 'runs'}"]) == 0
    evaluation = json.loads(capsys.readouterr().out.split("--dry-run)\n")[1])["evaluation"]
    assert evaluation["resize"] == "clean" and evaluation["reference"] == {"split": "train"}
    assert evaluation["floor_split"] == "test" and evaluation["num_generated"] == 50_000
    assert evaluation["weights"].startswith(f"MISSING: {tmp_path / 'nowhere.pth'} does not exist")


@pytest.fixture
def tiny_cifar10_shards(tmp_path) -> Path:
    """Shards of a CIFAR-10-format archive of 20 train and 10 test images (2 of each class in train)."""
    from gan_dist.data.benchmarks import write_archive_shards

    labels = [i % 10 for i in range(10)]
    files = cifar10_files([(random_images(10, 32, 32, 1), labels), (random_images(10, 32, 32, 2), labels)],
                          (random_images(10, 32, 32, 3), labels))
    archive = write_archive(tmp_path / "cifar-10-binary.tar.gz", files, extracted=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not the official archive: its sha256 warns
        write_archive_shards(tmp_path / "shards", "cifar10", f"archive:{archive}", samples_per_shard=10,
                             verify_checksums=False, verify_official_counts=False, progress=False, workers=1)
    return tmp_path / "shards"


def test_train_classifier_on_a_labeled_benchmark_writes_its_network_beside_the_shards(tiny_cifar10_shards,
                                                                                     capsys):
    data = [f"data.root={tiny_cifar10_shards}", "data.verify_checksums=false", "data.samples_per_shard=10"]
    assert cli_main(["train-classifier", "--dataset", "cifar10", *data, "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "cifar10 (3x32x32, 10 classes): 20 train / 10 test images" in out
    record = json.loads((tiny_cifar10_shards / "feature_net.json").read_text())
    assert record["dataset"] == "cifar10" and record["image_shape"] == [3, 32, 32] and record["num_classes"] == 10
    assert "eval.feature_net='', the default" in out  # evaluation finds it there

    from gan_dist.configure import load_config
    from gan_dist.data.datasets import resolve_dataset
    from gan_dist.metrics.features import load_feature_net

    config = load_config(None, ["data.dataset=cifar10", *data])
    net, loaded = load_feature_net(resolve_dataset(config.data, prepare=False), config.eval)
    assert loaded["sha256"] == record["sha256"] and net.num_classes == 10
    assert np.isfinite(loaded["test_accuracy"])


def test_train_classifier_refuses_an_unlabeled_benchmark_pointing_at_inception(tmp_path, capsys):
    from gan_dist.data.benchmarks import write_archive_shards
    from tests.data.official_formats import stl10_files

    files = stl10_files((random_images(2, 96, 96, 1), [1, 2]), (random_images(2, 96, 96, 2), [3, 4]),
                        random_images(3, 96, 96, 3))
    archive = write_archive(tmp_path / "stl10_binary.tar.gz", files, extracted=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_archive_shards(tmp_path / "shards", "stl10", f"archive:{archive}", verify_checksums=False,
                             verify_official_counts=False, progress=False, workers=1)
    assert cli_main(["train-classifier", "--dataset", "stl10", f"data.root={tmp_path / 'shards'}",
                     "data.verify_checksums=false"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "has no labels" in line and "eval.feature_net=inception" in line
    assert not (tmp_path / "shards" / "feature_net.safetensors").exists()
