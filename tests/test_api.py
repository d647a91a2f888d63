"""The Python API on tiny generators: seeds that mean one image (any order, batching, process count),
truncation for z and w generators, latent walks, and the CLI's `sample --seeds` / `interpolate` on top."""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist import api
from gan_dist.checkpoint import GeneratorInfo, export_generator
from gan_dist.cli import main as cli_main
from gan_dist.config import ConfigError, ModelConfig
from gan_dist.models.build import build_generator
from gan_dist.sampling import (
    MAX_WALK_FRAMES,
    SEED_BATCH,
    Z_TRUNCATION_BOUND,
    check_walk,
    grid_size,
    images_to_uint8,
    latent_noise,
    parse_seeds,
    sample_images,
    seed_latents,
    seed_slots,
    slerp,
    walk_length,
    walk_times,
)
from tests.distributed import run_processes

LATENT_DIM = 8
STYLEGAN2 = {"w_dim": 16, "mapping_layers": 2, "channel_base": 256}


def tiny(name: str = "keras_dcgan", num_classes: int = 0, trained_w: bool = True) -> api.Generator:
    """A freshly initialised tiny G wrapped as api.Generator (a stylegan2 one with a tracked w_avg unless
    trained_w is False)."""
    torch.manual_seed(0)
    is_style = name == "stylegan2"
    shape = (1, 16, 16) if is_style else (1, 28, 28)
    model = ModelConfig(name=name, latent_dim=LATENT_DIM, g_width=16, d_width=8,
                        conditioning="concat" if num_classes else "none", options=STYLEGAN2 if is_style else {})
    G = build_generator(model, shape, num_classes)
    with torch.no_grad():  # class tables that differ per class, as training leaves them (resnet_sngan's start
        for module in G.modules():  # as all-1 gains and all-0 biases: every class the same image)
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_(0.0, 0.5)
    if is_style and trained_w:
        G.train()
        with torch.no_grad():  # a few training-mode forwards track w_avg, as training does
            for _ in range(3):
                labels = torch.arange(8) % num_classes if num_classes else None
                G(torch.randn(8, LATENT_DIM), labels)
    info = GeneratorInfo(model=model, dataset="mnist", image_shape=shape, num_classes=num_classes, step=5,
                         is_ema=False)
    return api.Generator(G.eval(), info)


# -- seeds ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seeds", [("0-3", [0, 1, 2, 3]), ("3,17,42", [3, 17, 42]), ("0-2,20", [0, 1, 2, 20]),
                                         (" 5 ", [5]), ("7-7", [7]), ("2,2", [2, 2])])
