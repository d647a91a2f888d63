"""gan_dist: distributed GAN training on MNIST with Accelerate, WebDataset and wandb."""

__version__ = "0.1.0"
