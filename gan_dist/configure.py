"""`load_config(path, overrides)`: schema defaults <- YAML file <- `key=value` overrides, type-checked
(omegaconf, struct mode: unknown keys fail) and validated against the registries (`validate`). Every error is
a `ConfigError` naming the key (and the file), raised before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gan_dist.config import (
    ADAM_IMPLEMENTATIONS,
    CONDITIONING_MODES,
    D_NORMS,
    G_NORMS,
    LOADERS,
    MAX_IMAGE_SIZE,
    MAX_LATENT_DIM,
    MAX_WIDTH,
    MIXED_PRECISION_MODES,
    ON_CORRUPT,
    TRACKERS,
    WANDB_MODES,
    AugmentConfig,
    Config,
    ConfigError,
    EvalConfig,
    ModelConfig,
)
from gan_dist.registry.architectures import architecture, check_image_shape, d_has_batchnorm, model_options
from gan_dist.registry.augmentations import augmentation
from gan_dist.registry.datasets import DATASETS, dataset_spec
from gan_dist.registry.feature_nets import REFERENCE_SPLITS, RESIZES, feature_net
from gan_dist.registry.objectives import objective, penalizes_gradients


def _error_key(error: OmegaConfBaseException) -> str:
    full_key = getattr(error, "full_key", None)
    return str(full_key) if full_key else "?"


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults <- YAML file <- `key=value` overrides, checked; raises ConfigError naming the key."""
    schema = OmegaConf.structured(Config)
    OmegaConf.set_struct(schema, True)
    # model.options is the architecture's own section: its keys are checked against that architecture's
    # options dataclass once model.name is known (registry.architectures.model_options), not here.
    OmegaConf.set_struct(schema.model.options, False)
    layers: list[tuple[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            file_cfg = OmegaConf.load(path)
        except Exception as error:  # yaml.YAMLError and friends
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from error
        if not isinstance(file_cfg, DictConfig):
            raise ConfigError(f"{path}: a config file is a mapping of sections (data:, model:, train:, ...), "
                              f"not a {type(file_cfg).__name__.removesuffix('Config').lower()}")
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


def config_from_yaml(text: str) -> Config:
    """Inverse of `config.to_yaml`, checked against the schema (for the configs saved in run folders)."""
    merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(text))
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


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


def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def validate(config: Config, origin: str = "config") -> None:
    """Check values that types cannot: finite numbers, positive sizes, known names (from the registries),
    combinations that cannot work. Raises ConfigError naming the key(s)."""

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{origin}: key '{key}': {message}")

    def one_of(value: str, choices: tuple[str, ...], key: str) -> None:
        require(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")

    def known(lookup: Any, name: str) -> Any:
        try:
            return lookup(name)
        except ConfigError as error:
            raise ConfigError(f"{origin}: {error}") from None

    for key in _non_finite_floats(config):
        raise ConfigError(f"{origin}: key '{key}': must be a finite number, got {_lookup(config, key)}")

    validate_model(config.model, origin)
    d, m, lo, a, o, t, lg, e, c, r = (config.data, config.model, config.loss, config.augment, config.optim,
                                      config.train, config.log, config.eval, config.checkpoint, config.run)
    spec = known(dataset_spec, d.dataset)
    source_ok = d.source == "auto" or spec.accepts_source(d.source)
    require(source_ok, "data.source", f"{d.source!r} does not apply to data.dataset={d.dataset} "
            f"({' | '.join(spec.sources)})")
    sized = ", ".join(name for name, other in DATASETS.items() if other.size_is_an_option)
    if spec.image_shape is not None:
        channels, size, _ = spec.image_shape
        require(d.channels in (None, channels), "data.channels", f"{d.dataset} has {channels} channel(s); "
                "data.channels applies to data.dataset=folder")
        require(d.image_size in (None, size), "data.image_size", f"{d.dataset} images are {size}x{size}; "
                f"data.image_size applies to data.dataset={sized}")
    require(d.channels in (None, 1, 3), "data.channels", f"must be 1 or 3, got {d.channels}")
    require(d.image_size is None or 8 <= d.image_size <= MAX_IMAGE_SIZE, "data.image_size",
            f"must be in [8, {MAX_IMAGE_SIZE}], got {d.image_size}")
    cropped = ", ".join(name for name, other in DATASETS.items() if other.benchmark and other.benchmark.crops)
    shape_to_check = None if d.image_size is None else (d.channels or 1, d.image_size, d.image_size)
    if spec.benchmark is not None:  # the official archive's options: sizes, crop, RGB
        require(d.channels in (None, 3), "data.channels", f"{d.dataset} images are RGB (3 channels); "
                "data.channels applies to data.dataset=folder")
        size, _ = known(lambda _: spec.archive_settings(d.image_size, d.crop), d.dataset)
        shape_to_check = (3, size, size)
    else:
        require(d.crop is None, "data.crop", f"applies to data.dataset={cropped}")
    if shape_to_check is not None:  # before any folder or archive is converted at this size (issue 16)
        try:
            check_image_shape(m.name, shape_to_check)
        except ConfigError as error:
            raise ConfigError(f"{origin}: {error}") from None
    require(0.0 < d.test_fraction < 1.0, "data.test_fraction", "must be in (0, 1)")
    require(d.max_image_pixels >= 1, "data.max_image_pixels", "must be >= 1")
    require(not any(char in d.root for char in "{}$"), "data.root",
            f"{d.root!r}: braces and '$' would be read as a WebDataset URL pattern; choose another folder")
    require(d.samples_per_shard > 0, "data.samples_per_shard", "must be > 0")
    require(d.num_workers is None or d.num_workers >= 0, "data.num_workers", "must be >= 0 (or null: auto)")
    require(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    one_of(d.on_corrupt, ON_CORRUPT, "data.on_corrupt")
    one_of(d.loader, LOADERS, "data.loader")
    require(d.memory_max_mb > 0, "data.memory_max_mb", "must be > 0")
    require(d.train_subset >= 0, "data.train_subset", "must be >= 0 (0: the whole train split)")
    require(d.train_subset == 0 or d.loader != "stream", "data.train_subset",
            "needs data.loader=memory or auto (the subset is drawn from the split held in memory)")
    require(d.read_timeout_s >= 0, "data.read_timeout_s", "must be >= 0 (0: no deadline)")

    loss_spec = known(objective, lo.name)
    require(0.0 <= lo.label_smoothing < 0.5, "loss.label_smoothing", "must be in [0, 0.5)")
    require(lo.label_smoothing == 0.0 or loss_spec.label_smoothing, "loss.label_smoothing",
            f"does not apply to loss.name={lo.name}")
    require(lo.gp_weight > 0, "loss.gp_weight", "must be > 0")
    require(lo.r1_gamma >= 0, "loss.r1_gamma", "must be >= 0")
    require(lo.r1_every >= 1, "loss.r1_every", "must be >= 1")
    require(lo.acgan_weight > 0, "loss.acgan_weight", "must be > 0")
    penalized = penalizes_gradients(lo)
    if penalized and d_has_batchnorm(m):
        keys = f"loss.name={lo.name}" if loss_spec.gradient_penalty else f"loss.r1_gamma={lo.r1_gamma}"
        raise ConfigError(f"{origin}: keys '{keys.split('=')[0]}' and 'model.d_norm': {keys} penalizes the "
                          "gradient of D for each sample, but BatchNorm in D mixes the samples of a batch; "
                          "set model.d_norm=layer (the WGAN-GP paper's choice) or model.d_norm=none")

    augment_spec = known(augmentation, a.name)
    require(0.0 <= a.p <= 1.0, "augment.p", "must be in [0, 1]")
    require(0.0 < a.target < 1.0, "augment.target", "must be in (0, 1)")
    require(a.interval >= 1, "augment.interval", "must be >= 1")
    require(a.speed_kimg > 0, "augment.speed_kimg", "must be > 0")
    require(a.policy == AugmentConfig.policy or bool(augment_spec.policy_ops), "augment.policy",
            f"does not apply to augment.name={a.name}")
    if augment_spec.policy_ops:
        unknown = [op for op in a.policy.split(",") if op.strip() not in augment_spec.policy_ops]
        require(not unknown, "augment.policy", f"unknown operation(s) {', '.join(map(repr, unknown))}; a "
                f"comma-separated list of {', '.join(augment_spec.policy_ops)}")
    require(a.pipeline == AugmentConfig.pipeline or bool(augment_spec.pipelines), "augment.pipeline",
            f"does not apply to augment.name={a.name}")
    if augment_spec.pipelines:
        one_of(a.pipeline, augment_spec.pipelines, "augment.pipeline")

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
    arch = architecture(m.name)
    if t.compile:
        require(arch.compile_ok, "train.compile", f"model.name={m.name} does not support it")
    if t.cuda_graph:
        require(arch.cuda_graph_ok, "train.cuda_graph", f"model.name={m.name} cannot be captured: "
                f"{arch.cuda_graph_refusal}")
        require(d.loader in ("memory", "auto"), "train.cuda_graph", "needs data.loader=memory (a graph replays "
                "fixed device buffers; the stream loader's batches come from the host)")
        require(t.gradient_accumulation_steps == 1, "train.cuda_graph",
                "needs train.gradient_accumulation_steps=1")
        require(not penalized, "train.cuda_graph", "cannot capture the double backward of a gradient penalty "
                f"(loss.name={lo.name}, loss.r1_gamma={lo.r1_gamma}); set train.cuda_graph=false")
        require(t.mixed_precision != "fp16", "train.cuda_graph", "cannot capture fp16's GradScaler (its "
                "inf checks sync with the host); use bf16")
        require(not t.compile, "train.cuda_graph", "and train.compile are alternatives; choose one")
        require(o.lr_decay_start == 1.0, "train.cuda_graph", "replays a fixed learning rate: set "
                "optim.lr_decay_start=1.0")
        require(not augment_spec.adaptive, "train.cuda_graph", f"cannot capture augment.name={a.name} (its p "
                "adapts from a collective between steps); use a fixed augmentation or turn the graph off")

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
    net = known(lambda value: feature_net(value, spec.default_feature_net), e.feature_net)
    one_of(e.resize, RESIZES, "eval.resize")
    require(e.resize == EvalConfig().resize or net.resizes, "eval.resize",
            f"does not apply to eval.feature_net={e.feature_net or net.name} (it reads images at their own size)")
    require(not e.inception_weights or net.fetches_weights, "eval.inception_weights",
            f"does not apply to eval.feature_net={e.feature_net or net.name}")
    one_of(e.reference_split, REFERENCE_SPLITS, "eval.reference_split")
    require(e.num_samples >= net.inception_score_splits, "eval.num_samples",
            f"eval.feature_net={e.feature_net or net.name} computes the Inception Score over "
            f"{net.inception_score_splits} splits: needs at least that many samples, got {e.num_samples}")

    require(c.every >= 0, "checkpoint.every", "must be >= 0")
    require(c.keep_last >= 1, "checkpoint.keep_last", "must be >= 1")

    require(config.dist.timeout_s > 0, "dist.timeout_s", "must be > 0")
    require("/" not in r.name and r.name not in (".", ".."), "run.name", f"{r.name!r} must be a plain folder name")


def validate_model(m: ModelConfig, origin: str = "config") -> None:
    """The model section alone (also for the model record of a shared generator): known names, typed options
    and bounded sizes, so that no file can make the builders allocate an absurd network."""

    def require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{origin}: key '{key}': {message}")

    try:
        spec = architecture(m.name)
        model_options(m)
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error}") from None
    require(0 < m.latent_dim <= MAX_LATENT_DIM, "model.latent_dim", f"must be in [1, {MAX_LATENT_DIM}]")
    require(m.g_width is None or 0 < m.g_width <= MAX_WIDTH, "model.g_width", f"must be in [1, {MAX_WIDTH}]")
    require(m.d_width is None or 0 < m.d_width <= MAX_WIDTH, "model.d_width", f"must be in [1, {MAX_WIDTH}]")
    require(m.d_dropout is None or (math.isfinite(m.d_dropout) and 0.0 <= m.d_dropout < 1.0), "model.d_dropout",
            "must be in [0, 1)")
    require(m.g_norm in G_NORMS, "model.g_norm", f"{m.g_norm!r} is not one of {', '.join(G_NORMS)}")
    require(m.d_norm in D_NORMS, "model.d_norm", f"{m.d_norm!r} is not one of {', '.join(D_NORMS)}")
    require(m.conditioning in CONDITIONING_MODES, "model.conditioning",
            f"{m.conditioning!r} is not one of {', '.join(CONDITIONING_MODES)}")
    require(not m.spectral_norm or spec.spectral_norm == "optional", "model.spectral_norm",
            f"model.name={m.name} " + ("has spectral normalization built in" if spec.spectral_norm == "builtin"
                                       else "does not use spectral normalization") + "; leave model.spectral_norm=false")
