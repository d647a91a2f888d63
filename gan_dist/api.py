"""Using what was trained, from Python: load a generator, sample it by seed, truncate, walk its latent space,
and export it as a shareable folder (the Hugging Face Hub's model layout, with a model card).

    from gan_dist import load_generator
    G = load_generator("runs/exp1")                  # a run folder, an exported folder or a checkpoint folder
    images = G.sample(16, seed=0)                    # uint8 (16, H, W, C): seeds 0..15, one image per seed
    images = G.sample(seed=[3, 17, 42], class_=7, truncation=0.7, device="cuda", output="float")

Loading reads only safetensors and the validated model record (gan_dist.checkpoint.load_generator): nothing
in a folder runs code. The CLI's `sample`, `interpolate` and `export` call these functions. The rules (what a
seed is, what truncation means for each latent space, what a walk interpolates) are in docs/design-notes.md,
"Using a trained generator".
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import gan_dist.checkpoint as _checkpoint
from gan_dist.checkpoint import GeneratorInfo
from gan_dist.config import ConfigError
from gan_dist.files import fsync_dir, write_bytes_durably
from gan_dist.registry.architectures import architecture
from gan_dist.registry.datasets import DATASETS
from gan_dist.sampling import (
    MAX_SEEDS,
    SEED_BATCH,
    check_image_count,
    check_seeds,
    check_walk,
    noise_with_truncation,
    num_classes_of,
    sample_images,
    save_grid_png,
    seed_latents,
    seed_slots,
    slerp,
    walk_times,
)

OUTPUTS = ("uint8", "float")


class ExportError(RuntimeError):
    """An export or upload that could not be done (no token, no network, the Hub refused): one line."""


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gan_dist")
    except PackageNotFoundError:
        return "unknown"


# -- the generator -------------------------------------------------------------------------------------------

class Generator:
    """A trained G with what it declares, ready to sample. `module` is the plain nn.Module (eval mode), `info`
    its record (model, dataset, image shape, classes, step, EMA), `latent_space` "z" or "w" (the registry's
    fact: where truncation and walks act)."""

    def __init__(self, module: nn.Module, info: GeneratorInfo, source: str = "") -> None:
        self.module = module.eval()
        self.info = info
        self.source = source
        self.latent_space = architecture(info.model.name).latent_space

    def __repr__(self) -> str:
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"Generator({self.info.model.name} on {self.info.dataset}, step {self.info.step}, "
                f"latent {self.latent_space} {self.latent_dim}{classes}, {self.device})")

    @property
    def latent_dim(self) -> int:
        return int(self.module.latent_dim)

    @property
    def num_classes(self) -> int:
        return num_classes_of(self.module)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.module.image_shape)  # type: ignore[return-value]

    @property
    def device(self) -> torch.device:
        tensor = next(iter(self.module.state_dict().values()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> Generator:
        self.module.to(device)
        return self

    # -- checks -------------------------------------------------------------------------------------------
    def check_truncation(self, psi: float, what: str = "truncation") -> float:
        """psi as a float; ConfigError naming `what` when this G cannot truncate by it: a "z" G takes psi in
        [0, 1]; a "w" G any finite psi, but only with a tracked mean w (not all zeros, as before training)."""
        try:
            psi = float(psi)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} {psi!r}: not a number") from None
        if not np.isfinite(psi):
            raise ConfigError(f"{what} {psi}: not a finite number")
        if psi == 1.0:
            return psi
        if self.latent_space == "z" and not 0.0 <= psi <= 1.0:
            raise ConfigError(f"{what} {psi}: {self.info.model.name} samples z (latent_space z), where psi scales "
                              "a truncated normal: give a value in [0, 1] (1 = no truncation)")
        if self.latent_space == "w" and not bool(self.module.w_avg.any()):
            raise ConfigError(f"{what} {psi}: this generator's tracked mean w is all zeros (it was never trained), "
                              "so there is no centre to truncate toward; use truncation 1")
        return psi

    def check_class(self, class_index: int, what: str = "class") -> int:
        if self.num_classes == 0:
            raise ConfigError(f"{what} {class_index}: this generator is unconditional (model.conditioning="
                              f"{self.info.model.conditioning}); train with model.conditioning=concat|acgan|projection")
        if isinstance(class_index, bool) or not isinstance(class_index, (int, np.integer)) \
                or not 0 <= class_index < self.num_classes:
            raise ConfigError(f"{what} {class_index}: the generator knows classes 0..{self.num_classes - 1} "
                              f"({self.info.dataset})")
        return int(class_index)

    def _seed_classes(self, seeds: list[int], class_: int | Sequence[int] | None) -> list[int] | None:
        """One class per seed: class_ for all, a list (one per seed), or, for a conditional G given none,
        seed % num_classes (a function of the seed, so the image still is)."""
        if self.num_classes == 0:
            if class_ is not None:
                self.check_class(class_ if isinstance(class_, int) else -1)
            return None
        if class_ is None:
            return [seed % self.num_classes for seed in seeds]
        if isinstance(class_, (int, np.integer)):
            return [self.check_class(class_)] * len(seeds)
        classes = [self.check_class(c) for c in itertools.islice(class_, len(seeds) + 1)]
        if len(classes) != len(seeds):
            raise ConfigError(f"class_: {len(classes)} classes for {len(seeds)} seeds; give one class, or one per seed")
        return classes

    # -- latents ------------------------------------------------------------------------------------------
    def latents(self, seeds: Sequence[int], truncation: float = 1.0) -> Tensor:
        """z (len(seeds), latent_dim) on the CPU, one row per seed (sampling.seed_latents); for a "z" G with
        truncation < 1 the truncated normal of each seed (a "w" G truncates in w instead)."""
        psi = self.check_truncation(truncation)
        return seed_latents(check_seeds(seeds), self.latent_dim, psi if self.latent_space == "z" else 1.0)

    def noise(self, num_images: int, seed: int, truncation: float = 1.0) -> Tensor:
        """z (num_images, latent_dim) drawn together from one generator seeded with `seed` (the rule of
        `gan-dist sample --seed`, evaluation and training grids), truncated for a "z" G when truncation < 1."""
        psi = self.check_truncation(truncation)
        check_image_count(num_images, self.image_shape, "num_images")
        return noise_with_truncation(num_images, self.latent_dim, seed, psi if self.latent_space == "z" else 1.0)

    # -- running G ------------------------------------------------------------------------------------------
    def _synthesis_kwargs(self) -> dict[str, Any]:
        """Seed mode runs a "w" G's synthesis with its constant noise maps (stylegan2-ada's gen_images default),
        so that an image is a function of its seed; a synthesis without noise inputs takes none."""
        import inspect

        parameters = inspect.signature(self.module.synthesis.forward).parameters
        return {"noise_mode": "const"} if "noise_mode" in parameters else {}

    @torch.no_grad()
    def _images(self, z: Tensor, labels: Tensor | None, psi: float, fixed_noise: bool) -> Tensor:
        """Raw G output (B, C, H, W) float32 for rows already on the device. A "w" G maps with truncation psi
        toward w_avg; `fixed_noise` gives it its constant noise maps (seed mode)."""
        G = self.module
        if self.latent_space == "w" and (psi != 1.0 or fixed_noise):
            ws = G.mapping(z, labels, truncation_psi=psi)  # (B, num_ws, w_dim)
            return G.synthesis(ws, **(self._synthesis_kwargs() if fixed_noise else {})).float()
        return G(z).float() if labels is None else G(z, labels).float()

    def generate(self, z: Tensor, labels: Tensor | None = None, *, truncation: float = 1.0,
                 device: str | torch.device | None = None, output: str = "float", batch_size: int = 500) -> Tensor:
        """G on latents you give, `batch_size` rows per call (what `gan-dist sample --seed` runs): z (N,
        latent_dim), labels (N,) int64 for a conditional G. truncation acts in w for a "w" G; a "z" G's
        truncation is in its z (draw it with `noise` or `latents`), so here it must stay 1. At truncation 1
        these are sampling.sample_images's images (clamped to [-1, 1], as the PNG and uint8 writers clamp): the
        files of every earlier version."""
        psi = self.check_truncation(truncation)
        if self.latent_space == "z" and psi != 1.0:
            raise ConfigError("truncation: a z generator's truncation is in z; draw z with Generator.noise(..., "
                              "truncation=psi) or Generator.latents(...) and call generate with truncation 1")
        check_image_count(len(z), self.image_shape, "z")
        if device is not None:
            self.to(device)
        target = self.device
        if psi == 1.0:
            images = sample_images(self.module, z, labels, device=target, batch_size=batch_size)
        else:
            images = torch.cat([self._images(z[i:i + batch_size].to(target),
                                             None if labels is None else labels[i:i + batch_size].to(target),
                                             psi, fixed_noise=False) for i in range(0, len(z), batch_size)])
        return _convert(images, output)

    def sample(self, n: int | None = None, *, seed: int | Sequence[int] = 0,
               class_: int | Sequence[int] | None = None, truncation: float = 1.0,
               device: str | torch.device | None = None, output: str = "uint8") -> Tensor:
        """Images, one per seed: seed=s with n gives seeds s, s+1, ..., s+n-1 (n None: 1); seed=[...] those
        seeds (n None or their count). The image of a seed does not depend on the others asked with it, their
        order, the batch or the process count (module docstring of gan_dist.sampling).

        class_: a conditional G's class for every image, or one per seed (None: seed % num_classes).
        truncation: psi; 1 = none. "w" G: w <- w_avg + psi (w - w_avg); "z" G: z ~ psi * TN(-2, 2).
        device: where G runs and the images are (None: where G is; G moves there and stays).
        output: "uint8" (N, H, W, C) in [0, 255], or "float" (N, C, H, W) in [-1, 1].
        At most sampling.max_images(image_shape) images per call (512 MiB as float32; ConfigError before any is
        made): ask for more in several calls, e.g. seed=range(s, s + k).
        """
        if output not in OUTPUTS:
            raise ConfigError(f"output {output!r}: not one of {', '.join(OUTPUTS)}")
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
            count = 1 if n is None else n
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SEEDS:
                raise ConfigError(f"n: {n!r} images; give a count in [1, {MAX_SEEDS:,}]")
            check_image_count(count, self.image_shape, "n")
            seeds = check_seeds(range(int(seed), int(seed) + count))
        else:
            seeds = check_seeds(seed)
            if n is not None and n != len(seeds):
                raise ConfigError(f"n={n} but {len(seeds)} seeds: give one or the other")
            check_image_count(len(seeds), self.image_shape, "seed")
        classes = self._seed_classes(seeds, class_)
        psi = self.check_truncation(truncation)
        z = self.latents(seeds, psi)  # (N, latent_dim) on the CPU
        if device is not None:
            self.to(device)
        target = self.device
        C, H, W = self.image_shape
        images = torch.empty(len(seeds), C, H, W, device=target)
        for batch in seed_slots(seeds):
            rows = torch.tensor([row for row, _ in batch])
            picked = torch.tensor([index for _, index in batch])
            z_batch = torch.zeros(SEED_BATCH, self.latent_dim)  # padded rows: z = 0, class 0
            z_batch[rows] = z[picked]
            labels = None
            if classes is not None:
                labels = torch.zeros(SEED_BATCH, dtype=torch.int64)
                labels[rows] = torch.tensor([classes[index] for _, index in batch])
                labels = labels.to(target)
            out = self._images(z_batch.to(target), labels, psi, fixed_noise=True)  # (SEED_BATCH, C, H, W)
            images[picked.to(target)] = out[rows.to(target)]
        return _convert(images, output)

    def keyframes(self, seeds: Sequence[int], classes: Sequence[int] | None = None
                  ) -> tuple[list[int], list[int] | None]:
        """(seed per keyframe, class per keyframe or None): seeds and classes pair up, a single one of either
        serves every keyframe; a conditional G given no classes takes seed % num_classes. At least two."""
        seeds = check_seeds(seeds, "seeds")
        classes = None if classes is None else [self.check_class(c, "classes")
                                                for c in itertools.islice(classes, MAX_SEEDS + 1)]
        if classes is not None and len(classes) > MAX_SEEDS:
            raise ConfigError(f"classes: more than {MAX_SEEDS:,} in one walk")
        classes = classes or None
        count = max(len(seeds), len(classes or []))
        for name, values in (("seeds", seeds), ("classes", classes or [])):
            if len(values) not in (0, 1, count):
                raise ConfigError(f"{name}: {len(values)} given, the walk has {count} keyframes; give one or {count}")
        if count < 2:
            raise ConfigError("a walk needs two keyframes or more: give two or more seeds, or two or more classes")
        key_seeds = seeds * count if len(seeds) == 1 else seeds
        if classes is None:
            return key_seeds, self._seed_classes(key_seeds, None)
        return key_seeds, classes * count if len(classes) == 1 else classes

    def interpolate(self, seeds: Sequence[int], frames: int = 30, *, classes: Sequence[int] | None = None,
                    truncation: float = 1.0, loop: bool = False, device: str | torch.device | None = None,
                    output: str = "uint8") -> Tensor:
        """A latent walk through keyframes (seed_k, class_k), `frames` frames per transition (t = i / frames),
        ending on the last keyframe (loop: returning toward the first). seeds and classes pair up; a single
        one of either is used for every keyframe. "z" G: slerp of the keyframes' z, and for a conditional G
        a linear blend of their classes (of the one-hot input, or of the class embeddings); "w" G: lerp of their w
        (each mapped with its class and truncation). Images as `sample`'s `output`. At most
        sampling.MAX_WALK_FRAMES frames, and MAX_IMAGE_VALUES values: refused from the numbers first."""
        if output not in OUTPUTS:
            raise ConfigError(f"output {output!r}: not one of {', '.join(OUTPUTS)}")
        key_seeds, key_classes = self.keyframes(seeds, classes)
        count = len(key_seeds)
        check_walk(count, frames, loop, self.image_shape, "frames")  # from the numbers, before listing the walk
        times = walk_times(count, int(frames), loop)
        psi = self.check_truncation(truncation)
        if device is not None:
            self.to(device)
        target = self.device
        z = self.latents(key_seeds, psi).to(target)  # (K, latent_dim)
        labels = None if key_classes is None else torch.tensor(key_classes, device=target)
        starts = torch.tensor([a for a, _, _ in times], device=target)
        ends = torch.tensor([b for _, b, _ in times], device=target)
        t = torch.tensor([t for _, _, t in times], device=target, dtype=torch.float32).unsqueeze(1)  # (F, 1)
        images = []
        with torch.no_grad():
            if self.latent_space == "w":
                ws = self.module.mapping(z, labels, truncation_psi=psi)  # (K, num_ws, w_dim), eval mode
                kwargs = self._synthesis_kwargs()
                for i in range(0, len(times), SEED_BATCH):
                    a, b, tt = starts[i:i + SEED_BATCH], ends[i:i + SEED_BATCH], t[i:i + SEED_BATCH, :, None]
                    images.append(self.module.synthesis(torch.lerp(ws[a], ws[b], tt), **kwargs).float())
            else:
                for i in range(0, len(times), SEED_BATCH):
                    a, b = starts[i:i + SEED_BATCH], ends[i:i + SEED_BATCH]
                    z_t = torch.stack([slerp(z[j:j + 1], z[k:k + 1], float(u))[0]
                                       for j, k, u in zip(a.tolist(), b.tolist(), t[i:i + SEED_BATCH, 0].tolist(),
                                                          strict=True)])
                    if labels is None:
                        images.append(self.module(z_t).float())
                        continue
                    eye = torch.eye(self.num_classes, device=target)
                    weights = torch.lerp(eye[labels[a]], eye[labels[b]], t[i:i + SEED_BATCH])  # (b, K)
                    images.append(_with_label_weights(self.module, z_t, weights).float())
        return _convert(torch.cat(images), output)


def _with_label_weights(G: nn.Module, z: Tensor, weights: Tensor) -> Tensor:
    """A "z" G on z with a blend of classes `weights` (B, K), for this call only. A z model reads its label in
    one of two places, and both are given the blend: GeneratorBase.latent_input ([z, one-hot] into the first
    layer: keras_dcgan, dcgan, mlp) gets `weights` instead of the one-hot, and every class embedding table
    (nn.Embedding indexed by the label: resnet_sngan's categorical BatchNorms, biggan's shared or per-BN
    embeddings) returns weights @ table, the linear blend of the classes' embeddings (BigGAN's class
    interpolation)."""
    def latent_input(z_in: Tensor, labels: Tensor | None) -> Tensor:
        return torch.cat([z_in, weights.to(z_in.dtype)], dim=1)  # (B, latent_dim + K)

    def blended(table: nn.Embedding) -> Any:
        def forward(labels: Tensor) -> Tensor:
            return weights.to(table.weight.dtype) @ table.weight  # (B, K) @ (K, D) -> (B, D)
        return forward

    tables = [m for m in G.modules() if isinstance(m, nn.Embedding)]
    G.latent_input = latent_input  # instance attributes over the methods, removed below
    for table in tables:
        table.forward = blended(table)
    try:
        return G(z, torch.zeros(len(z), dtype=torch.int64, device=z.device))
    finally:
        del G.latent_input
        for table in tables:
            del table.forward


def _convert(images: Tensor, output: str) -> Tensor:
    """(N, C, H, W) G output -> "float" clamped to [-1, 1], or "uint8" (N, H, W, C) as the loader's inverse
    (sampling.images_to_uint8's rounding)."""
    if output == "float":
        return images.float().clamp(-1.0, 1.0)
    pixels = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


def load_generator(path: str | os.PathLike, checkpoint: str | None = None, *, use_ema: bool = True,
                   device: str | torch.device = "cpu") -> Generator:
    """The generator at `path`: a run folder (checkpoint: "best" | "last" | "step_N"; None = last), a folder
    written by `gan-dist export`, a checkpoint folder, or a generator.safetensors / model.safetensors file.
    Reads only the safetensors weights and the validated model record; nothing in the folder runs.
    use_ema=False: the raw G of a checkpoint rather than its EMA. Errors: FileNotFoundError (not there),
    ConfigError (a bad `checkpoint` or a record that does not fit), CheckpointError (damaged weights)."""
    G, info = _checkpoint.load_generator(path, None, use_ema=use_ema, map_location=device, select=checkpoint)
    return Generator(G, info, str(path))


# -- export: a shareable folder ----------------------------------------------------------------------------

CARD = "README.md"
SAMPLE_GRID = "sample_grid.png"
GRID_COLUMNS = 8  # sample grid: seeds 0..63 as 8 x 8, or one row per class with seeds 0..7
METRIC_NAMES = {"fid": "FID", "is": "Inception Score", "inception_score": "Inception Score", "kid": "KID",
                "intra_fid": "intra-FID", "classes_covered": "classes covered",
                "class_accuracy": "class accuracy", "classes": "classes covered"}


@dataclass
class Exported:
    """What `export_model` wrote."""

    folder: Path
    label: str  # which checkpoint, in words
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


def _eval_record(run: Path, step: int) -> dict[str, Any] | None:
    """The run's last evals.jsonl line at `step` (a torn last line is skipped), or None."""
    path = run / "evals.jsonl"
    if not path.is_file():
        return None
    found = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step") == step:
            found = record
    return found


def _training_config(run: Path) -> dict[str, Any] | None:
    """The run's config.yaml as plain data (never resolved: interpolations stay text), or None."""
    import yaml

    path = run / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _protocol(record: dict[str, Any], config: dict[str, Any] | None, dataset: str) -> dict[str, Any]:
    """How the metrics were measured: the record's own protocol when it has one, else what the run's config
    and the evaluator's rules say (feature network, samples, the reference split and the real-data floor)."""
    protocol = dict(record.get("protocol") or {})
    eval_config = (config or {}).get("eval") or {}
    feature_net = eval_config.get("feature_net") or ""
    spec = DATASETS.get(dataset)
    default = spec.default_feature_net if spec is not None else "classifier"
    protocol.setdefault("feature_network", feature_net or f"{default} (the dataset's default)")
    protocol.setdefault("num_samples", record.get("num_samples", eval_config.get("num_samples")))
    protocol.setdefault("reference", "the dataset's test split")
    protocol.setdefault("seed", (config or {}).get("run", {}).get("seed"))
    return {key: value for key, value in protocol.items() if value is not None}


def _card(name: str, info: GeneratorInfo, label: str, latent_space: str, metrics: dict[str, float],
          floor: dict[str, float], protocol: dict[str, Any], config: dict[str, Any] | None, images_seen: Any,
          repo_id: str | None) -> str:
    """README.md of an exported folder: YAML metadata (the Hub's model card fields) and the card's text."""
    import yaml

    spec = DATASETS.get(info.dataset)
    title = spec.title if spec is not None else info.dataset
    arch = architecture(info.model.name)
    conditional = info.num_classes > 0
    task = "class-conditional-image-generation" if conditional else "unconditional-image-generation"
    loss = ((config or {}).get("loss") or {}).get("name")
    tags = ["gan_dist", "gan", "image-generation", task, info.model.name] + ([loss] if loss else []) \
        + [info.dataset]
    metadata: dict[str, Any] = {"library_name": "gan_dist", "tags": list(dict.fromkeys(tags))}
    if info.dataset != "folder":
        metadata["datasets"] = [info.dataset]
    if not conditional:
        metadata["pipeline_tag"] = "unconditional-image-generation"
    shown = {key: value for key, value in metrics.items() if key != "eval_seconds"}
    if shown:
        metadata["metrics"] = sorted(shown)
        args = {key.replace(" ", "_"): value for key, value in protocol.items()}
        metadata["model-index"] = [{"name": repo_id or name, "results": [{
            "task": {"type": task, "name": "Image generation"},
            "dataset": {"type": info.dataset, "name": title, "split": "test"},
            "metrics": [{"type": key, "value": round(float(value), 4), "name": METRIC_NAMES.get(key, key),
                         "args": dict(args)} for key, value in sorted(shown.items())]}]}]
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    shape = "x".join(str(size) for size in info.image_shape)
    classes = f", {info.num_classes} classes (model.conditioning={info.model.conditioning})" if conditional else ""
    where = f'snapshot_download("{repo_id}")' if repo_id else '"path/to/this/folder"'
    lines = [f"---\n{front}---", "", f"# {repo_id or name}", "",
             f"A `{info.model.name}` generator ({arch.title}) trained with "
             f"[gan_dist](https://pypi.org/project/gan-dist/) on {title} ({shape}{classes}). "
             f"Weights: {'the EMA of G' if info.is_ema else 'G'} of the checkpoint **{label}** (step {info.step}"
             + (f", {images_seen:,} images seen" if isinstance(images_seen, int) else "") + ").", "",
             f"![samples of seeds 0..{GRID_COLUMNS - 1} per row]({SAMPLE_GRID})" if conditional
             else f"![samples of seeds 0..{GRID_COLUMNS ** 2 - 1}]({SAMPLE_GRID})", "",
             ("One row per class, one column per seed (0..7)." if conditional
              else f"Seeds 0..{GRID_COLUMNS ** 2 - 1}, row by row."), "",
             "## Use it", "", "```python",
             "from gan_dist import load_generator" + ("\nfrom huggingface_hub import snapshot_download" if repo_id else ""),
             "", f"G = load_generator({where})",
             "images = G.sample(16, seed=0)            # uint8 (16, H, W, C): seeds 0..15, one image per seed",
             "images = G.sample(seed=[3, 17, 42], truncation=0.7, output=\"float\")  # (3, C, H, W) in [-1, 1]",
             "```", "", "```bash",
             "gan-dist sample --run DIR --seeds 0-63 --out grid.png",
             "gan-dist interpolate --run DIR --seeds 3,17,42 --frames 30 --out walk.gif", "```", "",
             f"Latent space `{latent_space}` ({info.model.latent_dim} dims): "
             + ("truncation pulls w toward the mean w tracked during training."
                if latent_space == "w" else "truncation psi draws z from psi * TN(-2, 2) (BigGAN's trick)."),
             "Loading reads only `model.safetensors` and `config.json` (validated); nothing here runs code.", ""]
    lines += ["## Evaluation", ""]
    if shown:
        lines += ["| metric | value | real-data floor |", "|---|---|---|"]
        lines += [f"| {key} | {value:.4f} | " + (f"{floor[key]:.4f}" if key in floor else "-") + " |"
                  for key, value in sorted(shown.items())]
        lines += ["", "Protocol: " + "; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in protocol.items())
                  + ". The floor is the same metric for as many real train images; compare numbers of one "
                  "protocol only.", ""]
    else:
        lines += [f"No evaluation was recorded at step {info.step} (the run's evals.jsonl has none).", ""]
    lines += ["## Checkpoint", "",
              f"{label}: step {info.step}, {'G_ema' if info.is_ema else 'G'}. `gan-dist export --checkpoint "
              "best|last|step_N` picks it (best: the lowest FID the run recorded, checkpoints/best.json).", ""]
    if config is not None:
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    lines += ["## Files", "", f"- `{_checkpoint.EXPORT_WEIGHTS}`: the generator's weights (safetensors)",
              f"- `{_checkpoint.EXPORT_CONFIG}`: the model record (architecture, dataset, image shape, classes, "
              "step, EMA, gan_dist version, metrics)", f"- `{SAMPLE_GRID}`: the samples above", ""]
    return "\n".join(lines)


def _sample_grid(G: Generator, path: Path) -> None:
    if G.num_classes:
        seeds = list(range(GRID_COLUMNS))
        images = torch.cat([G.sample(seed=seeds, class_=k, output="float") for k in range(G.num_classes)])
    else:
        images = G.sample(GRID_COLUMNS ** 2, seed=0, output="float")
    save_grid_png(images.cpu(), path, columns=GRID_COLUMNS)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out}: exists and is not empty; choose another folder or pass --force to replace it")


