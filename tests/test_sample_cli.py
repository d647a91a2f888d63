"""`gan-dist sample` at any size: the .npz is streamed chunk by chunk (memory flat), written atomically (a kill
leaves no file), equal to the unchunked samples; the PNG shows at most the first 1024 images and says so;
--num is bounded (exit 2)."""

from __future__ import annotations

import dataclasses
import errno
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist import cli
from gan_dist.cli import main as cli_main
from gan_dist.config import ModelConfig
from gan_dist.models.build import build_generator
from gan_dist.sampling import auto_pixel_scale, class_labels, images_to_uint8, latent_noise, sample_images

LATENT_DIM = 8


def _generator(num_classes: int, latent_dim: int = LATENT_DIM) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ModelConfig(name="mlp", latent_dim=latent_dim, g_width=8, d_width=8,
                        conditioning="concat" if num_classes else "none")
    return build_generator(model, (1, 28, 28), num_classes).eval()


@pytest.fixture
def generator(monkeypatch):
    """`gan-dist sample` on a tiny in-memory G: set_generator(num_classes) picks it."""
    chosen = {}

    def set_generator(num_classes: int, latent_dim: int = LATENT_DIM) -> torch.nn.Module:
        chosen["G"] = _generator(num_classes, latent_dim)
        chosen["info"] = SimpleNamespace(model=dataclasses.replace(
            ModelConfig(), conditioning="concat" if num_classes else "none"), dataset="mnist", step=3)
        return chosen["G"]

    monkeypatch.setattr("gan_dist.checkpoint.load_generator", lambda *a, **k: (chosen["G"], chosen["info"]))
    return set_generator


@pytest.mark.parametrize("latent_dim", [1, 3, 7, 100])
@pytest.mark.parametrize("num_images", [1, 5, 16, 47, 64, 65, 200])
def test_noise_drawn_in_chunks_is_latent_noise_bit_for_bit(latent_dim, num_images):
    chunks = list(cli._noise_chunks(num_images, latent_dim, seed=11, chunk_rows=16))
    assert [start for start, _ in chunks] == sorted({start for start, _ in chunks})
    z = torch.cat([chunk for _, chunk in chunks])
    assert torch.equal(z, latent_noise(num_images, latent_dim, 11))


@pytest.mark.parametrize("num_classes, class_index, num", [(0, None, 1100), (10, 3, 70), (10, None, 40)])
def test_the_npz_is_streamed_in_chunks_and_equals_the_unchunked_samples(generator, tmp_path, monkeypatch, capsys,
                                                                        num_classes, class_index, num):
    G = generator(num_classes)
    monkeypatch.setattr(cli, "SAMPLE_CHUNK_ROWS", 32)  # many chunks
    written = []
    from gan_dist import files

    original = files.write_npz

    def spy(stream, members):
        members = [(name, dtype, shape, _recording(chunks, written)) for name, dtype, shape, chunks in members]
        return original(stream, members)

    monkeypatch.setattr(files, "write_npz", spy)
    args = ["sample", "--run", "run", "--num", str(num), "--out", str(tmp_path / "g.png"), "--npz",
            str(tmp_path / "s.npz"), "--seed", "4"]
    if class_index is not None:
        args += ["--class", str(class_index)]
    assert cli_main(args) == 0
    arrays = np.load(tmp_path / "s.npz")
    if num_classes and class_index is None:  # the training grid's layout: 10 rows of round(sqrt(40)) = 6
        columns = round(num ** 0.5)
        z = latent_noise(columns, LATENT_DIM, 4).repeat(num_classes, 1)
        labels = torch.arange(num_classes).repeat_interleave(columns)
    else:
        z, labels = latent_noise(num, LATENT_DIM, 4), class_labels(num, num_classes, class_index)
    np.testing.assert_array_equal(arrays["images"], images_to_uint8(sample_images(G, z, labels)))
    if num_classes:
        assert arrays["labels"].tolist() == labels.tolist()
    else:
        assert "labels" not in arrays
    assert max(len(chunk) for chunk in written) <= 32 and len(written) > 2  # never the whole set at once


