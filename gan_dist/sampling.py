"""Samples of a trained G, for grids, evaluation and `gan-dist sample` (training draws its own noise, on
the device: gan_dist.train.step.NoiseSource), the sample grid as a PNG, and the pieces of seeds, truncation
and latent walks (gan_dist.api puts them together).

Noise is drawn on the CPU from a generator seeded by `seed`, so sample i is the same on any device, for
any batch size and any number of processes (callers shard rows, never re-draw them). A conditional G gets
labels: balanced (i % num_classes), one class, or one row per class for grids (`grid_inputs`).
`sample_images` runs G in eval mode (BatchNorm on running statistics: a sample does not depend on its
batch), without autograd, and gives G its mode back.

Seeds (`seed_latents`, `seed_slots`): the z of seed s is `torch.randn(1, latent_dim)` from a CPU generator
seeded with s alone (stylegan2-ada's rule, with torch's generator for numpy's RandomState), and G runs on
batches of exactly SEED_BATCH rows with seed s in row s % SEED_BATCH, so one seed gives one image whatever
else is asked with it (docs/design-notes.md, "Seeds that mean one image").
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from gan_dist.config import ConfigError
from gan_dist.files import atomic_write

SEED_BATCH = 32  # rows of every call of G in seed mode: seed s always sits in row s % SEED_BATCH
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes any int64; negative seeds are refused
MAX_SEEDS = 1_000_000  # seeds one request may name ("0-999999999" would otherwise allocate for a billion)
Z_TRUNCATION_BOUND = 2.0  # BigGAN's truncated normal for latent_space "z": |z| <= 2, then scaled by psi

# What one request may hold in memory. Every bound is checked from the request's numbers before anything is
# drawn, generated or listed, and refused with a ConfigError naming the flag (or argument) to change.
MAX_IMAGE_VALUES = 2**27  # image values (N x C x H x W) one request holds at once: 512 MiB as float32
MAX_WALK_FRAMES = 10_000  # frames of one latent walk (5.5 minutes at 30 fps)
MAX_GRID_PIXELS = 2**24  # pixels of one PNG grid or of one upscaled frame (4096 x 4096)
MAX_GIF_BYTES = 2**29  # uint8 bytes of an animated GIF's frames: Pillow holds every frame until it writes
MAX_PIXEL_SCALE = 32  # --pixel-scale
FPS_RANGE = (0.01, 1000.0)  # --fps


def latent_noise(num_images: int, latent_dim: int, seed: int) -> Tensor:
    """z (num_images, latent_dim) float32 on the CPU, a function of (seed, num_images, latent_dim)."""
    return torch.randn(num_images, latent_dim, generator=torch.Generator().manual_seed(seed))


def parse_seeds(text: str, what: str = "--seeds") -> list[int]:
    """"0-63", "3,17,42", "0-9,20" -> seeds in the order written (ranges inclusive, duplicates kept).
    ConfigError naming `what` for anything else: empty parts, negative numbers, a range that runs backwards."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if match is None:
            raise ConfigError(f"{what} {text!r}: {part.strip()!r} is not a seed or a range; write e.g. "
                              "'0-63', '3,17,42' or '0-9,20' (non-negative integers)")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise ConfigError(f"{what} {text!r}: the range {first}-{last} runs backwards; write {last}-{first}")
        if last > MAX_SEED:
            raise ConfigError(f"{what} {text!r}: seeds go up to {MAX_SEED}")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ConfigError(f"{what} {text!r}: more than {MAX_SEEDS:,} seeds in one request")
        seeds.extend(range(first, last + 1))
    return seeds


def _shape_text(image_shape: Sequence[int]) -> str:
    return "x".join(str(size) for size in image_shape)


