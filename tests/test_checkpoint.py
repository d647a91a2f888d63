"""Checkpoint folders: verification, fallback past damaged ones, atomic replacement, retention, safe
formats for optimizer state, and validation of a shared generator.yaml."""

import json
import os
from pathlib import Path

import pytest
import torch

from gan_dist.checkpoint import (
    CheckpointError,
    apply_retention,
    clean_interrupted_writes,
    complete_checkpoints,
    find_resume_checkpoint,
    load_optimizer_state,
    mark_best,
    optimizer_state_files,
    publish_checkpoint,
    read_generator_record,
    set_aside_newer_checkpoints,
    step_dir_name,
    write_bytes_durably,
)
from gan_dist.config import ConfigError


def _checkpoint(run_dir: Path, step: int, payload: bytes = b"weights") -> Path:
    """A checkpoint in the real format: files written into a temp folder, then published."""
    root = run_dir / "checkpoints"
    tmp = root / f".tmp-{step_dir_name(step)}"
    tmp.mkdir(parents=True)
    files = {"G.safetensors": write_bytes_durably(tmp / "G.safetensors", payload + str(step).encode()),
             "train_state.json": write_bytes_durably(tmp / "train_state.json", b'{"step": %d}' % step)}
    publish_checkpoint(tmp, root / step_dir_name(step), files, {"step": step})
    return root / step_dir_name(step)


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    for step in (100, 200, 300, 400):
        _checkpoint(tmp_path, step)
    mark_best(tmp_path, 200, {"fid": 3.0})
    removed = apply_retention(tmp_path, keep_last=1)
    assert sorted(p.name for p in removed) == ["step_00000100", "step_00000300"]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [200, 400]


def test_incomplete_folders_are_never_resumed_from(tmp_path):
    _checkpoint(tmp_path, 100)
    (tmp_path / "checkpoints" / "step_00000200").mkdir()  # killed before meta.json
    (tmp_path / "checkpoints" / ".tmp-step_00000300").mkdir()  # killed before the rename
    assert find_resume_checkpoint(tmp_path, "auto").name == "step_00000100"
    assert find_resume_checkpoint(tmp_path, "") is None
    assert find_resume_checkpoint(tmp_path / "elsewhere", "auto") is None
    with pytest.raises(CheckpointError, match="no meta.json"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "checkpoints" / "step_00000200"))
    with pytest.raises(ConfigError, match="checkpoint.resume"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "checkpoints" / "step_99999999"))


@pytest.mark.parametrize("damage", ["truncate", "modify", "remove", "meta"])
def test_auto_sets_a_damaged_newest_checkpoint_aside_and_falls_back(tmp_path, damage):
    _checkpoint(tmp_path, 100)
    newest = _checkpoint(tmp_path, 200)
    target = newest / "G.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:3])
    elif damage == "modify":
        target.write_bytes(target.read_bytes().replace(b"w", b"W"))
    elif damage == "remove":
        target.unlink()
    else:
        (newest / "meta.json").write_text("{not json")
    reports = []
    assert find_resume_checkpoint(tmp_path, "auto", report=reports.append).name == "step_00000100"
    assert len(reports) == 1 and "step 200 is damaged" in reports[0]
    [aside] = [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("damaged-")]
    assert aside.name.endswith("step_00000200") and (aside / "SET_ASIDE.txt").is_file()
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [100]


