"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable transformation is applied to every image D sees, real or fake, in both
phases; G learns through it. The math is the reference's (mit-han-lab/data-efficient-gans,
DiffAugment_pytorch.py), op for op:

    color        brightness  x + (u - 0.5)
                 saturation  (x - mean_c(x)) * 2u + mean_c(x)        mean over channels, per pixel
                 contrast    (x - mean(x)) * (u + 0.5) + mean(x)     mean over channels and pixels
    translation  shift by integers in [-r H, r H] x [-r W, r W] (r = 0.125, rounded), zero padding
    cutout       zero a (H/2 x W/2) rectangle centred anywhere (its part inside the image)

Where this differs from the reference, and why:
- Random numbers come from a `Draws` object (gan_dist/augment/draws.py), one (B, n) uniform draw per call,
  not from torch's global RNG: exact resume and rank-independent augmentation. The integers the reference
  draws with torch.randint are floor(u * n) of uniforms here (the same distributions, another stream).
- Translation is a gather with a validity mask (the reference pads by one pixel, clamps indices into the
  pad and indexes with three index tensors): the same output, cheaper, twice differentiable.
- Cutout builds its mask from interval tests instead of index_put into a ones tensor: the same mask (the
  reference's clamped indices only repeat rows and columns already inside the rectangle).
- Unknown policy names raise ValueError (the reference raises KeyError from its dict).

One channel (MNIST): brightness and contrast apply; saturation is the identity (the channel mean of one
channel is the pixel itself), as in the reference. Any channel count, batch size and image size work.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gan_dist.augment.draws import Draws, uniform_integers
from gan_dist.config import AugmentConfig

# policy name -> (ops in order, uniforms per sample each op draws)
POLICIES: dict[str, tuple[tuple[str, int], ...]] = {
    "color": (("brightness", 1), ("saturation", 1), ("contrast", 1)),
    "translation": (("translation", 2),),
    "cutout": (("cutout", 2),),
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation,cutout' -> ('color', 'translation', 'cutout'); '' -> () (the identity).

    Names may repeat (the reference allows it) and are stripped of spaces; an unknown one is a ValueError.
    """
    names = tuple(name.strip() for name in policy.split(",")) if policy.strip() else ()
    for name in names:
        if name not in POLICIES:
            raise ValueError(f"key 'augment.policy': unknown DiffAugment policy {name!r} in {policy!r}; "
                             f"choose a comma-separated list of {', '.join(POLICIES)}")
    return names


def brightness(x: Tensor, u: Tensor) -> Tensor:
    """x + (u - 0.5): u (B,) -> an offset in [-0.5, 0.5) per sample."""
    return x + (u.to(x.dtype).view(-1, 1, 1, 1) - 0.5)


def saturation(x: Tensor, u: Tensor) -> Tensor:
    """Scale each pixel's distance to its channel mean by 2u in [0, 2) (the identity for one channel)."""
    x_mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    return (x - x_mean) * (u.to(x.dtype).view(-1, 1, 1, 1) * 2) + x_mean


def contrast(x: Tensor, u: Tensor) -> Tensor:
    """Scale each image's distance to its mean (over channels and pixels) by u + 0.5 in [0.5, 1.5)."""
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)  # (B, 1, 1, 1)
    return (x - x_mean) * (u.to(x.dtype).view(-1, 1, 1, 1) + 0.5) + x_mean


def translation(x: Tensor, u: Tensor, ratio: float = 0.125) -> Tensor:
    """Shift by (tx, ty) pixels, uniform integers in [-s, s] with s = int(size * ratio + 0.5), zero fill.

    u (B, 2): tx moves along H (dim 2), ty along W (dim 3), as in the reference: out[i, j] = x[i + tx, j + ty]
    where that is inside the image, else 0.
    """
    batch, channels, height, width = x.shape
    shift_x, shift_y = int(height * ratio + 0.5), int(width * ratio + 0.5)
    tx = (uniform_integers(u[:, 0], 2 * shift_x + 1) - shift_x).long()  # (B,)
    ty = (uniform_integers(u[:, 1], 2 * shift_y + 1) - shift_y).long()
    rows = torch.arange(height, device=x.device) + tx[:, None]  # (B, H) source rows
    cols = torch.arange(width, device=x.device) + ty[:, None]  # (B, W) source columns
    valid = (((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :])  # (B, H, W)
    index = rows.clamp(0, height - 1)[:, :, None] * width + cols.clamp(0, width - 1)[:, None, :]  # (B, H, W)
    moved = x.reshape(batch, channels, height * width).gather(
        2, index.view(batch, 1, height * width).expand(batch, channels, height * width))
    return torch.where(valid[:, None], moved.view(batch, channels, height, width), 0.0)


def cutout(x: Tensor, u: Tensor, ratio: float = 0.5) -> Tensor:
    """Zero a rectangle of (int(H ratio + 0.5), int(W ratio + 0.5)) pixels centred at a uniform position.

    u (B, 2): the centre's row in [0, H + 1 - size_h % 2) and column likewise, as the reference's randint;
    the rectangle covers rows [centre - size_h // 2, centre - size_h // 2 + size_h) (clipped to the image).
    """
    batch, _, height, width = x.shape
    size_h, size_w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    centre_h = uniform_integers(u[:, 0], height + (1 - size_h % 2)).long()  # (B,)
    centre_w = uniform_integers(u[:, 1], width + (1 - size_w % 2)).long()
    rows = torch.arange(height, device=x.device) - (centre_h[:, None] - size_h // 2)  # (B, H): offset into the cut
    cols = torch.arange(width, device=x.device) - (centre_w[:, None] - size_w // 2)  # (B, W)
    inside = ((rows >= 0) & (rows < size_h))[:, :, None] & ((cols >= 0) & (cols < size_w))[:, None, :]  # (B, H, W)
    mask = (~inside).to(x.dtype)
    return x * mask.unsqueeze(1)


class DiffAugment(nn.Module):
    """images (B, C, H, W), draws -> augmented images (B, C, H, W), differentiable w.r.t. the images.

    `policy`: comma-separated names from POLICIES, applied in the order given ('' is the identity). Each
    call draws `draws_per_sample` uniforms per sample in one (B, n) draw, whatever the images: the
    random stream advances by the same amount at every call. No state: `state_tensors()` is empty.
    """

    def __init__(self, policy: str = "color,translation,cutout", translation_ratio: float = 0.125,
                 cutout_ratio: float = 0.5) -> None:
        super().__init__()
        self.policy = policy
        self.names = parse_policy(policy)
        self.ops = tuple(op for name in self.names for op in POLICIES[name])  # ((op, uniforms), ...)
        self.draws_per_sample = sum(count for _, count in self.ops)
        self.translation_ratio, self.cutout_ratio = translation_ratio, cutout_ratio

    def forward(self, images: Tensor, draws: Draws) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"DiffAugment takes images (B, C, H, W), got shape {tuple(images.shape)}")
        if not self.ops:
            return images
        u = draws.uniform(images.shape[0], self.draws_per_sample)  # (B, n): columns in the order of self.ops
        x, column = images, 0
        for op, count in self.ops:
            ui = u[:, column:column + count]
            column += count
            if op == "brightness":
                x = brightness(x, ui[:, 0])
            elif op == "saturation":
                x = saturation(x, ui[:, 0])
            elif op == "contrast":
                x = contrast(x, ui[:, 0])
            elif op == "translation":
                x = translation(x, ui, self.translation_ratio)
            else:  # cutout
                x = cutout(x, ui, self.cutout_ratio)
        return x

    def state_tensors(self) -> dict[str, Tensor]:
        """Nothing to checkpoint (the randomness lives in the Draws' generator)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if tensors:
            raise ValueError(f"DiffAugment has no state, got {sorted(tensors)}")

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"


def build(augment: AugmentConfig) -> DiffAugment:
    """augment.name=diffaugment with augment.policy."""
    return DiffAugment(augment.policy)
