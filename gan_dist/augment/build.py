"""The augmentation `augment.name` selects, through its registry entry (gan_dist/registry/augmentations.py)."""

from __future__ import annotations

import importlib

from torch import nn

from gan_dist.config import AugmentConfig
from gan_dist.registry.augmentations import augmentation


def build_augment(augment: AugmentConfig) -> nn.Module | None:
    """The augmentation module (on the CPU; the caller moves it), or None for augment.name=none."""
    spec = augmentation(augment.name)
    if spec.module is None:
        return None
    return importlib.import_module(spec.module).build(augment)
