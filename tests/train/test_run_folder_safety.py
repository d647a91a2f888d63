"""Where a run writes and who may write there: `--resume PATH` never writes beside PATH unless it is the named
run's own checkpoint; one training per run folder (RUN_DIR/.lock); a split too small for the metrics turns
evaluation off at start-up, and a failing final evaluation never costs the checkpoint or the export.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from gan_dist.checkpoint import complete_checkpoints
from gan_dist.cli import main as cli_main
from gan_dist.configure import load_config
from gan_dist.files import FolderLock
from gan_dist.train.trainer import train
from tests.data.synthetic import synthetic_arrays, write_idx

COMMON = ["log.sample_every=0", "data.num_workers=0", "log.tracker=none"]


def _train_args(shards: Path, out_dir: Path, *extra: str) -> list[str]:
    return ["train", "configs/debug.yaml", f"data.root={shards}", f"run.out_dir={out_dir}", *COMMON, *extra]


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and folder under `folder`."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def source_run(mnist_shards, tmp_path) -> Path:
    """A finished 4-step run with checkpoints at 2 and 4 (in tmp_path/src/a)."""
    assert cli_main(_train_args(mnist_shards, tmp_path / "src", "run.name=a", "train.num_steps=4", "checkpoint.every=2",
                                "checkpoint.keep_last=5")) == 0
    return tmp_path / "src" / "a"


def test_resume_from_a_path_without_run_name_exits_2_naming_the_key_and_writes_nothing(mnist_shards, source_run,
                                                                                        tmp_path, capsys):
    copied = tmp_path / "downloads" / "step_00000002"  # a checkpoint copied out of its run
    shutil.copytree(source_run / "checkpoints" / "step_00000002", copied)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    for path in (source_run / "checkpoints" / "step_00000002", copied):
        status = cli_main(_train_args(mnist_shards, tmp_path / "runs", "train.num_steps=6", "--resume", str(path)))
        err = capsys.readouterr().err
        assert status == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err and "key 'run.name'" in err, err
        assert "run.name=NEW_NAME" in err
    assert _snapshot(tmp_path) == before  # nothing written anywhere, the home of the copy included


def test_the_first_message_says_how_to_continue_the_checkpoints_own_run(mnist_shards, source_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli_main(_train_args(mnist_shards, tmp_path / "runs", "--resume",
                                str(source_run / "checkpoints" / "step_00000002"))) == 2
    assert f"run.name=a run.out_dir={source_run.parent} to continue that run in place" in capsys.readouterr().err


def test_resume_from_another_runs_checkpoint_starts_a_new_run_and_only_reads_the_source(mnist_shards, source_run,
                                                                                          tmp_path, capsys):
    before = _snapshot(source_run)
    capsys.readouterr()
    older = source_run / "checkpoints" / "step_00000002"  # older than the source's newest: nothing set aside there
    assert cli_main(_train_args(mnist_shards, tmp_path / "runs", "run.name=b", "train.num_steps=6",
                                "checkpoint.every=2", "checkpoint.keep_last=1", "--resume", str(older))) == 0
    out = capsys.readouterr().out
    assert f"resumed from {older} at step 2" in out and "which was only read" in out
    assert _snapshot(source_run) == before  # no rename, no retention, no abandoned-*, no lock file
    new = tmp_path / "runs" / "b"
    assert [step for step, _ in complete_checkpoints(new)] == [6]
    assert json.loads((new / "done.json").read_text())["step"] == 6
    starts = [json.loads(line) for line in (new / "starts.jsonl").read_text().splitlines()]
    assert starts[0]["resumed_from"] == str(older)
    source_id = json.loads((source_run / "run.json").read_text())["run_id"]
    assert json.loads((new / "run.json").read_text())["run_id"] != source_id  # its own tracker run

    # A folder with checkpoints of its own is not mixed with another run's trajectory.
    capsys.readouterr()
    assert cli_main(_train_args(mnist_shards, tmp_path / "runs", "run.name=b", "train.num_steps=8",
                                "--resume", str(older))) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of its own" in err and "--resume auto" in err
    assert [step for step, _ in complete_checkpoints(new)] == [6]


def test_resume_from_the_named_runs_own_checkpoint_continues_it_in_place(mnist_shards, source_run, capsys):
    capsys.readouterr()
    assert cli_main(_train_args(mnist_shards, source_run.parent, "run.name=a", "train.num_steps=6",
                                "checkpoint.every=2", "checkpoint.keep_last=5", "--resume",
                                str(source_run / "checkpoints" / "step_00000002"))) == 0
    out = capsys.readouterr().out
    assert "abandoned trajectory set aside" in out  # step 4 of the run itself: its explicit restart
    assert [step for step, _ in complete_checkpoints(source_run)] == [2, 4, 6]
    assert [p.name for p in (source_run / "checkpoints").iterdir() if p.name.startswith("abandoned-")]


def test_a_second_training_of_a_locked_run_folder_exits_1_naming_the_holder_and_writes_nothing(
        mnist_shards, tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert cli_main(_train_args(mnist_shards, tmp_path, "run.name=r", "train.num_steps=2", "checkpoint.every=2")) == 0
    holder = {"host": "node7", "pid": 4242, "started": "2026-12-05T10:00:00+00:00", "command": "gan-dist train x"}
    lock = FolderLock.acquire(run_dir / ".lock", holder)  # another "process" (its own open file description)
    try:
        before = _snapshot(run_dir)
        capsys.readouterr()
        status = cli_main(_train_args(mnist_shards, tmp_path, "run.name=r", "train.num_steps=4", "--resume", "auto"))
        err = capsys.readouterr().err
        assert status == 1, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "is in use by pid 4242 on node7 since 2026-12-05T10:00:00+00:00 (gan-dist train x)" in err
        assert _snapshot(run_dir) == before
    finally:
        lock.release()
    # Released (as the OS does when the holder dies): the run continues.
    assert cli_main(_train_args(mnist_shards, tmp_path, "run.name=r", "train.num_steps=4", "--resume", "auto")) == 0
    record = json.loads((run_dir / ".lock").read_text())
    # The holder is this process, described by its own command line (here pytest's).
    assert record["pid"] == os.getpid()
    assert record["command"] == shlex.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])


def test_the_lock_is_held_for_the_run_and_dropped_at_its_end(mnist_shards, tmp_path, monkeypatch):
    from gan_dist.train import trainer as trainer_module

    seen = []
    real_finish = trainer_module.Trainer._finish

    def finish(self, *args):
        try:  # a second taker during the run is refused
            FolderLock.acquire(self.run.path / ".lock", {}).release()
            seen.append("free")
        except Exception as error:  # noqa: BLE001 - the test records what happened
            seen.append(type(error).__name__)
        return real_finish(self, *args)

    monkeypatch.setattr(trainer_module.Trainer, "_finish", finish)
    config = load_config("configs/debug.yaml", [f"data.root={mnist_shards}", f"run.out_dir={tmp_path}", "run.name=r",
                                                "train.num_steps=2", *COMMON])
    assert train(config) == 0
    assert seen == ["LockHeld"]
    FolderLock.acquire(tmp_path / "r" / ".lock", {}).release()  # free once the run ended


# -- evaluation that cannot run, or fails ---------------------------------------------------------------

@pytest.fixture(scope="module")
def five_test_images(tmp_path_factory) -> Path:
    """MNIST-shaped shards with 300 train and 5 test images (the k-NN metrics need 6)."""
    from gan_dist.data.shards import prepare_data

    root = tmp_path_factory.mktemp("five")
    idx = write_idx(root / "idx", synthetic_arrays(train_size=300, test_size=5), gzipped=True)
    prepare_data(root / "shards", source=f"idx:{idx}", samples_per_shard=100, verify_official_counts=False)
    return root / "shards"


def test_a_test_split_of_5_images_turns_evaluation_off_at_start_up_and_the_run_ends_with_its_checkpoint(
        five_test_images, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GAN_DIST_METRICS_CACHE", str(tmp_path / "cache"))
    status = cli_main(["train", "configs/debug.yaml", f"data.root={five_test_images}", "data.auto_prepare=false",
                       f"run.out_dir={tmp_path}", "run.name=r", "train.num_steps=4", "eval.eval_every=2", *COMMON])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Traceback" not in err
    [line] = [line for line in out.splitlines() if "evaluation is off" in line]
    assert "the test split of mnist has 5 image(s)" in line and "at least 6" in line
    assert out.index("evaluation is off") < out.index("run ")  # said at start-up, before training
    assert [step for step, _ in complete_checkpoints(tmp_path / "r")] == [4]
    assert (tmp_path / "r" / "generator.safetensors").is_file() and (tmp_path / "r" / "done.json").is_file()

    # gan-dist eval refuses it with exit 2, naming the split's size.
    capsys.readouterr()
    assert cli_main(["eval", "configs/debug.yaml", f"data.root={five_test_images}", "data.auto_prepare=false",
                     "--run", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test split of mnist has 5 image(s)" in err, err


def test_a_failing_final_evaluation_is_one_warning_after_the_checkpoint_and_the_export(mnist_shards, tmp_path, capsys,
                                                                                        monkeypatch):
    from gan_dist.metrics import evaluate

    def fail(self, G, seed=0):
        raise ValueError("need more than 5 samples for k=5 nearest neighbours, got 3")

    monkeypatch.setattr(evaluate.Evaluator, "evaluate", fail)
    monkeypatch.setattr(evaluate.Evaluator, "_compute_floor", lambda self: {"metrics": {}})
    status = cli_main(_train_args(mnist_shards, tmp_path, "run.name=r", "train.num_steps=4", "eval.eval_every=0"))
    out, err = capsys.readouterr()
    assert status == 0, err
    [line] = [line for line in (out + err).splitlines() if "evaluation failed" in line]
    assert "ValueError: need more than 5 samples" in line and "gan-dist eval --run" in line
    assert "Traceback" not in err
    run_dir = tmp_path / "r"
    assert [step for step, _ in complete_checkpoints(run_dir)] == [4]
    assert (run_dir / "generator.safetensors").is_file()
    assert json.loads((run_dir / "done.json").read_text())["step"] == 4


def test_the_best_fid_of_a_final_evaluation_after_the_checkpoint_survives_a_resume(mnist_shards, tmp_path,
                                                                                    monkeypatch):
    """The final evaluation runs after the final checkpoint (so it can never cost it), so that checkpoint does
    not hold its FID; a later start takes the run's best from checkpoints/best.json: a worse FID after the
    resume does not become the best (retention would then keep the wrong checkpoint)."""
    from gan_dist.metrics import evaluate

    fids = iter([10.0, 20.0])  # the end of the first start, the end of the second: worse
    monkeypatch.setattr(evaluate.Evaluator, "evaluate", lambda self, G, seed=0: {"fid": next(fids)})
    monkeypatch.setattr(evaluate.Evaluator, "_compute_floor", lambda self: {"metrics": {}})
    monkeypatch.setattr(evaluate.Evaluator, "floor", lambda self: {})
    args = _train_args(mnist_shards, tmp_path, "run.name=r", "eval.eval_every=0", "checkpoint.every=0",
                       "checkpoint.keep_last=1")
    assert cli_main([*args, "train.num_steps=2"]) == 0
    best = json.loads((tmp_path / "r" / "checkpoints" / "best.json").read_text())
    assert (best["step"], best["metrics"]["fid"]) == (2, 10.0)
    assert cli_main([*args, "train.num_steps=4", "--resume", "auto"]) == 0
    best = json.loads((tmp_path / "r" / "checkpoints" / "best.json").read_text())
    assert (best["step"], best["metrics"]["fid"]) == (2, 10.0)
    assert [step for step, _ in complete_checkpoints(tmp_path / "r")] == [2, 4]  # the best one kept