def max_images(image_shape: Sequence[int]) -> int:
    """How many images of this shape one request may hold (MAX_IMAGE_VALUES float32 values), at least 1."""
    return max(1, MAX_IMAGE_VALUES // int(np.prod(image_shape)))


def check_image_count(count: int, image_shape: Sequence[int], what: str) -> int:
    """count, when `count` images of `image_shape` (C, H, W) fit in MAX_IMAGE_VALUES; else a ConfigError
    naming `what` (the flag or argument that asked for them), said before anything is allocated."""
    limit = max_images(image_shape)
    if count > limit:
        gib = count * int(np.prod(image_shape)) * 4 / 2**30
        raise ConfigError(f"{what}: {count:,} images of {_shape_text(image_shape)} would hold {gib:,.1f} GiB at once; "
                          f"at most {limit:,} of this generator's images in one request: ask in several")
    return count


def walk_length(num_keyframes: int, frames: int, loop: bool) -> int:
    """len(walk_times(num_keyframes, frames, loop)), computed without listing them."""
    if num_keyframes <= 1:
        return 1
    return num_keyframes * frames if loop else (num_keyframes - 1) * frames + 1


def check_walk(num_keyframes: int, frames: int, loop: bool, image_shape: Sequence[int],
               what: str = "frames") -> int:
    """The number of frames of a walk, when `frames` (per transition; `what` names it) is a positive int and
    the walk fits in MAX_WALK_FRAMES and MAX_IMAGE_VALUES; else a ConfigError naming `what`."""
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ConfigError(f"{what} {frames!r}: give a positive number of frames per transition")
    if frames > MAX_WALK_FRAMES:
        raise ConfigError(f"{what} {frames:,}: at most {MAX_WALK_FRAMES:,} frames in a walk")
    total = walk_length(num_keyframes, int(frames), loop)
    if total > MAX_WALK_FRAMES:
        raise ConfigError(f"{what} {frames:,}: {num_keyframes:,} keyframes would make a walk of {total:,} frames, "
                          f"over {MAX_WALK_FRAMES:,}; give fewer frames per transition or fewer keyframes")
    check_image_count(total, image_shape, what)
    return total


def check_pixel_scale(pixel_scale: int, what: str = "--pixel-scale") -> int:
    """pixel_scale when it is 0 (automatic) or in [1, MAX_PIXEL_SCALE]; else a ConfigError naming `what`."""
    if isinstance(pixel_scale, bool) or not isinstance(pixel_scale, (int, np.integer)) \
            or not 0 <= pixel_scale <= MAX_PIXEL_SCALE:
        raise ConfigError(f"{what} {pixel_scale!r}: give an integer in [1, {MAX_PIXEL_SCALE}], or 0 for automatic")
    return int(pixel_scale)


def check_fps(fps: float, what: str = "--fps") -> float:
    low, high = FPS_RANGE
    if not isinstance(fps, (int, float)) or not low <= fps <= high:  # NaN fails both comparisons
        raise ConfigError(f"{what} {fps!r}: give frames per second in [{low:g}, {high:g}]")
    return float(fps)


def check_seeds(seeds: Iterable[int], what: str = "seed") -> list[int]:
    """A list of seeds as Python ints in [0, MAX_SEED], at most MAX_SEEDS of them; ConfigError naming `what`
    otherwise."""
    checked = []
    for seed in itertools.islice(seeds, MAX_SEEDS + 1):  # an endless iterable is refused, not listed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
            raise ConfigError(f"{what}: {seed!r} is not a seed (an integer in [0, {MAX_SEED}])")
        checked.append(int(seed))
    if len(checked) > MAX_SEEDS:
        raise ConfigError(f"{what}: more than {MAX_SEEDS:,} seeds in one request")
    if not checked:
        raise ConfigError(f"{what}: no seeds given")
    return checked


def truncate_normal(z: Tensor, psi: float, generator: torch.Generator) -> Tensor:
    """BigGAN's truncation for latent_space "z": every entry with |z| > Z_TRUNCATION_BOUND is redrawn (from
    `generator`, in row-major order, until none is left), then z is scaled by psi: z ~ psi * TN(-2, 2), as
    BigGAN-PyTorch's truncated_z_sample. psi 1.0 returns z itself (untruncated N(0, I))."""
    if psi == 1.0:
        return z
    z = z.clone()
    outside = z.abs() > Z_TRUNCATION_BOUND
    while bool(outside.any()):
        z[outside] = torch.randn(int(outside.sum()), generator=generator)
        outside = z.abs() > Z_TRUNCATION_BOUND
    return z * psi


def noise_with_truncation(num_images: int, latent_dim: int, seed: int, z_psi: float = 1.0) -> Tensor:
    """`latent_noise(num_images, latent_dim, seed)`, truncated (`truncate_normal`) with the same generator
    when z_psi != 1 (the rows share one generator: `gan-dist sample --seed`)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num_images, latent_dim, generator=generator)
    return truncate_normal(z, z_psi, generator)


def seed_latents(seeds: Sequence[int], latent_dim: int, z_psi: float = 1.0) -> Tensor:
    """z (len(seeds), latent_dim) float32 on the CPU, row i a function of (seeds[i], latent_dim, z_psi) only:
    torch.randn(1, latent_dim) from a generator seeded with the seed (then truncated by that same generator
    when z_psi != 1)."""
    return torch.cat([noise_with_truncation(1, latent_dim, seed, z_psi) for seed in seeds])


def seed_slots(seeds: Sequence[int], batch: int = SEED_BATCH) -> list[list[tuple[int, int]]]:
    """The batches that run the seeds: lists of (row, index into seeds), every row < batch and seed
    seeds[index] in row seeds[index] % batch. G always runs on `batch` rows (the empty ones padded), so a
    seed's image goes through the same kernels at the same row whichever seeds share its batch."""
    queues: dict[int, list[int]] = {}
    for index, seed in enumerate(seeds):
        queues.setdefault(seed % batch, []).append(index)
    batches = []
    while queues:
        batches.append([(row, queue.pop(0)) for row, queue in sorted(queues.items())])
        queues = {row: queue for row, queue in queues.items() if queue}
    return batches


def slerp(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation between rows of a and b (B, D) at t in [0, 1] (lerp where they are parallel):
    the walk stays at the norm a Gaussian z has, rather than cutting through the low-norm middle."""
    a64, b64 = a.double(), b.double()
    cos = (a64 * b64).sum(-1, keepdim=True) / (a64.norm(dim=-1, keepdim=True) * b64.norm(dim=-1, keepdim=True))
    omega = torch.arccos(cos.clamp(-1.0, 1.0))  # (B, 1)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    spherical = (torch.sin((1 - t) * omega) / safe) * a64 + (torch.sin(t * omega) / safe) * b64
    linear = (1 - t) * a64 + t * b64
    return torch.where(parallel, linear, spherical).to(a.dtype)


def walk_times(num_keyframes: int, frames: int, loop: bool) -> list[tuple[int, int, float]]:
    """(from keyframe, to keyframe, t) of every frame of a walk: `frames` frames per transition, t = i / frames,
    ending on the last keyframe (or, with loop, just before returning to the first). A walk of more than
    MAX_WALK_FRAMES is refused (check_walk) before it is listed."""
    if walk_length(num_keyframes, frames, loop) > MAX_WALK_FRAMES:
        raise ConfigError(f"frames {frames:,}: a walk of {walk_length(num_keyframes, frames, loop):,} frames, "
                          f"over {MAX_WALK_FRAMES:,}")
    if num_keyframes == 1:
        return [(0, 0, 0.0)]
    segments = [(k, k + 1) for k in range(num_keyframes - 1)] + ([(num_keyframes - 1, 0)] if loop else [])
    times = [(a, b, i / frames) for a, b in segments for i in range(frames)]
    return times if loop else times + [(num_keyframes - 2, num_keyframes - 1, 1.0)]


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


GRID_PADDING = 2  # pixels around every cell of a grid (torchvision's make_grid)


def grid_size(count: int, image_hw: Sequence[int], columns: int | None = None, pixel_scale: int = 1
              ) -> tuple[int, int]:
    """(height, width) in pixels of the grid `images_to_grid` makes of `count` images of (H, W)."""
    height, width = image_hw
    if count == 1:  # make_grid returns a single image as it is, without padding
        return pixel_scale * height, pixel_scale * width
    across = min(columns or max(1, round(count ** 0.5)), max(count, 1))
    down = -(-max(count, 1) // across)
    return (pixel_scale * (down * (height + GRID_PADDING) + GRID_PADDING),
            pixel_scale * (across * (width + GRID_PADDING) + GRID_PADDING))


def grid_pixel_scale(count: int, image_shape: Sequence[int], columns: int | None = None, pixel_scale: int = 0,
                     what: str = "--num", strict: bool = True) -> int:
    """The pixel scale of a grid of `count` images of image_shape (C, H, W): pixel_scale, or for 0 the
    automatic one (`auto_pixel_scale`, lowered as far as 1 while the grid would exceed MAX_GRID_PIXELS).
    strict: a ConfigError when the grid still exceeds MAX_GRID_PIXELS, naming --pixel-scale when a smaller
    scale would fit, else `what` (the flag that asked for the images)."""
    image_hw = tuple(image_shape[-2:])

    def pixels(scale: int) -> int:
        height, width = grid_size(count, image_hw, columns, scale)
        return height * width

    scale = pixel_scale or auto_pixel_scale(image_hw[1])
    while not pixel_scale and scale > 1 and pixels(scale) > MAX_GRID_PIXELS:
        scale -= 1
    if strict and pixels(scale) > MAX_GRID_PIXELS:
        height, width = grid_size(count, image_hw, columns, scale)
        flag, advice = ("--pixel-scale", "give a smaller --pixel-scale") if scale > 1 and pixels(1) <= MAX_GRID_PIXELS \
            else (what, "ask for fewer images")
        raise ConfigError(f"{flag}: a grid of {count:,} images at pixel scale {scale} would be {width:,}x{height:,} "
                          f"pixels, over {MAX_GRID_PIXELS:,}; {advice}")
    return scale


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
    """Write the sample grid as a PNG (atomically) and return it. pixel_scale 0 = automatic (`auto_pixel_scale`,
    lowered for a grid that would exceed MAX_GRID_PIXELS: grid_pixel_scale)."""
    scale = pixel_scale or grid_pixel_scale(len(images), images.shape[1:], columns, strict=False)
    grid = images_to_grid(images, columns, scale)
    image = Image.fromarray(grid, mode="L" if grid.ndim == 2 else "RGB")
    atomic_write(path, lambda stream: image.save(stream, format="PNG"))
    return grid


def upscale_frames(frames: np.ndarray, pixel_scale: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> (N, H * s, W * s, C), nearest neighbour (as the grids: no blur)."""
    if pixel_scale <= 1:
        return frames
    return frames.repeat(pixel_scale, axis=1).repeat(pixel_scale, axis=2)


def _pil(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(frame[..., 0], mode="L") if frame.shape[-1] == 1 else Image.fromarray(frame, mode="RGB")


VIDEO_SUFFIXES = (".gif", ".mp4", ".png")


def check_frames_output(num_frames: int, image_shape: Sequence[int], out: Path, pixel_scale: int = 0,
                        columns: int | None = None, what: str = "--frames") -> int:
    """The pixel scale `save_frames` will use for num_frames frames of image_shape (C, H, W) written to `out`,
    when what it would hold fits: a .png grid within MAX_GRID_PIXELS (grid_pixel_scale), any frame within
    MAX_GRID_PIXELS once upscaled, a GIF's frames (Pillow holds them all) within MAX_GIF_BYTES. An MP4 or a
    folder of PNGs is written a frame at a time. Else a ConfigError naming --pixel-scale or `what`."""
    check_pixel_scale(pixel_scale)
    channels, height, width = image_shape
    suffix = Path(out).suffix.lower()
    if suffix == ".png":
        return grid_pixel_scale(num_frames, image_shape, columns, pixel_scale, what)
    scale = pixel_scale or auto_pixel_scale(width)
    if height * scale * width * scale > MAX_GRID_PIXELS:
        raise ConfigError(f"--pixel-scale {scale}: frames of {width * scale:,}x{height * scale:,} pixels, over "
                          f"{MAX_GRID_PIXELS:,}; give a smaller --pixel-scale")
    gif_bytes = num_frames * height * scale * width * scale * (1 if channels == 1 else 3)
    if suffix == ".gif" and gif_bytes > MAX_GIF_BYTES:
        raise ConfigError(f"{what}: a GIF of {num_frames:,} frames of {width * scale}x{height * scale} pixels would "
                          f"hold {gif_bytes / 2**20:,.0f} MiB while Pillow writes it, over {MAX_GIF_BYTES // 2**20} "
                          "MiB; give fewer frames or a smaller --pixel-scale, or write an .mp4 or a folder of PNGs")
    return scale


def save_frames(frames: np.ndarray, out: Path, fps: float = 30.0, columns: int | None = None,
                pixel_scale: int = 0) -> str:
    """Write uint8 frames (N, H, W, C) as an animated GIF (.gif, Pillow, looping), an H.264 MP4 (.mp4, PyAV:
    FFmpeg's libraries come inside its wheel, no system binary), one PNG grid of every frame (.png, `columns`
    per row), or, for a path without one of these suffixes, a folder of PNG frames (frame_00000.png ...).
    Frames are upscaled by pixel_scale (nearest neighbour; 0 = `auto_pixel_scale`, for a grid lowered to fit:
    grid_pixel_scale), one at a time for an MP4 or a folder. Sizes are checked first (check_frames_output).
    Files appear atomically; returns what was written, in words."""
    out = Path(out)
    suffix = out.suffix.lower()
    image_shape = (frames.shape[3], frames.shape[1], frames.shape[2])
    scale = check_frames_output(len(frames), image_shape, out, pixel_scale, columns)
    if suffix == ".gif":
        images = [_pil(upscale_frames(frame[None], scale)[0]) for frame in frames]
        duration = max(20, round(1000 / fps))  # ms per frame; browsers slow down anything under 20 ms
        atomic_write(out, lambda stream: images[0].save(stream, format="GIF", save_all=True,
                                                        append_images=images[1:], duration=duration, loop=0))
        return f"an animated GIF of {len(frames)} frames at {1000 / duration:.0f} fps"
    if suffix == ".mp4":
        _write_mp4(frames, out, fps, scale)
        return f"an MP4 (H.264) of {len(frames)} frames at {fps:g} fps"
    if suffix == ".png":
        images = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, C, H, W)
        save_grid_png(images, out, columns=columns or len(frames), pixel_scale=scale)
        return f"a PNG grid of {len(frames)} frames"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder; name a .gif, .mp4 or .png file, or a folder for PNG frames")
    out.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        image = _pil(upscale_frames(frame[None], scale)[0])
        atomic_write(out / f"frame_{index:05d}.png", lambda stream, image=image: image.save(stream, format="PNG"))
    return f"{len(frames)} PNG frames in a folder"


def _write_mp4(frames: np.ndarray, out: Path, fps: float, pixel_scale: int = 1) -> None:
    """H.264 in yuv420p (even sizes: an odd side is padded by its edge), a frame at a time: each frame is
    upscaled, made RGB and padded on its own, so memory does not grow with the number of frames."""
    try:
        import av  # PyAV: pip install "gan_dist[video]"
    except ImportError:
        raise ConfigError(f"--out {out}: writing MP4 needs PyAV (pip install 'gan_dist[video]'); "
                          "or write a .gif, a .png grid or a folder of PNG frames") from None
    from fractions import Fraction

    height, width = frames.shape[1] * max(pixel_scale, 1), frames.shape[2] * max(pixel_scale, 1)
    pad_h, pad_w = height % 2, width % 2  # yuv420p needs even sizes

    def rgb(frame: np.ndarray) -> np.ndarray:
        frame = upscale_frames(frame[None], pixel_scale)[0]
        frame = frame if frame.shape[-1] == 3 else frame.repeat(3, axis=-1)
        return np.ascontiguousarray(np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge"))

    def write(stream_out: object) -> None:
        with av.open(stream_out, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = width + pad_w, height + pad_h, "yuv420p"
            stream.options = {"crf": "18"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb(frame), format="rgb24")))
            container.mux(stream.encode())

    atomic_write(out, write)