def export_model(run: str | os.PathLike, out: str | os.PathLike, *, checkpoint: str | None = None,
                 force: bool = False, repo_id: str | None = None,
                 report: Any = print) -> Exported:
    """Write `out`: model.safetensors, config.json, README.md (a model card) and sample_grid.png, from a run
    folder's generator (checkpoint: best | last | step_N; None = best when the run tracked one, else last).
    The folder is written under a temp name beside `out` and renamed into place, so it is there whole or not
    at all; an existing non-empty `out` is replaced only with force. The checkpoint is verified (sizes and
    sha256 of meta.json) before anything is read from it."""
    run_path, out_path = Path(run).expanduser(), Path(out).expanduser()
    if not run_path.is_dir() or not ((run_path / _checkpoint.CHECKPOINTS).is_dir()
                                     or (run_path / _checkpoint.GENERATOR_WEIGHTS).is_file()):
        raise FileNotFoundError(f"--run {run}: not a run folder (no {_checkpoint.CHECKPOINTS}/ and no "
                                f"{_checkpoint.GENERATOR_WEIGHTS})")
    _check_out(out_path, force)
    if checkpoint is None:
        checkpoint = "best" if _checkpoint.read_best(run_path).get("step") is not None else "last"
        report(f"gan-dist export: --checkpoint {checkpoint} ("
               + ("the best FID the run recorded" if checkpoint == "best" else "the run recorded no best FID")
               + ")")
    source = _checkpoint.generator_source(run_path, checkpoint)
    meta: dict[str, Any] = {}
    if source.checkpoint_dir is not None:
        meta = _checkpoint.verify_checkpoint(source.checkpoint_dir)
    G = load_generator(source.weights)
    info = G.info
    record = _eval_record(run_path, info.step) or {}
    metrics = {key: float(value) for key, value in (record.get("metrics") or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if not metrics and checkpoint == "best":
        metrics = {key: float(value) for key, value in
                   (_checkpoint.read_best(run_path).get("metrics") or {}).items() if isinstance(value, (int, float))}
    metrics.pop("eval_seconds", None)
    floor = {key: float(value) for key, value in (record.get("floor") or {}).items() if isinstance(value, (int, float))}
    config = _training_config(run_path)
    protocol = _protocol(record, config, info.dataset) if metrics else {}
    spec = DATASETS.get(info.dataset)
    record_json = {
        "library_name": "gan_dist", "gan_dist_version": _package_version(),
        "model": dataclasses.asdict(info.model), "dataset": info.dataset, "image_shape": list(info.image_shape),
        "num_classes": info.num_classes, "step": info.step, "is_ema": info.is_ema,
        "latent_space": G.latent_space, "latent_dim": info.model.latent_dim, "checkpoint": source.label,
    }
    if info.num_classes and spec is not None and spec.class_names and len(spec.class_names) == info.num_classes:
        record_json["class_names"] = list(spec.class_names)
    if metrics:
        record_json["metrics"] = metrics
        record_json["evaluation_protocol"] = protocol
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".tmp-export-{out_path.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = _checkpoint.tensors_to_bytes(G.module.state_dict(),
                                               metadata={"step": str(info.step), "ema": str(info.is_ema)})
        write_bytes_durably(tmp / _checkpoint.EXPORT_WEIGHTS, weights)
        write_bytes_durably(tmp / _checkpoint.EXPORT_CONFIG,
                            (json.dumps(record_json, indent=2, sort_keys=True) + "\n").encode())
        _sample_grid(G, tmp / SAMPLE_GRID)
        card = _card(out_path.name, info, source.label, G.latent_space, metrics, floor, protocol, config,
                     meta.get("images_seen", record.get("images_seen")), repo_id)
        write_bytes_durably(tmp / CARD, card.encode())
        _checkpoint.read_generator_record(tmp / _checkpoint.EXPORT_CONFIG)  # what load_generator will check
        fsync_dir(tmp)
        _replace_folder(tmp, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Exported(out_path, source.label, info.step, metrics)


def _replace_folder(tmp: Path, out: Path) -> None:
    """Rename tmp to out; an existing out (empty, or --force) is moved aside first and removed after."""
    old = out.with_name(f".old-export-{out.name}-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)


def hub_token() -> str:
    """The Hugging Face token huggingface_hub would use (HF_TOKEN, or the one `hf auth login` saved);
    ExportError saying how to set one when there is none, or that huggingface_hub is in offline mode
    (HF_HUB_OFFLINE), where it would refuse the upload after the folder was written."""
    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ExportError("--push-to-hub: huggingface_hub is in offline mode (HF_HUB_OFFLINE is set); unset it to "
                          "upload (nothing was written or uploaded)")
    token = get_token()
    if not token:
        raise ExportError("--push-to-hub: no Hugging Face token is configured; run `hf auth login` or set HF_TOKEN "
                          "(nothing was written or uploaded)")
    return token


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Upload an exported folder as one commit to the Hub model repo `repo_id` (created if missing) with
    huggingface_hub's HfApi (create_repo + upload_folder); returns the commit's URL. ExportError in one line
    when there is no token, no network, or the Hub refuses."""
    from huggingface_hub import HfApi

    token = token or hub_token()
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True, private=private)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message="Upload a gan_dist generator")
    except Exception as error:  # requests' connection errors, HfHubHTTPError, OfflineModeIsEnabled, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ExportError(f"--push-to-hub {repo_id}: the upload failed ({type(error).__name__}: {message}); "
                          f"the folder {folder} is complete: retry when the Hub is reachable") from None
    return str(getattr(commit, "commit_url", None) or getattr(commit, "url", None) or commit)