def test_seed_specs_parse(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1-", "-3", "5-2", "1,,2", "1.5", "0-99999999999"])
def test_bad_seed_specs_are_refused_naming_the_flag(text):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def test_the_z_of_a_seed_is_a_generator_seeded_with_it_alone():
    z = seed_latents([5, 3, 5], LATENT_DIM)
    torch.testing.assert_close(z[0], latent_noise(1, LATENT_DIM, 5)[0], rtol=0, atol=0)
    torch.testing.assert_close(z[1], latent_noise(1, LATENT_DIM, 3)[0], rtol=0, atol=0)
    torch.testing.assert_close(z[2], z[0], rtol=0, atol=0)


def test_seed_slots_put_each_seed_in_its_own_row_and_cover_every_request():
    seeds = [0, 32, 64, 5, 37, 31]
    batches = seed_slots(seeds)
    assert sorted(index for batch in batches for _, index in batch) == list(range(len(seeds)))
    for batch in batches:
        assert len({row for row, _ in batch}) == len(batch)  # one seed per row
        assert all(row == seeds[index] % SEED_BATCH for row, index in batch)
    assert len(batches) == 3  # 0, 32 and 64 share row 0


@pytest.mark.parametrize("name, num_classes", [("keras_dcgan", 0), ("keras_dcgan", 10), ("mlp", 0),
                                               ("stylegan2", 0), ("stylegan2", 10), ("resnet_sngan", 10),
                                               ("biggan", 10), ("dcgan", 0)])
def test_a_seed_gives_the_same_image_in_any_order_and_batching(name, num_classes):
    G = tiny(name, num_classes)
    seeds = list(range(40))
    all_at_once = G.sample(seed=seeds, output="float")
    assert all_at_once.shape == (40, *G.image_shape) and all_at_once.abs().max() <= 1
    shuffled = [17, 3, 39, 0, 22]
    torch.testing.assert_close(G.sample(seed=shuffled, output="float"), all_at_once[shuffled], rtol=0, atol=0)
    one_by_one = torch.cat([G.sample(seed=s, output="float") for s in reversed(seeds)]).flip(0)
    torch.testing.assert_close(one_by_one, all_at_once, rtol=0, atol=0)
    # seed=int with n: the seeds s .. s + n - 1
    torch.testing.assert_close(G.sample(5, seed=10, output="float"), all_at_once[10:15], rtol=0, atol=0)
    uint8 = G.sample(seed=seeds)
    assert uint8.dtype == torch.uint8 and uint8.shape == (40, *G.image_shape[1:], G.image_shape[0])  # (N, H, W, C)
    np.testing.assert_array_equal(uint8[..., 0].numpy(), images_to_uint8(all_at_once))


def test_a_conditional_g_takes_a_class_per_seed_or_seed_mod_classes():
    G = tiny("keras_dcgan", 10)
    by_default = G.sample(seed=[3, 14], output="float")  # classes 3 and 4
    torch.testing.assert_close(by_default[0], G.sample(seed=3, class_=3, output="float")[0], rtol=0, atol=0)
    torch.testing.assert_close(by_default[1], G.sample(seed=14, class_=4, output="float")[0], rtol=0, atol=0)
    per_seed = G.sample(seed=[3, 14], class_=[7, 1], output="float")
    torch.testing.assert_close(per_seed[1], G.sample(seed=14, class_=1, output="float")[0], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="classes 0..9"):
        G.sample(seed=0, class_=10)
    with pytest.raises(ConfigError, match="unconditional"):
        tiny("keras_dcgan").sample(seed=0, class_=1)


def test_sample_chooses_the_device_and_refuses_bad_requests():
    G = tiny()
    assert G.sample(2, seed=0, device="cpu").device.type == "cpu"
    with pytest.raises(ConfigError, match="output"):
        G.sample(seed=0, output="png")
    with pytest.raises(ConfigError, match="n=3 but 2 seeds"):
        G.sample(3, seed=[1, 2])
    with pytest.raises(ConfigError, match="not a seed"):
        G.sample(seed=[-1])


# -- truncation ---------------------------------------------------------------------------------------------

def test_z_truncation_is_a_scaled_truncated_normal_and_psi_1_changes_nothing():
    z = seed_latents(range(50), 64, z_psi=0.5)
    assert z.abs().max() <= 0.5 * Z_TRUNCATION_BOUND
    untruncated = seed_latents(range(50), 64)
    assert untruncated.abs().max() > Z_TRUNCATION_BOUND  # some entries of N(0, 1) lie beyond 2...
    inside = untruncated.abs() <= Z_TRUNCATION_BOUND
    torch.testing.assert_close(z[inside], 0.5 * untruncated[inside], rtol=0, atol=0)  # ...only those are redrawn
    assert torch.equal(seed_latents(range(50), 64, z_psi=0.0), torch.zeros(50, 64))
    G = tiny()
    torch.testing.assert_close(G.sample(seed=[1, 2], truncation=1.0, output="float"),
                               G.sample(seed=[1, 2], output="float"), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        G.sample(seed=0, truncation=1.5)


def test_w_truncation_moves_w_toward_the_tracked_mean():
    G = tiny("stylegan2")
    at_mean = G.sample(seed=[0, 1, 2], truncation=0.0, output="float")  # every w is w_avg
    torch.testing.assert_close(at_mean[1], at_mean[0], rtol=0, atol=0)
    torch.testing.assert_close(at_mean[2], at_mean[0], rtol=0, atol=0)
    half = G.sample(seed=[0, 1], truncation=0.5, output="float")
    full = G.sample(seed=[0, 1], output="float")
    assert not torch.equal(half, full) and not torch.equal(half[0], half[1])
    with pytest.raises(ConfigError, match="all zeros"):
        tiny("stylegan2", trained_w=False).sample(seed=0, truncation=0.7)
    tiny("stylegan2", trained_w=False).sample(seed=0)  # psi 1 needs no mean


def test_generate_at_truncation_1_is_sample_images():
    G = tiny("keras_dcgan", 10)
    z, labels = latent_noise(12, LATENT_DIM, 3), torch.arange(12) % 10
    torch.testing.assert_close(G.generate(z, labels, batch_size=5), sample_images(G.module, z, labels, batch_size=5),
                               rtol=0, atol=0)


# -- walks ------------------------------------------------------------------------------------------------

def test_slerp_keeps_the_ends_and_the_norm_of_unit_vectors():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    torch.testing.assert_close(slerp(a, b, 0.5).norm(), torch.tensor(1.0))
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel: lerp


@pytest.mark.parametrize("name", ["keras_dcgan", "stylegan2"])
def test_a_walk_starts_and_ends_on_its_keyframes(name):
    G = tiny(name)
    walk = G.interpolate([3, 17, 42], 4, output="float")
    assert walk.shape == (2 * 4 + 1, *G.image_shape)
    ends = G.sample(seed=[3, 17, 42], output="float")
    torch.testing.assert_close(walk[[0, 4, 8]], ends, rtol=0, atol=1e-5)
    looped = G.interpolate([3, 17, 42], 4, loop=True, output="float")
    assert looped.shape[0] == 3 * 4
    assert not torch.allclose(walk[1], walk[0])


@pytest.mark.parametrize("name", ["keras_dcgan", "stylegan2", "resnet_sngan", "biggan"])
def test_a_walk_between_classes_of_a_conditional_g(name):
    """Its ends are the keyframes' images, whichever way the G reads its class (one-hot input, w, class-
    conditional BatchNorm tables, BigGAN's shared embedding), and its middle is neither."""
    G = tiny(name, 10)
    walk = G.interpolate([5], 4, classes=[3, 8], output="float")
    assert walk.shape[0] == 5
    torch.testing.assert_close(walk[0], G.sample(seed=5, class_=3, output="float")[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(walk[-1], G.sample(seed=5, class_=8, output="float")[0], rtol=0, atol=1e-5)
    middle = walk[2]
    assert not torch.allclose(middle, walk[0], atol=1e-4) and not torch.allclose(middle, walk[-1], atol=1e-4)
    with pytest.raises(ConfigError, match="two keyframes"):
        G.interpolate([5], 4)
    with pytest.raises(ConfigError, match="3 keyframes"):
        G.interpolate([1, 2, 3], 4, classes=[1, 2])


# -- the CLI on an exported generator -------------------------------------------------------------------

def _export(G: api.Generator, folder: Path) -> Path:
    export_generator(G.module, G.info, folder)
    return folder


def test_cli_sample_seeds_match_the_api_and_refuse_bad_input(tmp_path, capsys):
    G = tiny("keras_dcgan", 10)
    folder = _export(G, tmp_path / "g")
    npz = tmp_path / "s.npz"
    assert cli_main(["sample", "--checkpoint", str(folder), "--seeds", "0-2,9", "--class", "4",
                     "--out", str(tmp_path / "s.png"), "--npz", str(npz), "--truncation", "0.8"]) == 0
    arrays = np.load(npz)
    expected = G.sample(seed=[0, 1, 2, 9], class_=4, truncation=0.8)
    np.testing.assert_array_equal(arrays["images"], expected[..., 0].numpy())
    assert arrays["seeds"].tolist() == [0, 1, 2, 9] and arrays["labels"].tolist() == [4] * 4
    # Without --class: one row per class, one column per seed.
    assert cli_main(["sample", "--checkpoint", str(folder), "--seeds", "0-2", "--out", str(tmp_path / "g.png"),
                     "--npz", str(npz)]) == 0
    arrays = np.load(npz)
    assert arrays["labels"].tolist() == [c for c in range(10) for _ in range(3)]
    np.testing.assert_array_equal(arrays["images"][3 * 7 + 2], G.sample(seed=2, class_=7)[0, ..., 0].numpy())
    capsys.readouterr()
    for argv, code, message in [
        (["--seeds", "3-1"], 2, "runs backwards"), (["--seeds", "x"], 2, "not a seed"),
        (["--seeds", "1", "--num", "3"], 2, "drop --num"), (["--class", "10"], 2, "classes 0..9"),
        (["--truncation", "2"], 2, r"\[0, 1\]"), (["--checkpoint", "best"], 2, "picks a generator of a run"),
    ]:
        args = ["sample", "--checkpoint" if argv[0] != "--checkpoint" else "--run", str(folder), *argv,
                "--out", str(tmp_path / "x.png")]
        assert cli_main(args) == code, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_cli_sample_truncation_on_an_untrained_w_generator_is_refused(tmp_path, capsys):
    folder = _export(tiny("stylegan2", trained_w=False), tmp_path / "g")
    assert cli_main(["sample", "--checkpoint", str(folder), "--seeds", "0-3", "--truncation", "0.5",
                     "--out", str(tmp_path / "x.png")]) == 2
    assert "all zeros" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".gif", ".png", ".mp4", ""])
def test_cli_interpolate_writes_a_walk(suffix, tmp_path):
    G = tiny("keras_dcgan", 10)
    folder = _export(G, tmp_path / "g")
    out = tmp_path / f"walk{suffix}"
    assert cli_main(["interpolate", "--checkpoint", str(folder), "--seeds", "3,17,42", "--classes", "3,8,1",
                     "--frames", "4", "--out", str(out)]) == 0
    frames = G.interpolate([3, 17, 42], 4, classes=[3, 8, 1])  # (9, 28, 28, 1)
    if suffix == ".gif":
        gif = Image.open(out)
        assert gif.n_frames == 9 and gif.size == (112, 112)  # 28 px upscaled x4
        gif.seek(8)
        np.testing.assert_array_equal(np.asarray(gif.convert("L"))[::4, ::4], frames[8, ..., 0].numpy())
    elif suffix == ".png":
        assert Image.open(out).size == (4 * (2 + 5 * 30), 4 * (2 + 2 * 30))  # a row of 5 per transition
    elif suffix == ".mp4":
        import av

        with av.open(str(out)) as container:
            assert sum(1 for _ in container.decode(video=0)) == 9
    else:
        names = sorted(p.name for p in out.iterdir())
        assert names == [f"frame_{i:05d}.png" for i in range(9)]
        np.testing.assert_array_equal(np.asarray(Image.open(out / names[4]))[::4, ::4], frames[4, ..., 0].numpy())


def test_import_gan_dist_stays_light_and_exports_load_generator():
    import subprocess

    code = ("import sys, gan_dist; assert 'torch' not in sys.modules, 'torch imported'; "
            "f = gan_dist.load_generator; assert 'torch' in sys.modules; print(f.__module__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "gan_dist.api"


def test_two_processes_sampling_a_share_of_the_seeds_equal_one(tmp_path):
    G = tiny("stylegan2", 10)
    folder = _export(G, tmp_path / "g")
    seeds = [40, 2, 33, 7, 18, 65, 1]
    out = tmp_path / "two.npz"
    run_processes(Path(__file__).with_name("api_seed_worker.py"), 2,
                  [str(folder), ",".join(map(str, seeds)), str(out)], timeout_s=180)
    np.testing.assert_array_equal(np.load(out)["images"], api.load_generator(folder).sample(seed=seeds).numpy())


def test_generator_repr_and_facts():
    G = tiny("stylegan2", 10)
    assert (G.latent_space, G.latent_dim, G.num_classes, G.image_shape) == ("w", LATENT_DIM, 10, (1, 16, 16))
    assert "stylegan2" in repr(G) and dataclasses.is_dataclass(G.info)


# -- bounds: a request is measured from its numbers, and refused before anything is drawn or listed ----------

def test_a_walk_is_measured_before_it_is_listed():
    for keyframes, frames, loop in [(1, 5, False), (2, 1, False), (3, 4, False), (3, 4, True), (5, 7, True)]:
        assert walk_length(keyframes, frames, loop) == len(walk_times(keyframes, frames, loop))
    assert check_walk(3, 4, False, (1, 28, 28)) == 9
    with pytest.raises(ConfigError, match="--frames 10,001: at most 10,000"):
        check_walk(2, MAX_WALK_FRAMES + 1, False, (1, 28, 28), "--frames")
    with pytest.raises(ConfigError, match="--frames 5,000: 4 keyframes would make a walk of 15,001 frames"):
        check_walk(4, 5_000, False, (1, 28, 28), "--frames")
    with pytest.raises(ConfigError, match=r"--frames: 9,001 images of 3x256x256 would hold 6\.6 GiB"):
        check_walk(2, 9_000, False, (3, 256, 256), "--frames")
    with pytest.raises(ConfigError, match="a walk of 2,000,000,000,001 frames"):
        walk_times(3, 10**12, False)  # refused from the numbers, never listed


def test_the_api_refuses_requests_that_would_not_fit_in_memory(memory_cap):
    G = tiny()
    memory_cap(2**30)  # a request that got past its check would fail here, not eat the machine
    for call, message in [
        (lambda: G.interpolate([1, 2], 10**12), "frames 1,000,000,000,000: at most 10,000"),
        (lambda: G.interpolate(list(range(20_000)), 1), "frames 1: 20,000 keyframes would make a walk of 20,000 frames"),
        (lambda: G.sample(1_000_000, seed=0), r"n: 1,000,000 images of 1x28x28 would hold 2\.9 GiB at once; "
         r"at most 171,196"),
        (lambda: G.sample(seed=range(10**12)), "more than 1,000,000 seeds"),
        (lambda: G.sample(seed=itertools.count()), "more than 1,000,000 seeds"),
        (lambda: G.sample(seed=range(500_000)), "seed: 500,000 images"),
        (lambda: G.noise(10**9, 0), "num_images: 1,000,000,000 images"),
        (lambda: G.generate(torch.zeros(200_000, LATENT_DIM)), "z: 200,000 images"),
        (lambda: tiny("keras_dcgan", 10).sample(seed=[1, 2], class_=itertools.repeat(3)), "3 classes for 2 seeds"),
    ]:
        with pytest.raises(ConfigError, match=message):
            call()


@pytest.mark.parametrize("suffix, argv, message", [
    (".gif", ["--frames", "1000000000"], "--frames 1,000,000,000: at most 10,000 frames"),
    (".png", ["--frames", "1000000000"], "--frames 1,000,000,000: at most 10,000 frames"),
    (".png", ["--seeds", "0-99999", "--frames", "1"], "--frames 1: 99,999 rows of 2 frames"),
    (".mp4", ["--seeds", "0-20000", "--frames", "1"], "--frames 1: 20,001 keyframes would make a walk"),
    (".gif", ["--frames", "0"], "--frames 0: give a positive number"),
    (".gif", ["--pixel-scale", "3000"], r"--pixel-scale 3000: give an integer in \[1, 32\]"),
    (".gif", ["--pixel-scale", "-1"], "--pixel-scale -1"),
    (".gif", ["--pixel-scale", "32", "--frames", "1000"], "--frames: a GIF of 1,001 frames of 896x896 pixels"),
    (".png", ["--pixel-scale", "32", "--frames", "200"], "--pixel-scale: a grid of 201 images at pixel scale 32"),
    (".gif", ["--fps", "nan"], r"--fps nan: give frames per second in \[0.01, 1000\]"),
    (".gif", ["--fps", "inf"], "--fps inf"),
    (".mp4", ["--fps", "0"], "--fps 0.0"),
])
def test_cli_interpolate_refuses_a_walk_too_big_naming_the_flag(suffix, argv, message, tmp_path, capsys,
                                                                 memory_cap):
    folder = _export(tiny(), tmp_path / "g")
    out = tmp_path / f"walk{suffix}"
    args = {"--seeds": "1,2", **dict(zip(argv[::2], argv[1::2], strict=True))}
    memory_cap(2**30)
    assert cli_main(["interpolate", "--checkpoint", str(folder), *[x for kv in args.items() for x in kv],
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()


@pytest.mark.parametrize("conditional, argv, message", [
    (False, ["--num", "5000000"], "--num: 5,000,000 images of 1x28x28 would hold 14.6 GiB"),
    (False, ["--num", "20000000"], "--num must be in [1, 10,000,000], got 20000000"),
    (True, ["--seeds", "0-999999"], "--seeds: 10,000,000 images of 1x28x28"),  # one row per class
    (False, ["--num", "100000"], "--num: a grid of 100,000 images at pixel scale 1 would be 9,482x9,512 pixels"),
    (True, ["--num", "4000000"], "--num: a grid of 20,000 images"),  # 10 rows of round(sqrt(4e6)) columns
])
def test_cli_sample_refuses_what_would_not_fit_naming_the_flag(conditional, argv, message, tmp_path, capsys,
                                                               memory_cap):
    folder = _export(tiny("keras_dcgan", 10 if conditional else 0), tmp_path / "g")
    memory_cap(2**30)
    assert cli_main(["sample", "--checkpoint", str(folder), *argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.png").exists()


def test_a_large_grid_is_drawn_at_a_smaller_pixel_scale_rather_than_refused(tmp_path):
    folder = _export(tiny(), tmp_path / "g")
    assert cli_main(["sample", "--checkpoint", str(folder), "--seeds", "0-1499", "--out", str(tmp_path / "s.png")]) == 0
    # 1,500 images, 39 columns: at the automatic x4 the grid would be 4,688 px square (over 4096^2), at x3 3,516.
    assert Image.open(tmp_path / "s.png").size == grid_size(1500, (28, 28), None, 3)[::-1] == (3516, 3516)


def test_an_mp4_without_pyav_is_one_line_naming_the_other_formats(tmp_path, capsys, monkeypatch):
    folder = _export(tiny(), tmp_path / "g")
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    out = tmp_path / "walk.mp4"
    assert cli_main(["interpolate", "--checkpoint", str(folder), "--seeds", "1,2", "--frames", "2",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "PyAV" in err and ".gif" in err
    assert not out.exists()
