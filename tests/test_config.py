"""Typed configs: schema defaults are the seed's settings; bad keys, types and values are refused by name."""

import subprocess
import sys
from pathlib import Path

import pytest

from gan_dist.config import ConfigError, to_yaml
from gan_dist.configure import config_from_yaml, load_config


def test_defaults_are_the_seed_settings():
    config = load_config()
    assert (config.model.name, config.model.latent_dim) == ("keras_dcgan", 100)
    assert (config.train.batch_size_per_process, config.train.num_steps) == (32, 4000)
    assert (config.optim.lr_g, config.optim.lr_d, config.optim.beta1) == (2e-4, 2e-4, 0.5)
    assert (config.log.sample_every, config.log.num_samples) == (50, 25)


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("configs").glob("*.yaml")))
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config_from_yaml(to_yaml(config)) == config


def test_seed_config_equals_schema_defaults():
    assert load_config("configs/mnist_dcgan.yaml") == load_config()


def test_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  num_steps: 10\nmodel:\n  name: mlp\n")
    config = load_config(path, ["train.num_steps=20"])
    assert (config.train.num_steps, config.model.name) == (20, "mlp")


@pytest.mark.parametrize("overrides, key", [
    (["train.num_stepz=1"], "train.num_stepz"),
    (["train.num_steps=abc"], "train.num_steps"),
    (["train.batch_size_per_process=0"], "train.batch_size_per_process"),
    (["model.name=resnet"], "model.name"),
    (["log.num_samples=24"], "log.num_samples"),
    (["train.mixed_precision=fp8"], "train.mixed_precision"),
    (["optim.lr_g=inf"], "optim.lr_g"),
    (["optim.lr_d=nan"], "optim.lr_d"),
    (["loss.gp_weight=-inf"], "loss.gp_weight"),
    (["train.ema_decay=nan"], "train.ema_decay"),
    (["loss.name=wgan"], "loss.name"),
    (["loss.name=wgan_gp"], "model.d_norm"),  # a BatchNorm critic cannot take a per-sample penalty
    (["loss.r1_gamma=10"], "model.d_norm"),
    (["loss.label_smoothing=0.1", "loss.name=hinge"], "loss.label_smoothing"),
    (["model.conditioning=cgan"], "model.conditioning"),
    (["model.d_norm=instance"], "model.d_norm"),
    (["model.g_width=100000"], "model.g_width"),
    (["data.dataset=cifar"], "data.dataset"),
    (["data.image_size=64"], "data.image_size"),  # mnist is 28x28
    (["data.dataset=folder", "data.source=wheel"], "data.source"),
    (["data.source=folder:/x"], "data.source"),  # needs data.dataset=folder
    (["data.loader=ram"], "data.loader"),
    (["train.d_steps_per_g=0"], "train.d_steps_per_g"),
    (["train.cuda_graph=true", "data.loader=stream"], "train.cuda_graph"),  # needs the memory loader
    (["train.cuda_graph=true", "optim.lr_decay_start=0.5"], "train.cuda_graph"),
    (["optim.lr_decay_start=1.5"], "optim.lr_decay_start"),
    (["train.cuda_graph=true", "data.loader=memory", "loss.name=wgan_gp", "model.d_norm=layer"], "train.cuda_graph"),
    (["train.cuda_graph=true", "data.loader=memory", "loss.r1_gamma=1", "model.d_norm=layer"], "train.cuda_graph"),
    (["train.cuda_graph=true", "data.loader=memory", "train.gradient_accumulation_steps=2"], "train.cuda_graph"),
    (["train.cuda_graph=true", "data.loader=memory", "train.mixed_precision=fp16"], "train.cuda_graph"),
    (["train.cuda_graph=true", "data.loader=memory", "train.compile=true"], "train.cuda_graph"),
    (["optim.implementation=apex"], "optim.implementation"),
])
def test_bad_override_names_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides", [["loss.name=wgan_gp"], ["loss.r1_gamma=10"], ["loss.name=hinge", "loss.r1_gamma=1"]])
def test_a_penalized_loss_takes_the_default_d_norm_where_the_architecture_has_no_batchnorm(overrides):
    config = load_config(None, ["model.name=mlp", *overrides])  # mlp has no normalization layers at all
    assert config.model.d_norm == "batch"


def test_loading_a_config_does_not_import_torch():
    """The SLURM scripts load configs for quick checks; architecture facts are asked for only when needed."""
    code = ("import sys; from gan_dist.configure import load_config; "
            "[load_config(p) for p in ('configs/debug.yaml', 'configs/mnist_wgan_gp.yaml', 'configs/mnist_fast.yaml')]; "
            "load_config(None, ['loss.r1_gamma=1', 'model.d_norm=none']); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bad_file_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr_gg: 0.1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "optim.lr_gg" in str(error.value) and str(path) in str(error.value)


@pytest.mark.parametrize("override, key", [
    ("train.unknown=1", "train.unknown"),
    ("train.num_steps=ten", "train.num_steps"),
    ("train.batch_size_per_process=0", "train.batch_size_per_process"),
    ("optim.lr_g=inf", "optim.lr_g"),
    ("loss.name=wgan_gp", "model.d_norm"),
    ("data.train_subset=-1", "data.train_subset"),
    ("data.train_subset=100", "data.train_subset"),  # debug.yaml streams: a subset needs the memory loader
])
def test_cli_refuses_bad_config_with_exit_2_and_writes_nothing(tmp_path, override, key):
    out_dir = tmp_path / "runs"
    data_dir = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, "-m", "gan_dist", "train", "configs/debug.yaml", override,
         f"run.out_dir={out_dir}", f"data.root={data_dir}"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert not out_dir.exists() and not data_dir.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["- data\n- model\n", "- train:\n    num_steps: 3\n"])
def test_a_config_file_that_is_a_list_is_a_config_error_exit_2(tmp_path, capsys, text):
    from gan_dist.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["train", str(path), f"run.out_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{path}: a config file is a mapping of sections" in err and "not a list" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize("model, size", [("keras_dcgan", 17), ("dcgan", 12), ("dcgan", 30)])
def test_an_image_size_the_model_cannot_build_is_refused_before_the_folder_is_converted(tmp_path, monkeypatch,
                                                                                        capsys, model, size):
    """The conv models need a side that is a multiple of 4 and >= 16: refused with exit 2 at validation, before
    the folder is scanned or a shard written (issue 16: a whole folder was converted first)."""
    import numpy as np
    from PIL import Image

    from gan_dist.cli import main

    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    for index in range(12):
        Image.fromarray(np.full((20, 20), index * 20, np.uint8)).save(images / f"{index}.png")
    monkeypatch.setenv("GAN_DIST_DATA_DIR", str(tmp_path / "cache"))
    args = ["configs/debug.yaml", "data.dataset=folder", f"data.source=folder:{images.parent}",
            f"data.image_size={size}", f"model.name={model}", f"run.out_dir={tmp_path / 'runs'}"]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'data.image_size'" in err and "multiple of 4 and at least 16" in err, err
    assert f"got {size}" in err and "model.name=mlp" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no cache, no shards, no run folder
    load_config("configs/debug.yaml", args[1:-2] + ["model.name=mlp"])  # the mlp takes any size
