"""The one place G meets noise: sample grids, evaluation and `gan-dist sample` all draw through here.

Noise is drawn on the CPU from a generator seeded by `seed`, so sample i is the same on any device, for
any batch size and any number of processes (the caller shards rows, never re-draws them). A conditional
G (`G.num_classes > 0`) gets labels too: balanced (i % num_classes), one class, or one row per class for
grids (`grid_inputs`). `sample_images` is the only call of G on noise: eval mode (BatchNorm on its running
statistics, so a sample does not depend on its batch), no autograd, G's mode restored afterwards.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def latent_noise(num_images: int, latent_dim: int, seed: int) -> Tensor:
    """z (num_images, latent_dim) float32 on the CPU, a function of (seed, num_images, latent_dim)."""
    return torch.randn(num_images, latent_dim, generator=torch.Generator().manual_seed(seed))


def class_labels(num_images: int, num_classes: int, class_index: int | None = None) -> Tensor | None:
    """Labels (num_images,) int64 for a conditional G, None for an unconditional one (num_classes == 0).

    class_index=None gives balanced labels i % num_classes (every class equally often, in order);
    otherwise every label is class_index.
    """
    if num_classes <= 0:
        if class_index is not None:
            raise ValueError("a class was requested, but the generator is unconditional (model.conditioning=none)")
        return None
    if class_index is not None:
        if not 0 <= class_index < num_classes:
            raise ValueError(f"class {class_index} is out of range: the generator knows classes 0..{num_classes - 1}")
        return torch.full((num_images,), class_index, dtype=torch.int64)
    return torch.arange(num_images, dtype=torch.int64) % num_classes


def num_classes_of(G: nn.Module) -> int:
    """Classes a generator is conditioned on (0 for an unconditional one)."""
    return int(getattr(G, "num_classes", 0) or 0)


@torch.no_grad()
def sample_images(G: nn.Module, z: Tensor, labels: Tensor | None = None, device: str | torch.device | None = None,
                  batch_size: int | None = None) -> Tensor:
    """G(z, labels) as float32 images (N, C, H, W) in [-1, 1], on `device` (None: where z is).

    G runs in eval mode without autograd and gets its train/eval mode back afterwards, so a grid or an
    evaluation in the middle of training changes nothing. `batch_size` rows per call of G (None: all at
    once); z (N, latent_dim) and labels (N,) int64 (None for an unconditional G) come from the caller.
    """
    step = batch_size or max(len(z), 1)
    was_training = G.training
    G.eval()
    try:
        images = []
        for start in range(0, len(z), step):
            z_batch = z[start:start + step] if device is None else z[start:start + step].to(device)
            if labels is None:
                images.append(G(z_batch).float())
                continue
            y_batch = labels[start:start + step] if device is None else labels[start:start + step].to(device)
            images.append(G(z_batch, y_batch).float())
    finally:
        G.train(was_training)
    return images[0] if len(images) == 1 else torch.cat(images)


def generate(G: nn.Module, num_images: int, seed: int, batch_size: int = 500,
             device: str | torch.device = "cpu", labels: Tensor | None = None) -> Tensor:
    """num_images images (N, C, H, W) float32 on the CPU, in [-1, 1], from the noise of `seed`. A conditional
    G without `labels` gets balanced labels."""
    z = latent_noise(num_images, G.latent_dim, seed)  # (N, latent_dim)
    if labels is None:
        labels = class_labels(num_images, num_classes_of(G))
    return sample_images(G, z, labels, device=device, batch_size=batch_size).cpu()


def grid_inputs(G: nn.Module, num_images: int, seed: int) -> tuple[Tensor, Tensor | None, int]:
    """(z, labels, columns) of the fixed-noise sample grid.

    Unconditional: a square grid of num_images (a square number). Conditional: one row per class, as many
    columns as a square grid of num_images would have (at least 1), the same noise in every row, so a
    column shows one z across classes.
    """
    num_classes = num_classes_of(G)
    columns = max(1, round(num_images ** 0.5))
    if num_classes == 0:
        return latent_noise(num_images, G.latent_dim, seed), None, columns
    z_row = latent_noise(columns, G.latent_dim, seed)  # (columns, latent_dim)
    z = z_row.repeat(num_classes, 1)  # (num_classes * columns, latent_dim): row c is class c
    labels = torch.arange(num_classes, dtype=torch.int64).repeat_interleave(columns)
    return z, labels, columns


def sample_command(run_dir: str | None, checkpoint: str | None, num_images: int, out_png: str,
                   out_npz: str | None, seed: int, use_ema: bool, class_index: int | None = None) -> None:
    """`gan-dist sample`: a grid PNG and optionally the raw uint8 images (and their labels) in an .npz.

    A conditional G without --class gets the training grid's layout (`grid_inputs`): one row per class and
    round(sqrt(num_images)) columns, each column one z across all classes (so N = classes x columns);
    otherwise num_images samples in a square grid, all of class --class when it is given."""
    from pathlib import Path

    import numpy as np

    from gan_dist.checkpoint import load_generator
    from gan_dist.config import ConfigError
    from gan_dist.tracking import images_to_uint8, save_grid_png

    G, info = load_generator(run_dir, checkpoint, use_ema=use_ema)
    num_classes = num_classes_of(G)
    if class_index is not None and num_classes == 0:
        raise ConfigError(f"--class {class_index}: this generator is unconditional (model.conditioning="
                          f"{info.model.conditioning}); train with model.conditioning=concat|acgan|projection")
    if class_index is not None and not 0 <= class_index < num_classes:
        raise ConfigError(f"--class {class_index}: the generator knows classes 0..{num_classes - 1} "
                          f"({info.dataset})")
    columns = None
    if num_classes and class_index is None:
        # The training grid's layout: one row per class, one z per column shared by every row.
        z, labels, columns = grid_inputs(G, num_images, seed)
        num_images = len(z)
    else:
        z, labels = latent_noise(num_images, G.latent_dim, seed), class_labels(num_images, num_classes, class_index)
    images = sample_images(G, z, labels, device="cpu", batch_size=500)  # (N, C, H, W) on the CPU
    save_grid_png(images, Path(out_png), columns=columns)
    what = f"class {class_index}" if class_index is not None else ("one row per class" if columns else "")
    print(f"wrote {out_png}: {num_images} samples of {info.model.name} ({info.dataset}) at step {info.step}"
          f"{f', {what}' if what else ''}")
    if out_npz:
        payload = {"images": images_to_uint8(images)}
        if labels is not None:
            payload["labels"] = labels.numpy()
        np.savez_compressed(out_npz, **payload)
        print(f"wrote {out_npz}: images uint8 {tuple(payload['images'].shape)}"
              f"{', labels int64' if labels is not None else ''}")
