"""Samples of a trained G, for grids, evaluation and `gan-dist sample` (training draws its own noise, on
the device: gan_dist.train.step.NoiseSource), and the sample grid as a PNG.

Noise is drawn on the CPU from a generator seeded by `seed`, so sample i is the same on any device, for
any batch size and any number of processes (callers shard rows, never re-draw them). A conditional G gets
labels: balanced (i % num_classes), one class, or one row per class for grids (`grid_inputs`).
`sample_images` runs G in eval mode (BatchNorm on running statistics: a sample does not depend on its
batch), without autograd, and gives G its mode back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from gan_dist.files import atomic_write


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


MIN_CELL_PIXELS = 96  # a grid cell is upscaled (nearest neighbour) to at least this many pixels per side


def auto_pixel_scale(image_size: int) -> int:
    """The integer upscale that makes an image of image_size pixels at least MIN_CELL_PIXELS wide (28 -> 4)."""
    return max(1, -(-MIN_CELL_PIXELS // image_size))


def images_to_grid(images: torch.Tensor, columns: int | None = None, pixel_scale: int = 1) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 grid, (H', W') for C = 1 or (H', W', 3) for C = 3.

    `columns` images per row (default: a square grid); 2 px padding; then each pixel becomes a
    pixel_scale x pixel_scale block (nearest neighbour: digits stay sharp, no interpolation blur).
    """
    from torchvision.utils import make_grid  # here, not at import: torchvision costs ~3 s to import

    num_columns = columns or max(1, round(images.shape[0] ** 0.5))
    grid = make_grid(images.float().cpu(), nrow=num_columns, padding=2, normalize=True, value_range=(-1, 1))
    # (3, H, W) in [0, 1]; make_grid repeats a gray channel three times.
    pixels = (grid * 255).round().clamp(0, 255).to(torch.uint8)
    if pixel_scale > 1:
        pixels = pixels.repeat_interleave(pixel_scale, dim=1).repeat_interleave(pixel_scale, dim=2)
    if images.shape[1] == 1:
        return pixels[0].numpy()  # (H', W')
    return pixels.permute(1, 2, 0).contiguous().numpy()  # (H', W', 3)


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8, the inverse of the loader's x / 127.5 - 1: (N, H, W) for one channel
    (MNIST's layout), (N, H, W, C) otherwise."""
    pixels = ((images.float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    if pixels.shape[1] == 1:
        return pixels[:, 0].numpy()
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def save_grid_png(images: torch.Tensor, path: Path, columns: int | None = None, pixel_scale: int = 0) -> np.ndarray:
    """Write the sample grid as a PNG (atomically) and return it. pixel_scale 0 = `auto_pixel_scale`."""
    grid = images_to_grid(images, columns, pixel_scale or auto_pixel_scale(images.shape[-1]))
    image = Image.fromarray(grid, mode="L" if grid.ndim == 2 else "RGB")
    atomic_write(path, lambda stream: image.save(stream, format="PNG"))
    return grid
