"""gan_dist: distributed GAN training on MNIST with Accelerate, WebDataset and wandb.

`from gan_dist import load_generator` is gan_dist.api.load_generator, imported on first use: `import gan_dist`
stays light (no torch), so the CLI's --help and config errors answer at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_generator"]

if TYPE_CHECKING:
    from gan_dist.api import load_generator


def __getattr__(name: str) -> Any:
    if name == "load_generator":
        from gan_dist.api import load_generator

        return load_generator
    raise AttributeError(f"module 'gan_dist' has no attribute {name!r}")
