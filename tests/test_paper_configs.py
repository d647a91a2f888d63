"""The paper-setting configs for GPUs (configs/cifar10_sngan.yaml, cifar10_biggan_diffaugment.yaml,
stylegan2_256.yaml) load as written, hold the papers' settings, and train a few steps end to end on small
stand-ins of their data: a CIFAR-10-format archive of random images, a folder of PNGs. Only what a CPU cannot
afford is overridden (widths, the image size of the folder run, the step count, evaluation, which needs the
Inception weights); the objective, schedule shape, augmentation and options stay the file's."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from gan_dist.configure import load_config
from gan_dist.train.trainer import train
from tests.metrics.folders import write_image_folder


def test_the_configs_hold_the_papers_settings():
    sngan = load_config("configs/cifar10_sngan.yaml")
    assert (sngan.model.name, sngan.model.g_width, sngan.model.d_width, sngan.model.latent_dim) == (
        "resnet_sngan", 256, 128, 128)
    assert (sngan.loss.name, sngan.train.d_steps_per_g, sngan.train.batch_size_per_process) == ("hinge", 5, 64)
    assert (sngan.optim.lr_g, sngan.optim.lr_d, sngan.optim.beta1, sngan.optim.beta2) == (2e-4, 2e-4, 0.0, 0.9)
    assert (sngan.data.dataset, sngan.eval.feature_net, sngan.eval.num_samples) == ("cifar10", "inception", 50000)
    biggan = load_config("configs/cifar10_biggan_diffaugment.yaml")
    assert (biggan.model.name, biggan.model.conditioning, biggan.augment.name, biggan.augment.policy) == (
        "biggan", "projection", "diffaugment", "translation,cutout")
    assert (biggan.train.d_steps_per_g, biggan.train.batch_size_per_process, biggan.train.ema_decay) == (4, 50, 0.9999)
    style = load_config("configs/stylegan2_256.yaml")
    assert (style.model.name, style.data.image_size, style.augment.name, style.model.options["channel_base"]) == (
        "stylegan2", 256, "ada", 16384)
    assert (style.loss.r1_gamma, style.loss.r1_every, style.model.options["pl_every"]) == (1.0, 16, 4)


@pytest.fixture(scope="module")
def cifar10_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards of a CIFAR-10-format archive of 40 train and 20 test random images (4 / 2 per class), written by
    the benchmark reader (the official-count check off: a real CIFAR-10 has 50,000 + 10,000)."""
    from gan_dist.data.benchmarks import write_archive_shards
    from tests.data.official_formats import cifar10_files, random_images, write_archive

    labels = [i % 10 for i in range(40)]
    files = cifar10_files([(random_images(40, 32, 32, 1), labels)], (random_images(20, 32, 32, 2), labels[:20]))
    root = tmp_path_factory.mktemp("cifar")
    archive = write_archive(root / "cifar-10-binary.tar.gz", files, extracted=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny archive is not the official one (its sha256 warns)
        write_archive_shards(root / "shards", "cifar10", f"archive:{archive}", samples_per_shard=20,
                             verify_checksums=False, verify_official_counts=False, progress=False, workers=1)
    return root / "shards"


SMALL = ["train.num_steps=2", "eval.eval_every=-1", "log.tracker=none", "log.sample_every=0",
         "checkpoint.every=0", "train.mixed_precision=no", "log.progress_bar=false"]


@pytest.mark.slow  # two ResNet GANs at CPU width: ~30 s
@pytest.mark.parametrize("name, overrides", [
    ("cifar10_sngan", ["model.g_width=16", "model.d_width=16", "train.batch_size_per_process=8"]),
    ("cifar10_biggan_diffaugment", ["model.g_width=4", "model.d_width=4", "train.batch_size_per_process=8"]),
])
def test_a_cifar10_config_trains_a_few_steps(cifar10_shards, tmp_path, name, overrides):
    config = load_config(f"configs/{name}.yaml", [
        f"data.root={cifar10_shards}", "data.auto_prepare=false", "data.verify_checksums=false",
        f"run.out_dir={tmp_path}", "run.name=r", *SMALL,
        *overrides])
    assert train(config) == 0
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert (record["dataset"], record["image_shape"]) == ("cifar10", [3, 32, 32])
    done = json.loads((tmp_path / "r" / "done.json").read_text())
    d_steps = config.train.d_steps_per_g
    assert done["step"] == 2 and done["images_seen"] == 2 * d_steps * 8  # every D step takes its own batch


@pytest.mark.slow  # ~20 s
def test_the_stylegan2_config_trains_a_few_steps_on_a_folder(tmp_path):
    images = write_image_folder(tmp_path / "images", classes=(), per_class=24, size=(70, 70))
    config = load_config("configs/stylegan2_256.yaml", [
        f"data.source=folder:{images}", f"data.root={tmp_path / 'shards'}", "data.image_size=32",
        "data.test_fraction=0.25", f"run.out_dir={tmp_path}", "run.name=r", *SMALL, "model.g_width=8",
        "model.d_width=8", "model.latent_dim=8", "model.options.w_dim=8", "model.options.mapping_layers=2",
        "model.options.mbstd_group=4", "train.batch_size_per_process=4", "model.options.pl_every=1",
        "loss.r1_every=1"])
    assert config.augment.name == "ada" and config.model.options["noise_mode"] == "random"
    assert train(config) == 0
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["image_shape"] == [3, 32, 32] and record["num_classes"] == 0
    checkpoint = sorted((tmp_path / "r" / "checkpoints").iterdir())[-1]
    names = {p.name for p in checkpoint.iterdir()}
    assert {"extra_augment.safetensors", "extra_g_regularizer.safetensors"} <= names
    assert np.isfinite(json.loads((checkpoint / "meta.json").read_text())["step"])