def _recording(chunks, written):
    for chunk in chunks:
        written.append(chunk)
        yield chunk


def test_the_png_shows_the_first_1024_images_and_says_so(generator, tmp_path, capsys):
    """With --npz the images are streamed into the file and the PNG shows the first 1024 (without it, all of
    them in one grid, bounded by sampling.MAX_GRID_PIXELS: tests/test_api.py)."""
    generator(0)
    assert cli_main(["sample", "--run", "run", "--num", "1100", "--out", str(tmp_path / "g.png"),
                     "--npz", str(tmp_path / "g.npz")]) == 0
    out = capsys.readouterr().out
    assert "1024 samples" in out and "the grid shows the first 1024 of 1100" in out
    scale = auto_pixel_scale(28)
    assert Image.open(tmp_path / "g.png").size == (scale * (2 + 32 * 30), scale * (2 + 32 * 30))  # 32 x 32


def test_a_conditional_grid_keeps_every_class_row_and_caps_the_columns(generator, tmp_path, capsys):
    generator(10)
    assert cli_main(["sample", "--run", "run", "--num", "40000", "--out", str(tmp_path / "g.png"),
                     "--npz", str(tmp_path / "g.npz")]) == 0
    out = capsys.readouterr().out  # 10 rows of 200 columns asked: 102 columns shown
    assert "1020 samples" in out and "the grid shows the first 1020 of 2000" in out
    scale = auto_pixel_scale(28)
    assert Image.open(tmp_path / "g.png").size == (scale * (2 + 102 * 30), scale * (2 + 10 * 30))


@pytest.mark.parametrize("num", ["0", "10000001"])
def test_num_is_bounded(generator, tmp_path, capsys, num):
    generator(0)
    assert cli_main(["sample", "--run", "run", "--num", num, "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "--num must be in [1, 10,000,000]" in err and err.count("\n") == 1


def test_an_interrupted_npz_write_leaves_no_file_and_no_temp(generator, tmp_path, monkeypatch, capsys):
    generator(0)
    monkeypatch.setattr(cli, "SAMPLE_CHUNK_ROWS", 16)
    from gan_dist import files

    original = files.write_npz

    def dies_midway(stream, members):
        def chunks(source):
            for index, chunk in enumerate(source):
                if index == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # or a SIGTERM's exception
                yield chunk

        return original(stream, [(n, d, s, chunks(c)) for n, d, s, c in members])

    monkeypatch.setattr(files, "write_npz", dies_midway)
    out_npz = tmp_path / "s.npz"
    status = cli_main(["sample", "--run", "run", "--num", "100", "--out", str(tmp_path / "g.png"), "--npz",
                       str(out_npz)])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and f"no space left on device writing {out_npz}" in err, err
    assert "free there" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]  # no s.npz, no .s.npz.tmp-*


def test_an_npz_replaced_by_a_new_one_is_whole(generator, tmp_path):
    generator(0)
    out_npz: Path = tmp_path / "s.npz"
    out_npz.write_bytes(b"old")
    assert cli_main(["sample", "--run", "run", "--num", "20", "--out", str(tmp_path / "g.png"),
                     "--npz", str(out_npz)]) == 0
    assert np.load(out_npz)["images"].shape == (20, 28, 28)


def test_sigterm_while_the_npz_is_written_leaves_neither_it_nor_a_temp_file(tmp_path):
    """A real process, a real SIGTERM (its default action would leave the temp file behind)."""
    import signal
    import subprocess
    import sys
    import time

    from gan_dist.checkpoint import GeneratorInfo, export_generator

    G = _generator(0)
    export_generator(G, GeneratorInfo(model=ModelConfig(name="mlp", latent_dim=LATENT_DIM, g_width=8, d_width=8),
                                      dataset="mnist", image_shape=(1, 28, 28), num_classes=0, step=1, is_ema=False),
                     tmp_path / "gen")
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "gan_dist", "sample", "--checkpoint", str(tmp_path / "gen"), "--num", "5000000",
         "--out", str(out / "g.png"), "--npz", str(out / "s.npz")], cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".s.npz.tmp") for p in out.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.01)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated (SIGTERM) while writing" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["g.png"]
