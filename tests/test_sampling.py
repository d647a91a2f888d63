"""The one sampling helper: the class-row grid's layout, eval mode around every call of G, and
`gan-dist sample` showing a conditional G in the training grid's layout."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gan_dist.cli import main as cli_main
from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.build import build_generator
from gan_dist.sampling import (
    MAX_GRID_PIXELS,
    auto_pixel_scale,
    check_frames_output,
    grid_inputs,
    grid_pixel_scale,
    grid_size,
    images_to_grid,
    images_to_uint8,
    latent_noise,
    sample_images,
    save_frames,
)

LATENT_DIM = 8


class FakeG(nn.Module):
    """Only what grid_inputs reads: latent_dim and num_classes."""

    latent_dim = LATENT_DIM

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes


def _tiny_generator(num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    model = ModelConfig(name="keras_dcgan", latent_dim=LATENT_DIM, g_width=8, d_width=8,
                        conditioning="concat" if num_classes else "none")
    return build_generator(model, (1, 28, 28), num_classes)


@pytest.mark.parametrize("num_images, columns", [(25, 5), (100, 10), (4, 2)])
def test_a_conditional_grid_is_one_row_per_class_and_a_column_is_one_z(num_images, columns):
    z, labels, num_columns = grid_inputs(FakeG(10), num_images, seed=7)
    assert num_columns == columns
    assert z.shape == (10 * columns, LATENT_DIM) and labels.shape == (10 * columns,)
    rows_z, rows_y = z.view(10, columns, LATENT_DIM), labels.view(10, columns)
    for row in range(10):
        assert rows_y[row].tolist() == [row] * columns  # row r: all class r
        torch.testing.assert_close(rows_z[row], rows_z[0], rtol=0, atol=0)  # the same z in every row
    assert len({tuple(v.tolist()) for v in rows_z[0]}) == columns  # and a different z per column
    torch.testing.assert_close(rows_z[0], latent_noise(columns, LATENT_DIM, 7), rtol=0, atol=0)


def test_an_unconditional_grid_is_square_without_labels():
    z, labels, columns = grid_inputs(FakeG(0), 25, seed=7)
    assert labels is None and columns == 5
    torch.testing.assert_close(z, latent_noise(25, LATENT_DIM, 7), rtol=0, atol=0)


def test_sample_images_runs_g_in_eval_mode_without_grad_and_restores_its_mode():
    G = _tiny_generator(10)  # BatchNorm in G: train and eval mode give different images
    z, labels, _ = grid_inputs(G, 4, seed=1)
    G.train()
    with torch.no_grad():
        in_train_mode = G(z, labels)
    images = sample_images(G, z, labels)
    assert G.training and not images.requires_grad and images.dtype == torch.float32
    with torch.no_grad():
        expected = G.eval()(z, labels)
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert not torch.allclose(images, in_train_mode)
    # Batches of any size give the same samples (running statistics, not the batch's).
    torch.testing.assert_close(sample_images(G, z, labels, batch_size=3), images, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_images", [4, 25])
def test_gan_dist_sample_of_a_conditional_g_uses_the_training_grid(num_images, tmp_path, monkeypatch, capsys):
    G = _tiny_generator(10).eval()
    info = SimpleNamespace(model=dataclasses.replace(ModelConfig(), conditioning="concat"), dataset="mnist", step=3)
    monkeypatch.setattr("gan_dist.checkpoint.load_generator", lambda *args, **kwargs: (G, info))
    png, npz = tmp_path / "grid.png", tmp_path / "grid.npz"
    assert cli_main(["sample", "--run", "run", "--num", str(num_images), "--out", str(png), "--npz", str(npz),
                     "--seed", "5"]) == 0
    z, labels, columns = grid_inputs(G, num_images, seed=5)
    arrays = np.load(npz)
    assert arrays["labels"].tolist() == labels.tolist()  # one row per class
    np.testing.assert_array_equal(arrays["images"], images_to_uint8(sample_images(G, z, labels)))
    scale = auto_pixel_scale(28)
    assert Image.open(png).size == (scale * (2 + columns * 30), scale * (2 + 10 * 30))  # (width, height)
    assert f"{10 * columns} samples" in capsys.readouterr().out


@pytest.mark.parametrize("count, columns", [(1, None), (7, None), (25, None), (10, 4), (3, 8), (30, 3)])
def test_grid_size_is_the_size_images_to_grid_makes(count, columns):
    images = torch.zeros(count, 1, 5, 7)
    assert images_to_grid(images, columns, pixel_scale=2).shape == grid_size(count, (5, 7), columns, 2)


def test_the_automatic_grid_scale_shrinks_to_fit_and_an_explicit_one_is_refused():
    assert grid_pixel_scale(25, (1, 28, 28)) == auto_pixel_scale(28) == 4
    assert grid_pixel_scale(5_000, (1, 28, 28)) == 1  # 71 x 71 cells: x4 and x2 are over MAX_GRID_PIXELS
    height, width = grid_size(5_000, (28, 28), None, 1)
    assert height * width <= MAX_GRID_PIXELS < grid_size(5_000, (28, 28), None, 2)[0] * width * 2
    with pytest.raises(ConfigError, match="--pixel-scale: a grid of 5,000 images at pixel scale 2"):
        grid_pixel_scale(5_000, (1, 28, 28), pixel_scale=2)
    with pytest.raises(ConfigError, match="--seeds: a grid of 50,000 images at pixel scale 1"):
        grid_pixel_scale(50_000, (1, 28, 28), what="--seeds")
    assert grid_pixel_scale(50_000, (1, 28, 28), strict=False) == 1  # the trainer's grids are never refused


def test_frames_are_checked_by_what_each_format_holds(tmp_path):
    shape = (3, 64, 64)
    assert check_frames_output(100, shape, tmp_path / "w.mp4") == 2  # auto: 64 px -> x2 (at least 96)
    # An MP4 or a folder is written a frame at a time: only the frame's size is bounded...
    assert check_frames_output(10_000, shape, tmp_path / "w.mp4", pixel_scale=8) == 8
    with pytest.raises(ConfigError, match="--pixel-scale 32: frames of 8,192x8,192 pixels"):
        check_frames_output(10, (3, 256, 256), tmp_path / "frames", pixel_scale=32)
    # ...a GIF's frames are all held by Pillow.
    with pytest.raises(ConfigError, match="--frames: a GIF of 10,000 frames of 512x512 pixels would hold 7,500 MiB"):
        check_frames_output(10_000, shape, tmp_path / "w.gif", pixel_scale=8)


@pytest.mark.parametrize("suffix", [".mp4", ""])
def test_mp4_and_png_frames_are_upscaled_a_frame_at_a_time(suffix, tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 7, 9, 1), dtype=np.uint8)
    out = tmp_path / f"walk{suffix}"
    save_frames(frames, out, fps=10, pixel_scale=3)
    if suffix == ".mp4":
        av = pytest.importorskip("av")
        with av.open(str(out)) as container:
            decoded = [frame.to_ndarray(format="gray") for frame in container.decode(video=0)]
        assert len(decoded) == 5 and decoded[0].shape == (22, 28)  # 21 x 27 padded to even sizes
    else:
        written = np.asarray(Image.open(out / "frame_00003.png"))
        np.testing.assert_array_equal(written, frames[3, ..., 0].repeat(3, axis=0).repeat(3, axis=1))
