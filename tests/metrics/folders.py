"""Tiny image folders for the metrics tests (data.dataset=folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PALETTE = ((220, 40, 40), (40, 40, 220), (40, 200, 40), (220, 220, 40), (200, 40, 200), (40, 200, 200))


def write_image_folder(root: Path, classes: tuple[str, ...], per_class: int, size: tuple[int, int],
                       seed: int = 0) -> Path:
    """PNG files under root: one subfolder per class (labeled) or, with classes=(), a flat folder
    (unlabeled). Class i is noise around a colour of its own (up to 6 classes), so a classifier can tell
    the classes apart."""
    rng = np.random.default_rng(seed)
    width, height = size
    folders = [(root / name, i) for i, name in enumerate(classes)] or [(root, 0)]
    for folder, index in folders:
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array(PALETTE[index], dtype=np.float64)
        for k in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, size=(height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{k:03d}.png")
    return root
