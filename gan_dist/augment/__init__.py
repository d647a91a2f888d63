"""Differentiable augmentations for D's inputs, the same call for real and fake images in both phases.

- diffaugment.py: DiffAugment (Zhao et al. 2020), policy 'color,translation,cutout'.
- ada.py: AdaptiveAugment (Karras et al. 2020), stylegan2-ada's 'bgc' pipeline and its p controller.
- draws.py: the randomness interface (Draws, GeneratorDraws): per-sample draws for the global batch from
  one generator, so that resume is exact and the augmentation is independent of the process count.

Every augmentation is `forward(images (B, C, H, W), draws) -> images`, differentiable twice w.r.t. the
images, with no host sync; `state_tensors()` / `load_state_tensors()` give its checkpoint state as plain
tensors.
"""