def test_an_explicit_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    path = _checkpoint(tmp_path, 100)
    (path / "G.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"G\.safetensors: 1 bytes"):
        find_resume_checkpoint(tmp_path, str(path))
    assert path.is_dir()  # an explicit path is never renamed


def test_an_older_unverifiable_format_is_not_resumed(tmp_path):
    path = tmp_path / "checkpoints" / "step_00000100"
    path.mkdir(parents=True)
    (path / "meta.json").write_text("{}")  # format 1 (accelerate.save_state): no checksums
    (path / "custom_checkpoint_0.pkl").write_bytes(b"\x80\x04N.")
    with pytest.raises(CheckpointError, match="older gan_dist"):
        find_resume_checkpoint(tmp_path, str(path))


def test_replacing_a_step_is_atomic_and_leftovers_are_cleaned(tmp_path):
    first = _checkpoint(tmp_path, 100, payload=b"first")
    # A kill between the two renames of a replacement leaves the old folder under .old-: restored.
    os.replace(first, first.with_name(".old-step_00000100"))
    (tmp_path / "checkpoints" / ".tmp-step_00000200").mkdir()
    notes = clean_interrupted_writes(tmp_path)
    assert any("restored step_00000100" in note for note in notes)
    assert not (tmp_path / "checkpoints" / ".tmp-step_00000200").exists()
    assert find_resume_checkpoint(tmp_path, "auto") == first
    # A re-save of the same step replaces it whole.
    second = _checkpoint(tmp_path, 100, payload=b"second")
    assert second == first and (second / "G.safetensors").read_bytes().startswith(b"second")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000100"]


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    """Else a later --resume auto (a SLURM requeue) would jump back to the abandoned trajectory."""
    for step in (1000, 1500, 2000):
        _checkpoint(tmp_path, step)
    moved = set_aside_newer_checkpoints(tmp_path, 1000)
    assert [p.name.split("-")[-1] for p in moved] == ["step_00001500", "step_00002000"]
    assert all(p.is_dir() for p in moved)
    assert find_resume_checkpoint(tmp_path, "auto").name == "step_00001000"
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1000]


@pytest.mark.parametrize("implementation", [{"fused": True}, {"foreach": True}])
def test_optimizer_state_round_trips_through_safetensors_and_json(tmp_path, implementation):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9), **implementation)
    for _ in range(3):
        model(torch.randn(8, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors, record = optimizer_state_files(optimizer)
    (tmp_path / "o.safetensors").write_bytes(tensors)
    (tmp_path / "o.json").write_text(record)
    assert "pickle" not in record and json.loads(record)["param_groups"][0]["betas"] == [0.5, 0.9]
    restored = torch.optim.Adam(model.parameters(), lr=1.0, **implementation)
    load_optimizer_state(restored, tmp_path / "o.safetensors", tmp_path / "o.json")
    original, loaded = optimizer.state_dict(), restored.state_dict()
    # The state comes from the checkpoint, the hyperparameters stay the run's own (a resumed run may change lr).
    assert (loaded["param_groups"][0]["lr"], loaded["param_groups"][0]["betas"]) == (1.0, (0.9, 0.999))
    for index, state in original["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(loaded["state"][index][name], value, rtol=0, atol=0)
    other = torch.optim.Adam(torch.nn.Linear(2, 2).parameters())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_optimizer_state(other, tmp_path / "o.safetensors", tmp_path / "o.json")


def _record(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "generator.yaml"
    path.write_text(text)
    return path


def test_a_generator_record_reads_only_the_model_and_the_dataset(tmp_path):
    path = _record(tmp_path, "model:\n  name: mlp\n  g_width: 8\ndataset: mnist\nimage_shape: [1, 28, 28]\n"
                             "num_classes: 0\nstep: 4\nis_ema: true\n"
                             "data:\n  train_urls: 'pipe:touch MARKER; cat x'\n")
    info = read_generator_record(path)
    assert (info.model.name, info.model.g_width, info.dataset, info.image_shape, info.step, info.is_ema) == (
        "mlp", 8, "mnist", (1, 28, 28), 4, True)
    assert not hasattr(info, "data")


@pytest.mark.parametrize(("text", "key"), [
    ("model:\n  name: mlp\n  g_width: 100000000\ndataset: mnist\nimage_shape: [1, 28, 28]\n", "model.g_width"),
    ("model:\n  name: evil\ndataset: mnist\nimage_shape: [1, 28, 28]\n", "model.name"),
    ("model:\n  name: mlp\n  extra: 1\ndataset: mnist\nimage_shape: [1, 28, 28]\n", "model.extra"),
    ("model:\n  name: mlp\ndataset: mnist\nimage_shape: [1, 99999, 28]\n", "image_shape"),
    ("model:\n  name: mlp\nimage_shape: [1, 28, 28]\n", "dataset"),
    ("model:\n  name: mlp\ndataset: mnist\nimage_shape: [1, 28, 28]\nnum_classes: -3\n", "num_classes"),
])
def test_a_hostile_generator_record_is_refused_naming_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        read_generator_record(_record(tmp_path, text))
