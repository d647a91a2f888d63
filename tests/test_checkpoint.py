"""Checkpoint folder logic: completeness, retention with the best-FID checkpoint kept, resume discovery."""

import pytest

from gan_dist.checkpoint import (
    apply_retention,
    complete_checkpoints,
    find_resume_checkpoint,
    mark_best,
    set_aside_newer_checkpoints,
    step_dir_name,
)
from gan_dist.config import ConfigError


def _fake_checkpoint(run_dir, step, complete=True):
    path = run_dir / "checkpoints" / step_dir_name(step)
    path.mkdir(parents=True)
    if complete:
        (path / "meta.json").write_text("{}")
    return path


def test_retention_keeps_the_newest_and_the_best(tmp_path):
    for step in (100, 200, 300, 400):
        _fake_checkpoint(tmp_path, step)
    mark_best(tmp_path, 200, {"fid": 3.0})
    removed = apply_retention(tmp_path, keep_last=1)
    assert sorted(p.name for p in removed) == ["step_00000100", "step_00000300"]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [200, 400]


def test_incomplete_folders_are_never_resumed_from(tmp_path):
    _fake_checkpoint(tmp_path, 100)
    _fake_checkpoint(tmp_path, 200, complete=False)  # killed before meta.json
    (tmp_path / "checkpoints" / ".tmp-step_00000300").mkdir()  # killed before the rename
    assert find_resume_checkpoint(tmp_path, "auto").name == "step_00000100"
    assert find_resume_checkpoint(tmp_path, "") is None
    assert find_resume_checkpoint(tmp_path / "elsewhere", "auto") is None
    with pytest.raises(ConfigError, match="checkpoint.resume"):
        find_resume_checkpoint(tmp_path, str(tmp_path / "checkpoints" / "step_00000200"))


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path):
    """Else a later --resume auto (a SLURM requeue) would jump back to the abandoned trajectory."""
    for step in (1000, 1500, 2000):
        _fake_checkpoint(tmp_path, step)
    moved = set_aside_newer_checkpoints(tmp_path, 1000)
    assert [p.name.split("-")[-1] for p in moved] == ["step_00001500", "step_00002000"]
    assert all(p.is_dir() for p in moved)
    assert find_resume_checkpoint(tmp_path, "auto").name == "step_00001000"
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1000]
