"""The run folder: its path, the record of each start, which checkpoint a start resumes from, saving and
loading checkpoints across ranks, the best-FID mark and the `done.json` marker. File formats are
gan_dist.checkpoint's; this module adds the ranks and the policies (docs/design-notes.md, "Checkpoints").

Rank rules: the main process decides (names, verification, renames) and writes the shared files; every
rank writes its own RNG state into a checkpoint and loads from it; decisions reach the other ranks by a
broadcast, errors included (a full disk too), so that no rank waits for one that failed. Loading is
two-phase: every rank reads and checks everything first, and only when all succeeded is anything applied.

One writer per folder: the main process holds an exclusive lock on RUN_DIR/.lock from before anything is
written until the run ends (`prepare`); a second training of the same folder is refused before it writes.
A checkpoint given by path is only read, unless it is one of this run's own (`resolve_run_path`).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import socket
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
from gan_dist.files import (
    DiskFullError,
    FolderLock,
    LockHeld,
    LockUnsupported,
    append_line_durably,
    disk_full_message,
    is_disk_full,
    write_json_atomic,
    write_text_atomic,
)

T = TypeVar("T")
STARTS = "starts.jsonl"  # one line per start of the run, appended
LOCK = ".lock"  # RUN_DIR/.lock: flock'ed by the main process of the training that writes the folder


class RunFolderInUse(RuntimeError):
    """Another training holds the run folder's lock. The message names the holder (exit 1)."""


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


