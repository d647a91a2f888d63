"""Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks with
Limited Data"): the 'bgc' pipeline of NVlabs/stylegan2-ada-pytorch (training/augment.py) and its p
controller (training/training_loop.py), in plain PyTorch, with randomness from a `Draws` object.

Pipeline (each op applied to a sample with probability multiplier * p, independently per op and sample):

    blit   xflip       mirror left-right                      (x -> -x about the image centre)
           rotate90    k * 90 degrees, k uniform in 0..3      (k = 1 is torch.rot90(x, 1, dims=(2, 3)))
           xint        integer translation, uniform in +-xint_max of the size, rounded to pixels
    geom   scale       isotropic, 2^N(0, scale_std)
           rotate      uniform angle in +-rotate_max * pi, before and after aniso, each with probability
                       1 - sqrt(1 - p) so that P(either) = p
           aniso       2^N(0, aniso_std) along x, its inverse along y
           xfrac       translation N(0, xfrac_std) of the size
    color  brightness  + N(0, brightness_std)
           contrast    * 2^N(0, contrast_std)
           lumaflip    Householder reflection of the luma axis (1, 1, 1) / sqrt 3, with probability 1/2
           hue         rotation about the luma axis, uniform in +-hue_max * pi
           saturation  scale the distance to the luma axis by 2^N(0, saturation_std)

The geometric ops compose into one 3x3 matrix per sample (output pixel -> input pixel, coordinates centred
on the image, in pixels, x right, y down, in the reference's order), applied once; the colour ops into
one 4x4 matrix per sample (homogeneous RGB), applied once. Images are expected in [-1, 1] (centred: the
reference's contrast, luma flip and hue act about 0).

Where this differs from the reference, and why:
- Random numbers come from `Draws` (gan_dist/augment/draws.py): 21 uniforms and 7 normals per sample at
  every call, drawn for all twelve ops whatever p and the pipeline (the stream stays aligned across ranks
  and resumes); integers are floor(u * n). Column layouts: UNIFORM_COLUMNS, NORMAL_COLUMNS.
- Resampling: bilinear at the image's own resolution, reflecting about the edge pixels' centres (numpy's
  'reflect', the reference's padding mode) without limit, by one gather of the four neighbours of every
  output pixel. The reference pads with reflection, upsamples 2x with a 12-tap sym6 wavelet low-pass filter
  (upfirdn2d), samples bilinearly, filters and downsamples. Bilinear at 1x blurs under fractional offsets
  (up to a 2-tap box at half a pixel) and aliases when zooming out, where the reference is close to
  band-limited: a mild augmentation of its own that D sees on reals and fakes alike (the paper's
  non-leaking argument needs p < 1, which holds; in practice watch for leaks at high p, as the paper does
  for geometric ops). Beyond its pad (up to one image size) the reference samples zeros; here the
  reflection continues.
  A gather, not F.grid_sample, because: (1) the sample positions are computed in pixel units, so blits
  (flips, 90-degree turns, integer shifts) and p = 0 are exact copies, bit for bit (grid_sample's
  normalised coordinates round); (2) gather's backward (scatter-add) is itself differentiable, so R1 and
  WGAN-GP's double backward work on any torch version (stylegan2-ada ships grid_sample_gradfix for this;
  torch 2.14's grid_sample passes gradgradcheck too); (3) no matmul on images or matrices (TF32, when
  enabled, would round colours and sample positions): all products here are elementwise float32.
- The blits and the 90-degree turn are built from exact 0 / +-1 entries (the reference computes
  cos(k pi / 2) in float32: -4e-8, not 0), so they are exact permutations of pixels.
- Each op's matrix is selected per sample with torch.where(gate, M, I), so a sample left alone gets
  exactly the identity (the reference gates the parameters; the same distribution).
- One channel: brightness, contrast and luma flip apply as the reference's projection onto the gray axis
  gives them (x -> c (x + b), then -x for a luma flip); hue and saturation are identities (as in the
  reference, which skips them for one channel); the scale and offset are computed directly rather than
  by averaging the rows of the 4x4 matrix (the same value, exact for p = 0). Colour ops refuse other
  channel counts than 1 and 3 (as the reference); geometric ops take any.
- The controller clamps p to [0, 1] (the reference only clamps at 0: with probability multipliers <= 1,
  p > 1 changes nothing but the time it takes to come back down). r_t is 0 and p unchanged when no logit
  was accumulated (the reference would divide by zero).
- The imgfilter, noise and cutout ops of the reference (pipelines 'bgcf', 'bgcfn', 'bgcfnc') are not
  implemented.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from gan_dist.augment.draws import Draws, uniform_integers
from gan_dist.config import AugmentConfig
from gan_dist.registry.augmentations import augmentation

GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
OPS = GEOMETRIC_OPS + COLOR_OPS

# The reference's augpipe presets (train.py, augpipe_specs) that this module implements: op -> multiplier.
PIPELINES: dict[str, dict[str, float]] = {
    "blit": {"xflip": 1, "rotate90": 1, "xint": 1},
    "geom": {"scale": 1, "rotate": 1, "aniso": 1, "xfrac": 1},
    "color": {"brightness": 1, "contrast": 1, "lumaflip": 1, "hue": 1, "saturation": 1},
    "bg": {op: 1 for op in GEOMETRIC_OPS},
    "bgc": {op: 1 for op in OPS},
}

# Per-sample draws of one call, by column. "<op>_gate" < multiplier * p applies the op.
UNIFORM_COLUMNS = (
    "xflip", "xflip_gate", "rotate90", "rotate90_gate", "xint_x", "xint_y", "xint_gate",
    "scale_gate", "rotate_pre", "rotate_pre_gate", "aniso_gate", "rotate_post", "rotate_post_gate", "xfrac_gate",
    "brightness_gate", "contrast_gate", "lumaflip", "lumaflip_gate", "hue", "hue_gate", "saturation_gate",
)
NORMAL_COLUMNS = ("scale", "aniso", "xfrac_x", "xfrac_y", "brightness", "contrast", "saturation")
_U = {name: i for i, name in enumerate(UNIFORM_COLUMNS)}
_N = {name: i for i, name in enumerate(NORMAL_COLUMNS)}


def _matrix(rows: Sequence[Sequence[Tensor | float]], like: Tensor) -> Tensor:
    """Batched matrix (B, R, K) from entries that are (B,) tensors or numbers."""
    entries = [e if isinstance(e, Tensor) else torch.full_like(like, e) for row in rows for e in row]
    return torch.stack(entries, dim=-1).view(like.shape[0], len(rows), len(rows[0]))


def _compose(a: Tensor, b: Tensor) -> Tensor:
    """a @ b for (B, n, n) matrices, elementwise in full precision (never TF32)."""
    return (a[:, :, :, None] * b[:, None, :, :]).sum(dim=2)


def _gated(gate: Tensor, matrix: Tensor) -> Tensor:
    """matrix where gate (B,) is true, else exactly the identity."""
    eye = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype).expand_as(matrix)
    return torch.where(gate[:, None, None], matrix, eye)


def _rotate2d(theta: Tensor) -> Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta)


def _fold(position: Tensor, size: int) -> Tensor:
    """Positions (in pixel indices) reflected into [0, size - 1] about the edge pixels' centres, repeating.

    Folding the continuous position and then interpolating equals interpolating in the image padded by
    reflection (numpy 'reflect': -1 -> 1, size -> size - 2, the reference's padding), because that padded
    image is symmetric about every edge pixel's centre. Integer positions stay exact.
    """
    period = 2 * (size - 1)
    folded = torch.remainder(position, period)
    return torch.where(folded > size - 1, period - folded, folded)


def resample(images: Tensor, transform: Tensor) -> Tensor:
    """out[b, :, i, j] = images[b] bilinearly sampled at transform[b] @ (j - (W-1)/2, i - (H-1)/2, 1),
    in pixels from the image centre, reflected at the borders. transform (B, 3, 3) float32.

    Integer sample positions copy pixels exactly (weights exactly 1, 0, 0, 0). Differentiable twice w.r.t.
    the images (a gather, whose backward is a scatter-add); the transform gets no gradient (it depends
    only on random draws).
    """
    batch, channels, height, width = images.shape
    device = images.device
    xs = torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2  # (W,)
    ys = torch.arange(height, device=device, dtype=torch.float32) - (height - 1) / 2  # (H,)
    t = transform[:, :2, :, None, None]  # (B, 2, 3, 1, 1)
    # Source positions in pixel indices (B, H, W): rows of the transform times (x, y, 1), then re-centred.
    col = _fold(t[:, 0, 0] * xs + t[:, 0, 1] * ys[:, None] + t[:, 0, 2] + (width - 1) / 2, width)
    row = _fold(t[:, 1, 0] * xs + t[:, 1, 1] * ys[:, None] + t[:, 1, 2] + (height - 1) / 2, height)
    col0, row0 = torch.floor(col), torch.floor(row)
    fc, fr = col - col0, row - row0  # weights of the next column and row (0 on the last one)
    col1, row1 = (col0 + 1).clamp(max=width - 1), ((row0 + 1).clamp(max=height - 1)) * width
    row0 = row0 * width
    # The four neighbours (B, 4, H, W): flat indices and bilinear weights (exactly 1, 0, 0, 0 at a pixel).
    index = torch.stack([row0 + col0, row0 + col1, row1 + col0, row1 + col1], dim=1).long()
    weight = torch.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], dim=1).to(images.dtype)
    pixels = height * width
    index = index.view(batch, 1, 4 * pixels).expand(batch, channels, 4 * pixels)
    corners = images.reshape(batch, channels, pixels).gather(2, index).view(batch, channels, 4, pixels)
    return (corners * weight.view(batch, 1, 4, pixels)).sum(dim=2).view(batch, channels, height, width)


class AdaptiveAugment(nn.Module):
    """ADA: images (B, C, H, W) in [-1, 1], draws -> augmented images; p adapted from D's real logits.

    `pipeline`: a name from PIPELINES ('bgc', the paper's default) or a mapping op -> probability
    multiplier (ops from OPS; missing ones are 0). The std / max parameters are the reference's defaults.

    p is a 0-dim float32 buffer on the module's device (`.to(device)` moves it). Adaptive mode (`target`
    a number): the caller feeds D's logits on real images to `accumulate` at every D step and calls
    `adjust` every `interval` D steps; fixed mode (`target=None`): p stays at its initial value, and
    `adjust` still reports r_t. Nothing here reads a device value on the host.
    """

    def __init__(self, pipeline: str | Mapping[str, float] = "bgc", *, p: float = 0.0,
                 target: float | None = 0.6, interval: int = 4, speed_kimg: float = 500.0,
                 xint_max: float = 0.125, scale_std: float = 0.2, rotate_max: float = 1.0, aniso_std: float = 0.2,
                 xfrac_std: float = 0.125, brightness_std: float = 0.2, contrast_std: float = 0.5,
                 hue_max: float = 1.0, saturation_std: float = 1.0) -> None:
        super().__init__()
        if isinstance(pipeline, str):
            if pipeline not in PIPELINES:
                raise ValueError(f"key 'augment.pipeline': unknown ADA pipeline {pipeline!r}; "
                                 f"choose one of {', '.join(PIPELINES)}")
            multipliers = PIPELINES[pipeline]
        else:
            multipliers = dict(pipeline)
            unknown = sorted(set(multipliers) - set(OPS))
            if unknown:
                raise ValueError(f"key 'augment.pipeline': unknown ADA ops {unknown}; choose from {', '.join(OPS)}")
        if any(not math.isfinite(m) or m < 0 for m in multipliers.values()):
            raise ValueError(f"key 'augment.pipeline': probability multipliers must be >= 0, got {multipliers}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"key 'augment.p': the initial augmentation probability must be in [0, 1], got {p}")
        if target is not None and not -1.0 <= target <= 1.0:
            raise ValueError(f"key 'augment.target': r_t = E[sign(D(real))] is in [-1, 1], got {target}")
        if interval < 1:
            raise ValueError(f"key 'augment.interval': must be >= 1 D step, got {interval}")
        if not speed_kimg > 0:
            raise ValueError(f"key 'augment.speed_kimg': must be > 0 (thousands of images for p to move by 1), "
                             f"got {speed_kimg}")
        self.pipeline = pipeline if isinstance(pipeline, str) else "custom"
        self.multipliers = {op: float(multipliers.get(op, 0.0)) for op in OPS}
        self.target, self.interval, self.speed_kimg = target, int(interval), float(speed_kimg)
        self.xint_max, self.scale_std, self.rotate_max = xint_max, scale_std, rotate_max
        self.aniso_std, self.xfrac_std = aniso_std, xfrac_std
        self.brightness_std, self.contrast_std = brightness_std, contrast_std
        self.hue_max, self.saturation_std = hue_max, saturation_std
        self.geometric = any(self.multipliers[op] > 0 for op in GEOMETRIC_OPS)
        self.color = any(self.multipliers[op] > 0 for op in COLOR_OPS)
        # Checkpointed through state_tensors (safetensors), not the state_dict: non-persistent buffers.
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)
        self.register_buffer("sign_sum", torch.zeros(()), persistent=False)  # sum of sign(D(real)) this window
        self.register_buffer("count", torch.zeros(()), persistent=False)  # number of logits this window

    @property
    def adaptive(self) -> bool:
        return self.target is not None

    # ---------------------------------------------------------------------------------------------------
    # The augmentation.

    def _gate(self, u: Tensor, op: str) -> Tensor:
        """(B,) bool: apply `op` to these samples (u < multiplier * p)."""
        return u[:, _U[f"{op}_gate"]] < self.multipliers[op] * self.p

    def geometric_transform(self, u: Tensor, n: Tensor, height: int, width: int) -> Tensor:
        """(B, 3, 3): output pixel -> input pixel, centred coordinates, the reference's order of ops."""
        like = u[:, 0]
        m = self.multipliers
        transform = torch.eye(3, device=u.device).expand(u.shape[0], 3, 3)
        if m["xflip"] > 0:
            flip = 1 - 2 * uniform_integers(u[:, _U["xflip"]], 2)  # +-1
            transform = _compose(transform, _gated(self._gate(u, "xflip"), _matrix(
                [[flip, 0, 0], [0, 1, 0], [0, 0, 1]], like)))
        if m["rotate90"] > 0:
            k = uniform_integers(u[:, _U["rotate90"]], 4)  # rotate the sampling grid by k * 90 degrees
            cos = torch.where(k == 0, 1.0, torch.where(k == 2, -1.0, 0.0))  # exact: no cos(pi / 2) = 6e-17
            sin = torch.where(k == 1, 1.0, torch.where(k == 3, -1.0, 0.0))
            transform = _compose(transform, _gated(self._gate(u, "rotate90"), _matrix(
                [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], like)))
        if m["xint"] > 0:
            tx = torch.round((u[:, _U["xint_x"]] * 2 - 1) * self.xint_max * width)  # pixels
            ty = torch.round((u[:, _U["xint_y"]] * 2 - 1) * self.xint_max * height)
            transform = _compose(transform, _gated(self._gate(u, "xint"), _matrix(
                [[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], like)))  # inverse: content moves by +t
        if m["scale"] > 0:
            s = torch.exp2(n[:, _N["scale"]] * self.scale_std)
            transform = _compose(transform, _gated(self._gate(u, "scale"), _matrix(
                [[1 / s, 0, 0], [0, 1 / s, 0], [0, 0, 1]], like)))
        # Rotation before and after the anisotropic scaling, each with probability p_rot: P(either) = p.
        p_rot = 1 - torch.sqrt((1 - m["rotate"] * self.p).clamp(0, 1))
        if m["rotate"] > 0:
            theta = (u[:, _U["rotate_pre"]] * 2 - 1) * math.pi * self.rotate_max
            transform = _compose(transform, _gated(u[:, _U["rotate_pre_gate"]] < p_rot, _rotate2d(theta)))
        if m["aniso"] > 0:
            s = torch.exp2(n[:, _N["aniso"]] * self.aniso_std)
            transform = _compose(transform, _gated(self._gate(u, "aniso"), _matrix(
                [[1 / s, 0, 0], [0, s, 0], [0, 0, 1]], like)))
        if m["rotate"] > 0:
            theta = (u[:, _U["rotate_post"]] * 2 - 1) * math.pi * self.rotate_max
            transform = _compose(transform, _gated(u[:, _U["rotate_post_gate"]] < p_rot, _rotate2d(theta)))
        if m["xfrac"] > 0:
            tx = n[:, _N["xfrac_x"]] * self.xfrac_std * width
            ty = n[:, _N["xfrac_y"]] * self.xfrac_std * height
            transform = _compose(transform, _gated(self._gate(u, "xfrac"), _matrix(
                [[1, 0, -tx], [0, 1, -ty], [0, 0, 1]], like)))
        return transform

    def color_transform(self, u: Tensor, n: Tensor) -> Tensor:
        """(B, 4, 4): homogeneous RGB in -> out, the reference's order (each op multiplies on the left)."""
        like = u[:, 0]
        m = self.multipliers
        color = torch.eye(4, device=u.device).expand(u.shape[0], 4, 4)
        luma = torch.zeros(4, 4, device=u.device)
        luma[:3, :3] = 1 / 3  # v v^T, v = (1, 1, 1, 0) / sqrt 3: projection on the luma axis
        luma = luma.expand(u.shape[0], 4, 4)
        if m["brightness"] > 0:
            b = n[:, _N["brightness"]] * self.brightness_std
            color = _compose(_gated(self._gate(u, "brightness"), _matrix(
                [[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]], like)), color)
        if m["contrast"] > 0:
            c = torch.exp2(n[:, _N["contrast"]] * self.contrast_std)
            color = _compose(_gated(self._gate(u, "contrast"), _matrix(
                [[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]], like)), color)
        if m["lumaflip"] > 0:
            flip = uniform_integers(u[:, _U["lumaflip"]], 2)  # 0 or 1
            householder = torch.eye(4, device=u.device) - 2 * luma * flip[:, None, None]
            color = _compose(_gated(self._gate(u, "lumaflip"), householder), color)
        if m["hue"] > 0:
            theta = (u[:, _U["hue"]] * 2 - 1) * math.pi * self.hue_max
            color = _compose(_gated(self._gate(u, "hue"), _rotate_about_luma(theta)), color)
        if m["saturation"] > 0:
            s = torch.exp2(n[:, _N["saturation"]] * self.saturation_std)
            eye = torch.eye(4, device=u.device)
            color = _compose(_gated(self._gate(u, "saturation"), luma + (eye - luma) * s[:, None, None]), color)
        return color

    def gray_transform(self, u: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """One channel: (scale, offset) (B,) with out = x * scale + offset: brightness, contrast, luma flip
        on the gray axis, which is what the 4x4 matrix does to a gray pixel; hue and saturation leave the
        gray axis alone."""
        m = self.multipliers
        scale, offset = torch.ones_like(u[:, 0]), torch.zeros_like(u[:, 0])
        if m["brightness"] > 0:
            offset = torch.where(self._gate(u, "brightness"), n[:, _N["brightness"]] * self.brightness_std, offset)
        if m["contrast"] > 0:
            c = torch.where(self._gate(u, "contrast"), torch.exp2(n[:, _N["contrast"]] * self.contrast_std), 1.0)
            scale, offset = scale * c, offset * c
        if m["lumaflip"] > 0:
            flip = 1 - 2 * uniform_integers(u[:, _U["lumaflip"]], 2)  # +-1
            sign = torch.where(self._gate(u, "lumaflip"), flip, 1.0)
            scale, offset = scale * sign, offset * sign
        return scale, offset

    def forward(self, images: Tensor, draws: Draws) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"AdaptiveAugment takes images (B, C, H, W), got shape {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        if self.color and channels not in (1, 3):
            raise ValueError(f"ADA's colour ops need 1 or 3 channels, got {channels} "
                             "(use a geometric-only pipeline: 'blit', 'geom' or 'bg')")
        if self.geometric and min(height, width) < 2:
            raise ValueError(f"ADA's geometric ops need images of at least 2x2 pixels, got {height}x{width}")
        u = draws.uniform(batch, len(UNIFORM_COLUMNS))  # (B, 21), drawn whatever p and the pipeline
        n = draws.normal(batch, len(NORMAL_COLUMNS))  # (B, 7)
        x = images
        if self.geometric:
            x = resample(x, self.geometric_transform(u, n, height, width))
        if self.color and channels == 3:
            color = self.color_transform(u, n).to(x.dtype)  # (B, 4, 4)
            flat = x.reshape(batch, 3, height * width)
            # out_i = sum_j C_ij x_j + C_i3, elementwise (exact for C = I; no TF32)
            flat = (color[:, :3, 0:1] * flat[:, 0:1] + color[:, :3, 1:2] * flat[:, 1:2]
                    + color[:, :3, 2:3] * flat[:, 2:3] + color[:, :3, 3:4])
            x = flat.view(batch, 3, height, width)
        elif self.color:
            scale, offset = self.gray_transform(u, n)
            x = x * scale.to(x.dtype).view(-1, 1, 1, 1) + offset.to(x.dtype).view(-1, 1, 1, 1)
        return x

    # ---------------------------------------------------------------------------------------------------
    # The p controller (training_loop.py: ada_target, ada_interval, ada_kimg).

    @torch.no_grad()
    def accumulate(self, real_logits: Tensor) -> None:
        """Add sum(sign(D(real))) and the number of logits of one D step to this window (on the device)."""
        self.sign_sum.add_(real_logits.detach().float().sign().sum())
        self.count.add_(real_logits.numel())

    @torch.no_grad()
    def accumulate_mean(self, sign_mean: Tensor, count: int) -> None:
        """As `accumulate`, from the mean sign of `count` real logits (the objective's d_real_sign statistic)."""
        self.sign_sum.add_(sign_mean.detach().float() * count)
        self.count.add_(count)

    @torch.no_grad()
    def adjust(self, reduce_sum: Callable[[Tensor], Tensor], batch_size_global: int) -> dict[str, Tensor]:
        """Close the window of `interval` D steps: r_t = E[sign(D(real))] over all ranks, then (adaptive)
        p <- clamp(p + sign(r_t - target) * batch_size_global * interval / (speed_kimg * 1000), 0, 1).

        `reduce_sum` sums a tensor over ranks and returns it (identity for one process); every rank then
        computes the same p. `batch_size_global`: real images per D step over all ranks. Returns
        {"augment_p", "augment_r_t"} as 0-dim tensors (after the update); r_t is 0 and p unchanged when the
        window saw no logit. Resets the window.
        """
        totals = reduce_sum(torch.stack([self.sign_sum, self.count]))  # (2,): one all-reduce
        seen = totals[1] > 0
        r_t = totals[0] / totals[1].clamp(min=1)
        if self.adaptive:
            step = batch_size_global * self.interval / (self.speed_kimg * 1000)
            move = torch.where(seen, torch.sign(r_t - self.target) * step, 0.0)
            self.p.copy_((self.p + move).clamp(0, 1))
        self.sign_sum.zero_()
        self.count.zero_()
        return {"augment_p": self.p.clone(), "augment_r_t": r_t}

    def state_tensors(self) -> dict[str, Tensor]:
        """p and the open window's accumulators, as plain 0-dim float32 tensors (for safetensors)."""
        return {"p": self.p.detach().clone(), "sign_sum": self.sign_sum.detach().clone(),
                "count": self.count.detach().clone()}

    def load_state_tensors(self, tensors: Mapping[str, Tensor]) -> None:
        """Restore what state_tensors saved (checked first, then applied: a bad input changes nothing).

        In fixed mode (target None) p stays at the value this module was built with (it is a setting, as
        the learning rate is on resume); the accumulators are restored either way.
        """
        expected = {"p", "sign_sum", "count"}
        if set(tensors) != expected:
            raise ValueError(f"ADA state needs exactly {sorted(expected)}, got {sorted(tensors)}")
        for name, value in tensors.items():
            if value.shape != () or not value.is_floating_point() or not bool(torch.isfinite(value)):
                raise ValueError(f"ADA state {name!r} must be a finite 0-dim float tensor, got {value!r}")
        if not 0.0 <= float(tensors["p"]) <= 1.0:
            raise ValueError(f"ADA state 'p' must be in [0, 1], got {float(tensors['p'])}")
        if self.adaptive:
            self.p.copy_(tensors["p"])
        self.sign_sum.copy_(tensors["sign_sum"])
        self.count.copy_(tensors["count"])

    def extra_repr(self) -> str:
        mode = f"target={self.target}, interval={self.interval}, speed_kimg={self.speed_kimg}" if self.adaptive \
            else "fixed p"
        return f"pipeline={self.pipeline!r}, {mode}"


def _rotate_about_luma(theta: Tensor) -> Tensor:
    """(B, 4, 4) rotation by theta about v = (1, 1, 1) / sqrt 3 (Rodrigues), homogeneous."""
    v = 1 / math.sqrt(3)
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    a, b = v * v * cc + c, v * v * cc  # diagonal; off-diagonal symmetric part
    return _matrix([[a, b - v * s, b + v * s, 0],
                    [b + v * s, a, b - v * s, 0],
                    [b - v * s, b + v * s, a, 0],
                    [0, 0, 0, 1]], theta)


def build(augment: AugmentConfig) -> AdaptiveAugment:
    """augment.name=ada (p adapts toward augment.target) or ada_fixed (p stays augment.p)."""
    adaptive = augmentation(augment.name).adaptive
    return AdaptiveAugment(augment.pipeline, p=augment.p, target=augment.target if adaptive else None,
                           interval=augment.interval, speed_kimg=augment.speed_kimg)
