"""The run folder: its path, the record of each start, which checkpoint a start resumes from, saving and
loading checkpoints across ranks, the best-FID mark and the `done.json` marker. File formats are
gan_dist.checkpoint's; this module adds the ranks and the policies (docs/design-notes.md, "Checkpoints").

Rank rules: the main process decides (names, verification, renames) and writes the shared files; every
rank writes its own RNG state into a checkpoint and loads from it; decisions reach the other ranks by a
broadcast, errors included, so that no rank waits for one that failed. Loading is two-phase: every rank
reads and checks everything first, and only when all succeeded is anything applied.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from gan_dist import checkpoint
from gan_dist.checkpoint import CHECKPOINTS, DONE, Checkpointable, CheckpointError, step_dir_name
from gan_dist.config import Config, ConfigError, to_dict, to_yaml
from gan_dist.distributed import broadcast_from_main, first_error, run_on_main
from gan_dist.files import append_line_durably, write_json_atomic, write_text_atomic

T = TypeVar("T")
STARTS = "starts.jsonl"  # one line per start of the run, appended


@dataclass
class RunRecord:
    """Values resolved at start-up, written to RUN_DIR/run.json (the user's config stays as given)."""

    run_name: str
    run_dir: str
    run_id: str
    mixed_precision: str
    num_processes: int
    device: str
    adam_implementation: str
    dataset: str
    loader: str  # data.loader resolved (stream | memory)
    num_workers: int  # data.num_workers resolved: decoder processes per rank (0 with the memory loader)
    image_shape: tuple[int, int, int]
    num_classes: int
    global_batch_size: int
    start_step: int
    resumed_from: str | None
    parameters: dict[str, int]  # G, D: trainable parameter counts
    train_images: int = 0  # images an epoch goes through: data.train_subset, else the train split's size
    # data.train_subset's draw, once the batch source made it: images, split_images, class_counts (None when
    # unlabeled) and the sha256 of the chosen indices (int64 little-endian): the same draw on every start.
    train_subset: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["image_shape"] = list(self.image_shape)
        return record


def resolve_run_path(config: Config, accelerator: Any) -> Path:
    """out_dir/run.name; --resume PATH of RUN/checkpoints/step_N continues in RUN; else a timestamped name
    chosen by the main process (broadcast). The user's config is not modified."""
    resume = config.checkpoint.resume
    if not config.run.name and resume not in ("", "auto"):
        return Path(resume).expanduser().resolve().parent.parent
    name = config.run.name or broadcast_from_main(accelerator, f"{datetime.now():%Y%m%d-%H%M%S}-{config.model.name}")
    return Path(config.run.out_dir).expanduser() / name


class RunFolder:
    """One run's folder. Construct on every rank with the same path (`resolve_run_path`)."""

    def __init__(self, path: Path, accelerator: Any) -> None:
        self.path = path
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.config: Config | None = None  # set by prepare; written out by write_record
        self.resume_notes: list[str] = []  # what the last load said (changed optimizer settings, ...)
        self.loaded_processes: int | None = None  # processes that wrote the checkpoint loaded last
        self.fresh_streams = False  # this rank wrote no RNG state in it (the run had fewer processes)

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() on the main process, its result on every rank; an exception there is raised on every rank,
        as the same type for the errors that `gan-dist train` reports in one line (a ConfigError for a
        --resume PATH that is no checkpoint, a CheckpointError for a damaged one), else as a RuntimeError."""
        return run_on_main(self.accelerator, fn, passthrough=(CheckpointError, ConfigError),
                           what="a checkpoint operation")

    # -- start --------------------------------------------------------------------------------------
    def prepare(self, config: Config) -> list[str]:
        """Create the folder, tidy interrupted checkpoint writes (main). The config is written by
        write_record, once the start has resumed: a start that fails to resume leaves the folder's record
        of what was used (config.yaml, run.json, starts.jsonl) as it was."""
        self.config = config
        notes: list[str] = []
        if self.is_main:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
            notes = checkpoint.clean_interrupted_writes(self.path)
        self.accelerator.wait_for_everyone()
        return notes

    def write_record(self, record: dict[str, Any]) -> None:
        """After a successful start (resumed or fresh): config.yaml and run.json become this start's, and
        one line is appended to starts.jsonl (kept across resumes: what every segment of the run used)."""
        if not self.is_main:
            return
        if self.config is not None:
            write_text_atomic(self.path / "config.yaml", to_yaml(self.config))
        write_json_atomic(self.path / "run.json", record)
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "start_step": record.get("start_step"), "resumed_from": record.get("resumed_from"),
                "num_processes": record.get("num_processes"),
                "config": to_dict(self.config) if self.config is not None else None, "record": record,
                "resume_notes": self.resume_notes}
        append_line_durably(self.path / STARTS, json.dumps(line, sort_keys=True))

    def update_record(self, record: dict[str, Any]) -> None:
        """Rewrite run.json with what became known after the start (starts.jsonl keeps the start's line)."""
        if self.is_main:
            write_json_atomic(self.path / "run.json", record)

    def resume(self, resume: str, target: Checkpointable) -> Path | None:
        """Every rank: select (verify) and load the checkpoint that checkpoint.resume names; returns it, or
        None to start fresh. An explicit path that fails raises CheckpointError naming the file.

        With 'auto', a checkpoint that verifies but does not load (weights that do not fit the model, bad
        optimizer state or counters, on any rank) is passed over and the next older one tried; nothing of
        it is left in `target` (loading checks everything first). Once an older one loads, the ones passed
        over are set aside with the reason, like damaged ones. If none loads, nothing is renamed and the
        start fails (CheckpointError): when every checkpoint fails, the likelier cause is this run's config
        (model.* changed) rather than damage, and a fresh start would silently throw the run away.
        """
        failed: list[tuple[Path, str]] = []
        while True:
            excluded = [p for p, _ in failed]
            path = self.on_main(lambda excluded=excluded: checkpoint.select_resume(self.path, resume, exclude=excluded))
            if path is None:
                if failed:
                    first, reason = failed[0]
                    raise CheckpointError(f"checkpoint.resume=auto: no checkpoint of {self.path} fits this run "
                                          f"(none was moved); the newest, {first.name}: {reason}")
                return None
            try:
                self.load(path, target)
            except CheckpointError as error:
                if resume != "auto":
                    raise
                failed.append((path, str(error)))
                continue
            break

        def set_aside_unloadable() -> None:
            for bad, reason in failed:
                moved = checkpoint.set_aside(bad, reason)
                print(f"checkpoint {bad.name} could not be loaded and was set aside as {moved.name}: {reason}; "
                      f"resumed from the older {path.name}", file=sys.stderr, flush=True)

        self.on_main(set_aside_unloadable)
        return path

    def set_aside_newer(self, step: int) -> list[Path]:
        return checkpoint.set_aside_newer_checkpoints(self.path, step) if self.is_main else []

    def finished(self, num_steps: int, step: int) -> bool:
        return step >= num_steps and (self.path / DONE).is_file()

    # -- checkpoints ----------------------------------------------------------------------------------
    def save(self, step: int, target: Checkpointable, meta: dict[str, Any], keep_last: int) -> Path:
        """Write checkpoints/step_N on every rank (each its RNG state; the main process the rest), publish
        it atomically, apply retention. The caller has checked that everything is finite."""
        accelerator = self.accelerator
        root = self.path / CHECKPOINTS
        final_dir = root / step_dir_name(step)
        tmp_dir = root / f".tmp-{step_dir_name(step)}"

        def make_tmp() -> None:
            root.mkdir(parents=True, exist_ok=True)
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir)
            tmp_dir.mkdir()

        self.on_main(make_tmp)
        checkpoint.write_rank_files(tmp_dir, accelerator.process_index, target.noise)
        accelerator.wait_for_everyone()

        def write_and_publish() -> Path:
            checkpoint.write_checkpoint(tmp_dir, final_dir, target, step, meta, accelerator.num_processes)
            checkpoint.apply_retention(self.path, keep_last)
            return final_dir

        path = self.on_main(write_and_publish)
        accelerator.wait_for_everyone()
        return path

    def load(self, path: Path, target: Checkpointable) -> None:
        """Every rank: restore everything `target` holds from `path`; every rank reads and checks first, and
        only when all succeeded is anything applied (a CheckpointError, the same on every rank, leaves
        `target` untouched). The main process prints which optimizer settings the config changed."""
        try:
            loaded, error = checkpoint.read_checkpoint(path, self.accelerator.process_index, target), None
        except CheckpointError as exc:
            loaded, error = None, str(exc)
        error = first_error(self.accelerator, error)
        if error is not None:
            raise CheckpointError(error)
        assert loaded is not None
        checkpoint.apply_checkpoint(loaded, target)
        self.resume_notes = loaded.notes
        self.loaded_processes = loaded.saved_processes
        self.fresh_streams = loaded.rng is None
        if self.is_main:
            for note in loaded.notes:
                print(note, flush=True)

    # -- best checkpoint, end of run -------------------------------------------------------------------
    def mark_best(self, step: int, metrics: dict[str, float]) -> None:
        if self.is_main:
            checkpoint.mark_best(self.path, step, metrics)

    def newest_checkpoint(self) -> Path | None:
        checkpoints = checkpoint.complete_checkpoints(self.path)
        return checkpoints[-1][1] if checkpoints else None

    def append_eval(self, record: dict[str, Any]) -> None:
        """One line of RUN_DIR/evals.jsonl per evaluation (step, images seen, wall-clock, metrics): the
        run's own history, for plots of quality against time and images (scripts/results.py plot)."""
        if self.is_main:
            append_line_durably(self.path / "evals.jsonl", json.dumps(record, sort_keys=True))

    def write_done(self, record: dict[str, Any]) -> None:
        if self.is_main:
            write_json_atomic(self.path / DONE, {**record, "best": checkpoint.read_best(self.path)})

    def export(self, G: Any, info: checkpoint.GeneratorInfo) -> None:
        if self.is_main:
            checkpoint.export_generator(G, info, self.path)

    def remove_done(self) -> None:
        """A run continued past its old num_steps is no longer done."""
        if self.is_main and (self.path / DONE).is_file():
            os.remove(self.path / DONE)
