"""End to end on your own images (32x32x3: prepare, train, sample, eval with a feature network trained
here), the class-row grid of a conditional run, conditional sampling from the CLI, an unlabeled folder
trained with evaluation off, and the combinations that cannot work refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_dist.cli import main as cli_main
from gan_dist.sampling import auto_pixel_scale
from tests.metrics.folders import write_image_folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Two colour classes of odd-sized RGB images, plus a grayscale one, an RGBA one and a corrupt file."""
    root = write_image_folder(tmp_path_factory.mktemp("images") / "images", classes=("blue", "red"),
                              per_class=40, size=(37, 45))
    Image.fromarray(np.full((50, 41), 128, dtype=np.uint8), mode="L").save(root / "red" / "gray.png")
    Image.fromarray(np.full((33, 60, 4), 200, dtype=np.uint8), mode="RGBA").save(root / "blue" / "alpha.png")
    (root / "blue" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def _folder_args(images: Path, tmp_path: Path) -> list[str]:
    return ["data.dataset=folder", f"data.source=folder:{images}", "data.image_size=32", "data.channels=3",
            "data.test_fraction=0.25", "data.on_corrupt=warn", f"data.root={tmp_path / 'shards'}",
            "data.num_workers=0", "eval.num_samples=60", "eval.batch_size=30", "log.tracker=none"]


def test_train_sample_and_evaluate_on_your_own_32x32_rgb_images(image_folder, tmp_path, capsys):
    data = _folder_args(image_folder, tmp_path)
    # The feature network for this data, trained here (written beside its shards: found by default).
    assert cli_main(["train-classifier", *data, "--epochs", "3"]) == 0
    assert "broken.jpg" in capsys.readouterr().err  # the unreadable file is listed by name (on_corrupt=warn)
    run = ["train", "configs/debug.yaml", *data, "model.name=dcgan", "model.g_width=8", "model.d_width=8",
           "model.conditioning=concat", f"run.out_dir={tmp_path / 'runs'}", "run.name=own", "train.num_steps=6",
           "eval.eval_every=0", "log.num_samples=4"]
    assert cli_main(run) == 0
    run_dir = tmp_path / "runs" / "own"
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["image_shape"], record["num_classes"], record["dataset"]) == ([3, 32, 32], 2, "folder")
    grid = Image.open(run_dir / "samples" / "step_00000006.png")
    assert grid.mode == "RGB"  # one row per class: 2 rows of 2 columns of 32x32 (x3 pixel blocks)
    assert grid.size == (3 * (2 + 2 * 34), 3 * (2 + 2 * 34))
    # Sampling one class and the whole grid, then `gan-dist eval` with the caller's data settings.
    assert cli_main(["sample", "--run", str(run_dir), "--num", "6", "--class", "1", "--out", str(tmp_path / "c1.png"),
                     "--npz", str(tmp_path / "c1.npz")]) == 0
    arrays = np.load(tmp_path / "c1.npz")
    assert arrays["images"].shape == (6, 32, 32, 3) and arrays["labels"].tolist() == [1] * 6
    assert cli_main(["eval", *data, "--run", str(run_dir), "--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert {"fid", "class_accuracy", "intra_fid"} <= set(result["metrics"]) and "fid" in result["floor"]


def test_a_wrong_class_or_an_unconditional_class_request_exits_2(image_folder, tmp_path, capsys):
    data = _folder_args(image_folder, tmp_path)
    base = ["train", "configs/debug.yaml", *data, "model.name=mlp", "model.g_width=8", "model.d_width=8",
            f"run.out_dir={tmp_path / 'runs'}", "train.num_steps=2", "eval.eval_every=-1"]
    assert cli_main([*base, "run.name=cond", "model.conditioning=acgan"]) == 0
    assert cli_main([*base, "run.name=plain"]) == 0
    capsys.readouterr()
    assert cli_main(["sample", "--run", str(tmp_path / "runs" / "cond"), "--class", "11"]) == 2
    assert "--class 11" in capsys.readouterr().err
    assert cli_main(["sample", "--run", str(tmp_path / "runs" / "plain"), "--class", "1"]) == 2
    assert "unconditional" in capsys.readouterr().err


def test_acgan_on_an_unlabeled_folder_is_refused_before_the_run_folder_exists(tmp_path, capsys):
    flat = write_image_folder(tmp_path / "flat", classes=(), per_class=20, size=(32, 32))
    status = cli_main(["train", "configs/debug.yaml", "data.dataset=folder", f"data.source=folder:{flat}",
                       f"data.root={tmp_path / 'shards'}", "model.conditioning=acgan", "data.num_workers=0",
                       f"run.out_dir={tmp_path / 'runs'}", "run.name=x"])
    err = capsys.readouterr().err
    assert status == 2 and "model.conditioning" in err and "data.dataset" in err
    assert not (tmp_path / "runs").exists()


def test_a_folder_smaller_than_one_global_batch_is_refused(tmp_path, capsys):
    small = write_image_folder(tmp_path / "small", classes=("a", "b"), per_class=4, size=(16, 16))
    status = cli_main(["train", "configs/debug.yaml", "data.dataset=folder", f"data.source=folder:{small}",
                       "data.image_size=16", f"data.root={tmp_path / 'shards'}", "data.num_workers=0",
                       f"run.out_dir={tmp_path / 'runs'}", "train.batch_size_per_process=32"])
    err = capsys.readouterr().err
    assert status == 2 and "fewer than one global batch" in err and "train.batch_size_per_process" in err
    assert not (tmp_path / "runs").exists()


def test_a_conditional_run_writes_one_grid_row_per_class(tiny_shards, tmp_path, capsys):
    """10 labeled classes, log.num_samples=25: 10 rows of 5 cells (a square grid would be 5 x 5)."""
    assert cli_main(["train", "configs/debug.yaml", f"data.root={tiny_shards}", "data.auto_prepare=false",
                     "model.conditioning=concat", f"run.out_dir={tmp_path}", "run.name=cgan", "train.num_steps=2",
                     "log.num_samples=25", "log.sample_every=0", "checkpoint.every=0"]) == 0
    cell, scale = 28 + 2, auto_pixel_scale(28)  # images_to_grid: 2 px padding per cell and once more
    grid = Image.open(tmp_path / "cgan" / "samples" / "step_00000002.png")
    assert grid.size == (scale * (2 + 5 * cell), scale * (2 + 10 * cell))  # (width, height)
    # `gan-dist sample` without --class shows the same layout (--num is the square grid it widens).
    capsys.readouterr()
    assert cli_main(["sample", "--run", str(tmp_path / "cgan"), "--num", "25", "--out", str(tmp_path / "s.png"),
                     "--npz", str(tmp_path / "s.npz")]) == 0
    assert Image.open(tmp_path / "s.png").size == grid.size
    assert np.load(tmp_path / "s.npz")["labels"].tolist() == [c for c in range(10) for _ in range(5)]


def test_an_unlabeled_folder_without_a_feature_net_trains_with_evaluation_off(tmp_path, capsys):
    flat = write_image_folder(tmp_path / "flat", classes=(), per_class=150, size=(30, 30))  # a test split of >= 6
    status = cli_main(["train", "configs/debug.yaml", "data.dataset=folder", f"data.source=folder:{flat}",
                       "data.image_size=16", f"data.root={tmp_path / 'shards'}", "model.name=mlp",
                       "model.g_width=8", "model.d_width=8", f"run.out_dir={tmp_path / 'runs'}", "run.name=flat",
                       "train.num_steps=6", "eval.eval_every=2", "eval.num_samples=20", "eval.batch_size=10"])
    out = capsys.readouterr().out
    assert status == 0
    assert out.count("evaluation is off for this run: ") == 1  # said once, for 3 evaluations (steps 2, 4, the end)
    assert "eval.feature_net" in out.split("evaluation is off for this run: ")[1].splitlines()[0]
    done = json.loads((tmp_path / "runs" / "flat" / "done.json").read_text())
    assert done["step"] == 6
    assert not (tmp_path / "runs" / "flat" / "evals.jsonl").exists()
