"""The typed configuration: one dataclass tree, YAML files that mirror it, dotlist overrides.

`load_config(path, overrides)` merges, in order: the schema defaults (the seed Keras DCGAN tutorial's
settings), the YAML file, then `key=value` overrides. Struct mode makes unknown keys fail; omegaconf
checks types; `validate()` checks values. Every error is a `ConfigError` that names the key (and the
file), raised before anything is written. Code downstream receives `Config` objects, never dicts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

MODEL_NAMES = ("keras_dcgan", "dcgan", "mlp")
DATASET_NAMES = ("mnist", "fashion_mnist", "folder")
CONDITIONING_MODES = ("none", "concat", "acgan", "projection")
G_NORMS = ("batch", "none")
D_NORMS = ("batch", "layer", "none")
LOSS_NAMES = ("ns", "lsgan", "wgan_gp", "hinge")
ADAM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")
LOADERS = ("auto", "stream", "memory")
MIXED_PRECISION_MODES = ("no", "fp16", "bf16", "auto")
TRACKERS = ("wandb", "tensorboard", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
ON_CORRUPT = ("raise", "warn")
DEFAULT_READ_TIMEOUT_S = 120.0  # data.read_timeout_s
DATA_SOURCES = ("auto", "torchvision", "wheel")  # plus "idx:DIR" and "folder:DIR"
# Upper bounds that keep a hostile or mistyped config (e.g. a shared generator.yaml) from allocating
# absurd models: far above anything these architectures are used at.
MAX_WIDTH = 4096
MAX_LATENT_DIM = 4096
MAX_IMAGE_SIZE = 1024
MAX_CLASSES = 100_000


class ConfigError(ValueError):
    """A config key with a bad name, type or value. The message names the key and the file."""


@dataclass
class DataConfig:
    # Which dataset: mnist | fashion_mnist | folder (your own images, data.source=folder:DIR).
    # gan_dist/data/datasets.py declares each one (sources, checks, shape, classes, feature network).
    dataset: str = "mnist"
    # Folder holding the shards and manifest.json. "" means $GAN_DIST_DATA_DIR/<dataset>, else
    # ~/.cache/gan_dist/<dataset> (see `resolved_data_dir`).
    root: str = ""
    # Where `prepare-data` reads the dataset from when shards are missing: auto | idx:DIR | torchvision |
    # wheel (MNIST only) | folder:DIR (data.dataset=folder).
    source: str = "auto"
    # data.dataset=folder only: images are converted once, at shard time, to this many channels (1 or 3)
    # and to image_size x image_size pixels (shorter side resized to image_size, then a center crop).
    # None means the dataset's own (28 x 28 x 1 for mnist and fashion_mnist; for a folder: 3 and 32).
    channels: int | None = None
    image_size: int | None = None
    # data.dataset=folder only: the share of images held out as the test split (deterministic by file name).
    test_fraction: float = 0.1
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
    # What a corrupt or truncated shard, or (data.dataset=folder, at shard time) an unreadable image file,
    # does: raise (naming the shard or listing the files) | warn (skip it, count it, list the files).
    on_corrupt: str = "raise"
    # Seconds a shard read through a subprocess (`pipe:` URLs, http(s) via curl) may go without sending a
    # byte before it fails as stalled (naming the shard; data.on_corrupt=warn skips it). 0 = wait forever.
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    # Write the shards with prepare-data when `train` finds them missing.
    auto_prepare: bool = True
    # stream: WebDataset shards decoded by DataLoader workers (any size, any URL) | memory: the train
    # split read once through the same verified reader and kept on the device as uint8 (no loader work per
    # step: the fast path) | auto: memory when the split's uint8 copy fits in data.memory_max_mb, else stream.
    loader: str = "auto"
    # data.loader=memory refuses (and auto does not pick memory for) data whose uint8 copy per process would
    # exceed this many MiB (MNIST's train split: 45 MiB).
    memory_max_mb: int = 4096


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
    # Normalization in G: batch | none; in D: batch | layer (GroupNorm with one group: the WGAN-GP
    # paper's replacement for BatchNorm in a critic) | none. The conv models only; mlp has none.
    g_norm: str = "batch"
    d_norm: str = "batch"
    # Spectral normalization of every weight of D (Miyato et al. 2018; SNGAN, BigGAN).
    spectral_norm: bool = False
    # Class conditioning: none | concat (CGAN: one-hot label into G's input and D's input) | acgan (D also
    # classifies, loss.acgan_weight) | projection (Miyato & Koyama 2018). Needs a labeled dataset.
    conditioning: str = "none"


@dataclass
class LossConfig:
    # The adversarial objective: ns (non-saturating BCE, the seed) | lsgan (least squares, Mao et al. 2017)
    # | wgan_gp (Wasserstein critic with gradient penalty, Gulrajani et al. 2017) | hinge (SNGAN / BigGAN).
    name: str = "ns"
    # ns only: one-sided label smoothing, D's target for real images is 1 - label_smoothing (0 = off).
    label_smoothing: float = 0.0
    # wgan_gp: weight of the penalty (||grad D(x_hat)|| - 1)^2 on real/fake interpolates.
    gp_weight: float = 10.0
    # R1 penalty gamma / 2 * ||grad D(x_real)||^2 for any objective (0 = off), applied every r1_every
    # D steps and scaled by r1_every (lazy regularization, StyleGAN2).
    r1_gamma: float = 0.0
    r1_every: int = 1
    # model.conditioning=acgan: weight of the class cross-entropy in both phases.
    acgan_weight: float = 1.0


@dataclass
class OptimConfig:
    # Adam for both G and D, as in the seed: lr 2e-4, beta1 0.5.
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0
    # Clip each model's gradient norm to this value (0 = off).
    grad_clip_norm: float = 0.0
    # Adam's kernels: auto (fused where the device supports it, else foreach) | fused | foreach | for_loop.
    implementation: str = "auto"
    # Learning-rate schedule: constant until this fraction of train.num_steps, then linear decay to 0 at the
    # last step (1.0 = constant throughout). Applies to both lr_g and lr_d.
    lr_decay_start: float = 1.0


@dataclass
class TrainConfig:
    # Optimizer steps of G (each after train.d_steps_per_g D steps). The seed runs 4000 iterations.
    num_steps: int = 4000
    # D (critic) steps per G step, each on its own real batch (WGAN-GP uses 5).
    d_steps_per_g: int = 1
    # Real images per process per micro-step. The global batch is this x processes x accumulation.
    batch_size_per_process: int = 32
    gradient_accumulation_steps: int = 1
    # no | fp16 | bf16 | auto: bf16 autocast where the device runs it fast (GPUs with bf16, CPUs with
    # AVX512-BF16 or AMX), fp16 on older GPUs, else fp32. `accelerate launch --mixed_precision` wins over auto.
    mixed_precision: str = "auto"
    # Exponential moving average of G's weights, used for samples and evaluation when > 0.
    ema_decay: float = 0.0
    # EMA warm-up: the decay used at step t is min(ema_decay, (1 + t) / (ema_warmup_steps + 1 + t)), so the
    # average forgets the first, poor weights quickly (0 = the constant ema_decay from the start).
    ema_warmup_steps: int = 0
    # channels_last memory format for the conv models (helps on GPUs with tensor cores).
    channels_last: bool = False
    # torch.compile G and D.
    compile: bool = False
    # Capture the whole D+G step in one CUDA graph and replay it (CUDA, data.loader=memory, no fp16
    # scaler, no accumulation, no gradient penalty: refused otherwise).
    cuda_graph: bool = False
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
    # Each grid pixel becomes a block of this many pixels per side (nearest neighbour: sharp, readable in a
    # dashboard); 0 = auto, the smallest factor that makes an image >= 96 pixels wide (4 for 28x28).
    grid_pixel_scale: int = 0
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
    # Feature network for the metrics: "" = the dataset's packaged one (mnist, fashion_mnist) or the one
    # `gan-dist train-classifier` wrote for a folder dataset; else a .safetensors path (with its .json record).
    feature_net: str = ""


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
    # which can fail with an in-place error through buffer broadcasting (see docs/design-notes.md).
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
    loss: LossConfig = field(default_factory=LossConfig)
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


def _non_finite_floats(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of every float field that is inf or nan (omegaconf accepts both for float fields)."""
    keys = []
    for item in dataclasses.fields(node):
        value = getattr(node, item.name)
        key = f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            keys += _non_finite_floats(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            keys.append(key)
    return keys


def penalizes_gradients(loss: LossConfig) -> bool:
    """Whether `loss` penalizes D's input gradients (wgan_gp's gradient penalty, or R1 with r1_gamma > 0):
    a double backward through D, per sample. The one rule for the objective, validation and the bench."""
    return loss.name == "wgan_gp" or loss.r1_gamma > 0


def _d_has_batchnorm(model: ModelConfig) -> bool:
    """The architecture's own answer (gan_dist.models); imported here only when a penalty asks, so that
    loading a config does not import torch."""
    from gan_dist.models import d_has_batchnorm

    return d_has_batchnorm(model)


def validate(config: Config, origin: str = "config") -> None:
    """Check values that types cannot: finite numbers, positive sizes, known names, combinations that
    cannot work. Raises ConfigError naming the key(s)."""

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{origin}: key '{key}': {message}")

    def one_of(value: str, choices: tuple[str, ...], key: str) -> None:
        require(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")

    for key in _non_finite_floats(config):
        raise ConfigError(f"{origin}: key '{key}': must be a finite number, got {_lookup(config, key)}")

    validate_model(config.model, origin)
    d, m, lo, o, t, lg, e, c, r = (config.data, config.model, config.loss, config.optim, config.train,
                                   config.log, config.eval, config.checkpoint, config.run)
    one_of(d.dataset, DATASET_NAMES, "data.dataset")
    require(d.source in DATA_SOURCES or (d.source.startswith(("idx:", "folder:")) and len(d.source.split(":", 1)[1]) > 0),
            "data.source", f"{d.source!r} is not one of auto, idx:DIR, folder:DIR, torchvision, wheel")
    require(not (d.source.startswith("folder:") and d.dataset != "folder"), "data.source",
            f"{d.source!r} needs data.dataset=folder (got data.dataset={d.dataset})")
    require(not (d.dataset == "folder" and (d.source.startswith("idx:") or d.source in ("torchvision", "wheel"))),
            "data.source", f"data.dataset=folder reads images with data.source=folder:DIR, not {d.source!r}")
    require(not (d.source == "wheel" and d.dataset != "mnist"), "data.source",
            f"the wheel source holds MNIST only (data.dataset={d.dataset})")
    if d.dataset != "folder":
        require(d.channels in (None, 1), "data.channels", f"{d.dataset} is grayscale (1 channel); "
                "data.channels applies to data.dataset=folder")
        require(d.image_size in (None, 28), "data.image_size", f"{d.dataset} images are 28x28; "
                "data.image_size applies to data.dataset=folder")
    require(d.channels in (None, 1, 3), "data.channels", f"must be 1 or 3, got {d.channels}")
    require(d.image_size is None or 8 <= d.image_size <= MAX_IMAGE_SIZE, "data.image_size",
            f"must be in [8, {MAX_IMAGE_SIZE}], got {d.image_size}")
    require(0.0 < d.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
    require(not any(char in d.root for char in "{}$"), "data.root",
            f"{d.root!r}: braces and '$' would be read as a WebDataset URL pattern; choose another folder")
    require(d.samples_per_shard > 0, "data.samples_per_shard", "must be > 0")
    require(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    require(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    one_of(d.on_corrupt, ON_CORRUPT, "data.on_corrupt")
    one_of(d.loader, LOADERS, "data.loader")
    require(d.memory_max_mb > 0, "data.memory_max_mb", "must be > 0")
    require(d.read_timeout_s >= 0, "data.read_timeout_s", "must be >= 0 (0: no deadline)")

    one_of(lo.name, LOSS_NAMES, "loss.name")
    require(0.0 <= lo.label_smoothing < 0.5, "loss.label_smoothing", "must be in [0, 0.5)")
    require(lo.label_smoothing == 0.0 or lo.name == "ns", "loss.label_smoothing",
            f"applies to loss.name=ns only (loss.name={lo.name})")
    require(lo.gp_weight > 0, "loss.gp_weight", "must be > 0")
    require(lo.r1_gamma >= 0, "loss.r1_gamma", "must be >= 0")
    require(lo.r1_every >= 1, "loss.r1_every", "must be >= 1")
    require(lo.acgan_weight > 0, "loss.acgan_weight", "must be > 0")
    penalized = penalizes_gradients(lo)
    if penalized and m.d_norm == "batch" and _d_has_batchnorm(m):
        keys = "loss.name=wgan_gp" if lo.name == "wgan_gp" else f"loss.r1_gamma={lo.r1_gamma}"
        raise ConfigError(f"{origin}: keys '{keys.split('=')[0]}' and 'model.d_norm': {keys} penalizes the "
                          "gradient of D for each sample, but BatchNorm in D mixes the samples of a batch; "
                          "set model.d_norm=layer (the WGAN-GP paper's choice) or model.d_norm=none")

    require(o.lr_g > 0, "optim.lr_g", "must be > 0")
    require(o.lr_d > 0, "optim.lr_d", "must be > 0")
    require(0.0 <= o.beta1 < 1.0, "optim.beta1", "must be in [0, 1)")
    require(0.0 <= o.beta2 < 1.0, "optim.beta2", "must be in [0, 1)")
    require(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    require(o.grad_clip_norm >= 0, "optim.grad_clip_norm", "must be >= 0")
    one_of(o.implementation, ADAM_IMPLEMENTATIONS, "optim.implementation")
    require(0.0 <= o.lr_decay_start <= 1.0, "optim.lr_decay_start", "must be in [0, 1] (1 = constant)")

    require(t.num_steps > 0, "train.num_steps", "must be > 0")
    require(t.d_steps_per_g >= 1, "train.d_steps_per_g", "must be >= 1")
    require(t.batch_size_per_process > 0, "train.batch_size_per_process", "must be > 0")
    require(t.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps", "must be > 0")
    one_of(t.mixed_precision, MIXED_PRECISION_MODES, "train.mixed_precision")
    require(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)")
    require(t.ema_warmup_steps >= 0, "train.ema_warmup_steps", "must be >= 0")
    if t.cuda_graph:
        require(d.loader in ("memory", "auto"), "train.cuda_graph", "needs data.loader=memory (a graph replays "
                "fixed device buffers; the stream loader's batches come from the host)")
        require(t.gradient_accumulation_steps == 1, "train.cuda_graph",
                "needs train.gradient_accumulation_steps=1")
        require(not penalized, "train.cuda_graph", "cannot capture the double backward of a gradient penalty "
                "(loss.name=wgan_gp or loss.r1_gamma > 0); use train.compile instead")
        require(t.mixed_precision != "fp16", "train.cuda_graph", "cannot capture fp16's GradScaler (its "
                "inf checks sync with the host); use bf16")
        require(not t.compile, "train.cuda_graph", "and train.compile are alternatives; choose one")
        require(o.lr_decay_start == 1.0, "train.cuda_graph", "replays a fixed learning rate: set "
                "optim.lr_decay_start=1.0")

    one_of(lg.tracker, TRACKERS, "log.tracker")
    one_of(lg.wandb_mode, WANDB_MODES, "log.wandb_mode")
    require(lg.log_every > 0, "log.log_every", "must be > 0")
    require(lg.sample_every >= 0, "log.sample_every", "must be >= 0")
    require(0 <= lg.grid_pixel_scale <= 16, "log.grid_pixel_scale", "must be in [0, 16] (0 = auto)")
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


def validate_model(m: ModelConfig, origin: str = "config") -> None:
    """The model section alone (also for the model section of a shared generator.yaml): known names and
    bounded sizes, so that no file can make `build_models` allocate an absurd network."""

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{origin}: key '{key}': {message}")

    require(m.name in MODEL_NAMES, "model.name", f"{m.name!r} is not one of {', '.join(MODEL_NAMES)}")
    require(0 < m.latent_dim <= MAX_LATENT_DIM, "model.latent_dim", f"must be in [1, {MAX_LATENT_DIM}]")
    require(m.g_width is None or 0 < m.g_width <= MAX_WIDTH, "model.g_width", f"must be in [1, {MAX_WIDTH}]")
    require(m.d_width is None or 0 < m.d_width <= MAX_WIDTH, "model.d_width", f"must be in [1, {MAX_WIDTH}]")
    require(m.d_dropout is None or (math.isfinite(m.d_dropout) and 0.0 <= m.d_dropout < 1.0), "model.d_dropout",
            "must be in [0, 1)")
    require(m.g_norm in G_NORMS, "model.g_norm", f"{m.g_norm!r} is not one of {', '.join(G_NORMS)}")
    require(m.d_norm in D_NORMS, "model.d_norm", f"{m.d_norm!r} is not one of {', '.join(D_NORMS)}")
    require(m.conditioning in CONDITIONING_MODES, "model.conditioning",
            f"{m.conditioning!r} is not one of {', '.join(CONDITIONING_MODES)}")


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def resolved_data_dir(data: DataConfig) -> Path:
    """Where the shards live: data.root, else $GAN_DIST_DATA_DIR/<dataset>, else ~/.cache/gan_dist/<dataset>.

    Keyed by data.dataset so that two datasets never share a cache folder (a folder dataset is further
    keyed by its source folder and settings). The rule lives in gan_dist.data.datasets.dataset_dir."""
    from gan_dist.data.datasets import dataset_dir

    return dataset_dir(data)


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