def checkpoint_owner(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint folder belongs to (RUN/checkpoints/step_N -> RUN, resolved), else None."""
    path = Path(checkpoint).expanduser().resolve()
    return path.parent.parent if path.parent.name == CHECKPOINTS else None


def resolve_run_path(config: Config, accelerator: Any) -> Path:
    """out_dir/run.name, else a timestamped name chosen by the main process (broadcast). The user's config is
    not modified.

    `--resume PATH` never makes the run write beside PATH unless PATH is one of the named run's own
    checkpoints (out_dir/run.name resolves to PATH/../..): without run.name it is a ConfigError saying which
    name continues that run and that a new one starts a new run; with another run.name, a new run starts from
    the checkpoint, which is only read (refused when that folder holds checkpoints of its own: two runs would
    mix)."""
    resume = config.checkpoint.resume
    if resume not in ("", "auto"):
        owner = checkpoint_owner(resume)
        if not config.run.name:
            continue_it = (f"run.name={owner.name} run.out_dir={owner.parent} to continue that run in place, or "
                           if owner is not None else "")
            raise ConfigError(
                f"key 'run.name': --resume {resume} says what to load, not where to write: set {continue_it}"
                "run.name=NEW_NAME to start a new run from the checkpoint (which is then only read)")
        path = Path(config.run.out_dir).expanduser() / config.run.name
        if owner is None or path.resolve() != owner:
            own = checkpoint.complete_checkpoints(path)
            if own:
                raise ConfigError(
                    f"key 'run.name': {path} holds checkpoints of its own (newest: {own[-1][1].name}), and "
                    f"--resume {resume} is not one of them: continue {path} with --resume auto, or give "
                    "run.name a new name to start a new run from that checkpoint")
        return path
    name = config.run.name or broadcast_from_main(accelerator, f"{datetime.now():%Y%m%d-%H%M%S}-{config.model.name}")
    return Path(config.run.out_dir).expanduser() / name


def lock_holder() -> dict[str, Any]:
    """What RUN_DIR/.lock records about the process holding it."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]])}


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process that is just starting (it has not recorded itself yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('command')})")


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
        self._lock: FolderLock | None = None  # main process, from prepare to release

    def owns(self, checkpoint_path: str | Path) -> bool:
        """Whether a checkpoint folder is one of this run's (RUN_DIR/checkpoints/step_N)."""
        return checkpoint_owner(checkpoint_path) == self.path.resolve()

    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() on the main process, its result on every rank; an exception there is raised on every rank,
        as the same type for the errors that `gan-dist train` reports in one line (a ConfigError for a
        --resume PATH that is no checkpoint, a CheckpointError for a damaged one, RunFolderInUse, a full disk),
        else as a RuntimeError."""
        return run_on_main(self.accelerator, fn, passthrough=(CheckpointError, ConfigError, RunFolderInUse,
                                                              DiskFullError),
                           what="a checkpoint operation")

    # -- start --------------------------------------------------------------------------------------
    def prepare(self, config: Config) -> list[str]:
        """Lock the folder, create it, tidy interrupted checkpoint writes (main; every rank raises
        RunFolderInUse naming the holder when another training has it, before anything is written). The
        config is written by write_record, once the start has resumed: a start that fails to resume leaves
        the folder's record of what was used (config.yaml, run.json, starts.jsonl) as it was."""
        self.config = config

        def lock_and_tidy() -> list[str]:
            notes = self._lock_folder()
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
            return notes + checkpoint.clean_interrupted_writes(self.path)

        return self.on_main(lock_and_tidy)

    def _lock_folder(self) -> list[str]:
        """Main process: take RUN_DIR/.lock (kept until `release`). Only the folder itself may be created
        first (the lock file lives in it)."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock = FolderLock.acquire(self.path / LOCK, lock_holder())
        except LockHeld as held:
            raise RunFolderInUse(
                f"run folder {self.path} is in use by {describe_holder(held.holder)}: it holds {self.path / LOCK}; "
                "wait for that training to end (or stop it), or choose another run.name") from None
        except LockUnsupported as error:
            return [f"warning: cannot lock {self.path / LOCK} ({error.strerror}): this filesystem does not support "
                    "flock, so a second training of this run folder would not be refused (README, Failure "
                    "behaviour)"]
        return []

    def release(self) -> None:
        """Drop the folder's lock (main process; the OS drops it anyway when the process ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def write_record(self, record: dict[str, Any]) -> None:
        """After a successful start (resumed or fresh): config.yaml and run.json become this start's, and
        one line is appended to starts.jsonl (kept across resumes: what every segment of the run used).
        Collective: a failure on the main process (a full disk) is raised on every rank."""
        def write() -> None:
            if self.config is not None:
                write_text_atomic(self.path / "config.yaml", to_yaml(self.config))
            write_json_atomic(self.path / "run.json", record)
            line = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "start_step": record.get("start_step"), "resumed_from": record.get("resumed_from"),
                    "num_processes": record.get("num_processes"),
                    "config": to_dict(self.config) if self.config is not None else None, "record": record,
                    "resume_notes": self.resume_notes}
            append_line_durably(self.path / STARTS, json.dumps(line, sort_keys=True))

        self.on_main(write)

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
        it atomically, apply retention. The caller has checked that everything is finite. A write that fails
        on any rank (a full disk: DiskFullError naming the file, the free space and the checkpoint's size)
        is raised on every rank, and the unfinished write is removed (main)."""
        accelerator = self.accelerator
        root = self.path / CHECKPOINTS
        final_dir = root / step_dir_name(step)
        tmp_dir = root / f".tmp-{step_dir_name(step)}"

        def make_tmp() -> None:
            root.mkdir(parents=True, exist_ok=True)
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir)
            tmp_dir.mkdir()

        self.on_main(lambda: self._or_disk_full(make_tmp, tmp_dir))
        try:
            checkpoint.write_rank_files(tmp_dir, accelerator.process_index, target.noise)
            failure = None
        except OSError as error:
            failure = error
        self._raise_first_failure(failure, tmp_dir)  # collective: also the barrier before the main writes

        def write_and_publish() -> Path:
            checkpoint.write_checkpoint(tmp_dir, final_dir, target, step, meta, accelerator.num_processes)
            checkpoint.apply_retention(self.path, keep_last)
            return final_dir

        path = self.on_main(lambda: self._or_disk_full(write_and_publish, tmp_dir))
        accelerator.wait_for_everyone()
        return path

    def _checkpoint_size(self) -> int | None:
        """Bytes of the newest complete checkpoint (meta.json's sizes): what the next one needs, about."""
        newest = self.newest_checkpoint()
        if newest is None:
            return None
        try:
            return sum(entry["size_bytes"] for entry in checkpoint.read_meta(newest)["files"].values())
        except (CheckpointError, KeyError, TypeError):
            return None

    def _disk_full(self, error: OSError, tmp_dir: Path) -> DiskFullError:
        """Main: the one-line error for a checkpoint write that ran out of space, after removing the
        unfinished write (it would only hold space; the next start removes it anyway)."""
        shutil.rmtree(tmp_dir, ignore_errors=True)
        newest = self.newest_checkpoint()
        message = disk_full_message(error, error.filename or tmp_dir, self._checkpoint_size())
        message += (f"; the newest complete checkpoint is {newest}" if newest else "; no complete checkpoint yet")
        return DiskFullError(f"{message}: free space, then continue with --resume auto", error.filename,
                             error.errno if error.errno in (errno.ENOSPC, errno.EDQUOT) else errno.ENOSPC)

    def _or_disk_full(self, fn: Callable[[], T], tmp_dir: Path) -> T:
        try:
            return fn()
        except OSError as error:
            if is_disk_full(error):
                raise self._disk_full(error, tmp_dir) from None
            raise

    def _raise_first_failure(self, failure: OSError | None, tmp_dir: Path) -> None:
        """Collective: every rank learns whether a rank failed to write its part of a checkpoint, and every
        rank raises (a DiskFullError for a full disk, else a CheckpointError naming the file)."""
        report = None if failure is None else (is_disk_full(failure), str(failure), failure.filename)
        if self.accelerator.num_processes > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.accelerator.num_processes
            dist.all_gather_object(gathered, report)
        else:
            gathered = [report]
        first = next(((rank, item) for rank, item in enumerate(gathered) if item is not None), None)
        if first is None:
            return
        rank, (disk_full, message, filename) = first
        if disk_full:
            error: OSError = OSError(errno.ENOSPC, message, filename)
            if self.is_main:
                full = self._disk_full(error, tmp_dir)
                raise DiskFullError(f"rank {rank}: {full}" if rank else str(full), filename)
            raise DiskFullError(f"rank {rank}: {disk_full_message(error, filename)}: free space, then continue "
                                "with --resume auto", filename)
        if self.is_main:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise CheckpointError(f"rank {rank}: writing its part of a checkpoint failed: {message}")

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

    # -- best checkpoint, end of run (collectives: a failure on the main process is raised on every rank) ---
    def mark_best(self, step: int, metrics: dict[str, float]) -> None:
        self.on_main(lambda: checkpoint.mark_best(self.path, step, metrics))

    def read_best(self) -> dict[str, Any]:
        """checkpoints/best.json ({} when there is none), read by the main process, the same on every rank."""
        return self.on_main(lambda: checkpoint.read_best(self.path))

    def newest_checkpoint(self) -> Path | None:
        checkpoints = checkpoint.complete_checkpoints(self.path)
        return checkpoints[-1][1] if checkpoints else None

    def append_eval(self, record: dict[str, Any]) -> None:
        """One line of RUN_DIR/evals.jsonl per evaluation (step, images seen, wall-clock, metrics): the
        run's own history, for plots of quality against time and images (scripts/results.py plot)."""
        self.on_main(lambda: append_line_durably(self.path / "evals.jsonl", json.dumps(record, sort_keys=True)))

    def write_done(self, record: dict[str, Any]) -> None:
        self.on_main(lambda: write_json_atomic(self.path / DONE, {**record, "best": checkpoint.read_best(self.path)}))

    def export(self, G: Any, info: checkpoint.GeneratorInfo) -> None:
        self.on_main(lambda: checkpoint.export_generator(G, info, self.path) and None)

    def remove_done(self) -> None:
        """A run continued past its old num_steps is no longer done."""
        if self.is_main and (self.path / DONE).is_file():
            os.remove(self.path / DONE)
