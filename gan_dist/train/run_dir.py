"""The run folder: its name, what is written into it, which checkpoint a start resumes from, saving and
loading checkpoints across ranks, the best-FID policy and the `done.json` marker.

Rank rules: the main process decides (names, verification, renames) and writes the shared files; every
rank writes its own RNG state into a checkpoint and loads from it; decisions reach the other ranks by a
broadcast, errors included, so that no rank waits for one that failed.

Loading is two-phase: every rank first reads and checks everything it will load (keys, shapes, dtypes,
optimizer state, counters, its RNG states) without touching the run's objects, the ranks agree, and only
then is anything applied. So a checkpoint that does not fit leaves the run as it was, and `--resume auto`
can set it aside and load the next older one (or start fresh) with no state of the bad one left behind.

What each start used is kept: config.yaml and run.json are the latest start's (written only once its
resume succeeded), and starts.jsonl gets one line per start (time, start step, resumed_from, the full
config, the run record, the optimizer settings the config changed), never rewritten.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from gan_dist.checkpoint import (
    CHECKPOINTS,
    DONE,
    EMA_WEIGHTS,
    META,
    SCALER,
    TRAIN_STATE,
    CheckpointError,
    GeneratorInfo,
    OptimizerState,
    append_line_durably,
    apply_optimizer_state,
    apply_retention,
    check_module_state,
    clean_interrupted_writes,
    complete_checkpoints,
    export_generator,
    find_resume_checkpoint,
    mark_best,
    optimizer_state_files,
    publish_checkpoint,
    read_best,
    read_json,
    read_meta,
    read_optimizer_state,
    read_tensors,
    rng_files,
    set_aside,
    set_aside_newer_checkpoints,
    sha256_of,
    step_dir_name,
    tensors_to_bytes,
    write_bytes_durably,
    write_json_atomic,
    write_text_atomic,
)
from gan_dist.config import Config, ConfigError, to_dict, to_yaml
from gan_dist.train.accelerator import run_on_main
from gan_dist.train.step import EMA, NoiseSource, StepCounters

T = TypeVar("T")
STARTS = "starts.jsonl"  # one line per start of the run, appended


@dataclass
class TrainState:
    """What a checkpoint records besides tensors (train_state.json); the same on every rank."""

    counters: StepCounters
    run_id: str = ""
    best_fid: float | None = None
    ema_updates: int = 0
    elapsed_s: float = 0.0  # wall-clock seconds of the run up to this checkpoint (all starts, start-up included)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.counters), "run_id": self.run_id, "best_fid": self.best_fid,
                "ema_updates": self.ema_updates, "elapsed_s": self.elapsed_s}

    @staticmethod
    def parse(record: Any, path: Path) -> dict[str, Any]:
        """train_state.json's fields, type-checked (nothing assigned). Raises CheckpointError naming the file."""
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)

        if not isinstance(record, dict):
            raise CheckpointError(f"{path}: not a JSON object")
        fields: dict[str, Any] = {}
        for key in ("step", "d_steps", "batches", "images_seen", "ema_updates"):
            value = record.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CheckpointError(f"{path}: field {key!r} must be a non-negative integer, got {value!r}")
            fields[key] = value
        if not isinstance(record.get("run_id"), str):
            raise CheckpointError(f"{path}: field 'run_id' must be a string, got {record.get('run_id')!r}")
        fields["run_id"] = record["run_id"]
        best_fid = record.get("best_fid")
        if best_fid is not None and not number(best_fid):
            raise CheckpointError(f"{path}: field 'best_fid' must be null or a finite number, got {best_fid!r}")
        fields["best_fid"] = None if best_fid is None else float(best_fid)
        elapsed_s = record.get("elapsed_s", 0.0)
        if not number(elapsed_s):
            raise CheckpointError(f"{path}: field 'elapsed_s' must be a finite number, got {elapsed_s!r}")
        fields["elapsed_s"] = float(elapsed_s)
        return fields

    def apply(self, fields: dict[str, Any]) -> None:
        for key in ("step", "d_steps", "batches", "images_seen"):
            setattr(self.counters, key, fields[key])
        self.run_id, self.best_fid = fields["run_id"], fields["best_fid"]
        self.ema_updates, self.elapsed_s = fields["ema_updates"], fields["elapsed_s"]

    def load(self, record: Any, path: Path) -> None:
        self.apply(self.parse(record, path))


@dataclass
class Parts:
    """Everything a checkpoint holds, as the Trainer built it."""

    G: nn.Module  # unwrapped
    D: nn.Module
    ema: EMA | None
    opt_g: Any
    opt_d: Any
    scaler: Any  # torch.amp.GradScaler (fp16) or None
    noise: NoiseSource
    state: TrainState
    export_info: Callable[[int], GeneratorInfo]  # step -> what the exported generator declares


_rng_files = rng_files  # the names live in gan_dist.checkpoint (verification requires them)


def _rng_state(noise: NoiseSource) -> tuple[bytes, str]:
    """This process's RNG states: torch CPU and CUDA (dropout), the noise generator, numpy and python."""
    tensors = {"torch_cpu": torch.get_rng_state(), "noise": noise.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    python_version, python_state, python_gauss = random.getstate()
    record = {"numpy": [kind, int(position), int(has_gauss), float(cached_gaussian)],
              "python": [python_version, list(python_state), python_gauss]}
    return tensors_to_bytes(tensors), json.dumps(record)


@dataclass
class _RngStates:
    torch_cpu: torch.Tensor
    noise: torch.Tensor
    torch_cuda: torch.Tensor | None
    numpy: tuple[Any, ...]
    python: tuple[Any, ...]


def _read_rng(directory: Path, rank: int, noise: NoiseSource) -> _RngStates:
    """This rank's saved RNG states, each tried on a scratch generator first (nothing global is touched)."""
    tensors_name, json_name = _rng_files(rank)
    tensors = read_tensors(directory / tensors_name)
    record = read_json(directory / json_name)
    try:
        kind, position, has_gauss, cached_gaussian = record["numpy"]
        numpy_state = (kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
        version, state, gauss = record["python"]
        python_state = (version, tuple(state), gauss)
        states = _RngStates(torch_cpu=tensors["torch_cpu"], noise=tensors["noise"],
                            torch_cuda=tensors.get("torch_cuda"), numpy=numpy_state, python=python_state)
        torch.Generator().set_state(states.torch_cpu)
        torch.Generator(device=noise.device).set_state(states.noise)
        np.random.RandomState().set_state(numpy_state)
        random.Random().setstate(python_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{directory / tensors_name} / {json_name}: unreadable RNG state "
                              f"({type(error).__name__}: {error})") from error
    return states


def _apply_rng(states: _RngStates, noise: NoiseSource) -> None:
    torch.set_rng_state(states.torch_cpu)
    noise.set_state(states.noise)
    if states.torch_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states.torch_cuda)
    np.random.set_state(states.numpy)
    random.setstate(states.python)


# optimizer file -> the config keys of its settings (what a note about a changed setting names)
_SETTING_KEYS = {"optimizer_G": {"lr": "optim.lr_g", "betas": "optim.beta1/optim.beta2",
                                 "weight_decay": "optim.weight_decay", "eps": "eps"},
                 "optimizer_D": {"lr": "optim.lr_d", "betas": "optim.beta1/optim.beta2",
                                 "weight_decay": "optim.weight_decay", "eps": "eps"}}


@dataclass
class _Checkpoint:
    """Everything one rank will load from a checkpoint, read and checked, not yet applied."""

    G: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None  # None: the checkpoint has no EMA
    optimizers: dict[str, OptimizerState]
    scaler: dict[str, Any] | None
    state: dict[str, Any]
    rng: _RngStates | None  # None: this rank did not write it (a different process count)
    saved_processes: int
    notes: list[str] = field(default_factory=list)


class RunFolder:
    """One run's folder. Construct on every rank with the same path (see `resolve_path`)."""

    def __init__(self, path: Path, accelerator: Any) -> None:
        self.path = path
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.config: Config | None = None  # set by prepare; written out by write_record
        self.resume_notes: list[str] = []  # what the last load said (changed optimizer settings, ...)

    # -- collective helpers ---------------------------------------------------------------------------
    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() on the main process, its result on every rank; an exception there is raised on every rank,
        as the same type for the errors that `gan-dist train` reports in one line (a ConfigError for a
        --resume PATH that is no checkpoint, a CheckpointError for a damaged one), else as a RuntimeError."""
        return run_on_main(self.accelerator, fn, passthrough=(CheckpointError, ConfigError),
                           what="a checkpoint operation")

    def _first_error(self, error: str | None) -> str | None:
        """Collective: the first rank's error (None: every rank succeeded), the same on every rank."""
        if self.accelerator.num_processes == 1:
            return error
        gathered: list[Any] = [None] * self.accelerator.num_processes
        torch.distributed.all_gather_object(gathered, error)
        return next((f"rank {rank}: {message}" if rank else message
                     for rank, message in enumerate(gathered) if message is not None), None)

    @staticmethod
    def resolve_path(config: Config, broadcast: Callable[[Any], Any]) -> Path:
        """out_dir/run.name; --resume PATH of RUN/checkpoints/step_N continues in RUN; else a timestamped
        name chosen by the main process (broadcast). The user's config is not modified."""
        resume = config.checkpoint.resume
        if not config.run.name and resume not in ("", "auto"):
            return Path(resume).expanduser().resolve().parent.parent
        name = config.run.name or broadcast(f"{datetime.now():%Y%m%d-%H%M%S}-{config.model.name}")
        return Path(config.run.out_dir).expanduser() / name

    # -- start --------------------------------------------------------------------------------------
    def prepare(self, config: Config) -> list[str]:
        """Create the folder, tidy interrupted checkpoint writes (main). The config is written by
        write_record, once the start has resumed: a start that fails to resume leaves the folder's record
        of what was used (config.yaml, run.json, starts.jsonl) as it was."""
        self.config = config
        notes: list[str] = []
        if self.is_main:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
            notes = clean_interrupted_writes(self.path)
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
                "config": to_dict(self.config) if self.config is not None else None, "record": record,
                "resume_notes": self.resume_notes}
        append_line_durably(self.path / STARTS, json.dumps(line, sort_keys=True))

    def select_resume(self, resume: str) -> Path | None:
        """The verified checkpoint to load (None: start fresh), the same on every rank. 'auto' sets damaged
        checkpoints aside and falls back; an explicit path that fails verification raises CheckpointError."""
        return self.on_main(lambda: find_resume_checkpoint(self.path, resume))

    def resume(self, resume: str, parts: Parts) -> Path | None:
        """Every rank: select (verify) and load the checkpoint that checkpoint.resume names; returns it, or
        None to start fresh. An explicit path that fails raises CheckpointError naming the file.

        With 'auto', a checkpoint that verifies but does not load (weights that do not fit the model, bad
        optimizer state or counters, on any rank) is passed over and the next older one tried; nothing of
        it is left in `parts` (load checks everything first). Once an older one loads, the ones passed
        over are set aside with the reason, like damaged ones. If none loads, nothing is renamed and the
        start fails (CheckpointError): when every checkpoint fails, the likelier cause is this run's config
        (model.* changed) rather than damage, and a fresh start would silently throw the run away.
        """
        failed: list[tuple[Path, str]] = []
        while True:
            path = self.on_main(lambda: find_resume_checkpoint(self.path, resume, exclude=[p for p, _ in failed]))
            if path is None:
                if failed:
                    first, reason = failed[0]
                    raise CheckpointError(f"checkpoint.resume=auto: no checkpoint of {self.path} fits this run "
                                          f"(none was moved); the newest, {first.name}: {reason}")
                return None
            try:
                self.load(path, parts)
            except CheckpointError as error:
                if resume != "auto":
                    raise
                failed.append((path, str(error)))
                continue
            break

        def set_aside_unloadable() -> None:
            for bad, reason in failed:
                moved = set_aside(bad, reason)
                print(f"checkpoint {bad.name} could not be loaded and was set aside as {moved.name}: {reason}; "
                      f"resumed from the older {path.name}", file=sys.stderr, flush=True)

        self.on_main(set_aside_unloadable)
        return path

    def set_aside_newer(self, step: int) -> list[Path]:
        return set_aside_newer_checkpoints(self.path, step) if self.is_main else []

    def finished(self, num_steps: int, step: int) -> bool:
        return step >= num_steps and (self.path / DONE).is_file()

    # -- checkpoints ----------------------------------------------------------------------------------
    def save(self, step: int, parts: Parts, meta: dict[str, Any], keep_last: int) -> Path:
        """Write checkpoints/step_N on every rank (each its RNG state; the main process the rest), publish
        it atomically, apply retention. The caller has checked that everything is finite."""
        accelerator = self.accelerator
        root = self.path / CHECKPOINTS
        final_dir = root / step_dir_name(step)
        tmp_dir = root / f".tmp-{step_dir_name(step)}"

        def make_tmp() -> None:
            import shutil

            root.mkdir(parents=True, exist_ok=True)
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir)
            tmp_dir.mkdir()

        self.on_main(make_tmp)
        tensors_name, json_name = _rng_files(accelerator.process_index)
        rng_tensors, rng_json = _rng_state(parts.noise)
        write_bytes_durably(tmp_dir / tensors_name, rng_tensors)
        write_bytes_durably(tmp_dir / json_name, rng_json.encode())
        accelerator.wait_for_everyone()

        def write_and_publish() -> Path:
            files: dict[str, str] = {}

            def put(name: str, data: bytes) -> None:
                files[name] = write_bytes_durably(tmp_dir / name, data)

            put("G.safetensors", tensors_to_bytes(parts.G.state_dict()))
            put("D.safetensors", tensors_to_bytes(parts.D.state_dict()))
            if parts.ema is not None:
                put("G_ema.safetensors", tensors_to_bytes(parts.ema.module.state_dict()))
            for name, optimizer, base_lr in (("optimizer_G", parts.opt_g, self._base_lr("G")),
                                             ("optimizer_D", parts.opt_d, self._base_lr("D"))):
                # The configured lr (a schedule may have scaled the group's): what a resume compares with.
                base_lrs = None if base_lr is None else [base_lr] * len(optimizer.param_groups)
                tensors, record = optimizer_state_files(optimizer, base_lrs)
                put(f"{name}.safetensors", tensors)
                put(f"{name}.json", record.encode())
            if parts.scaler is not None:
                put(SCALER, json.dumps(parts.scaler.state_dict()).encode())
            put(TRAIN_STATE, (json.dumps(parts.state.to_dict(), indent=2, sort_keys=True) + "\n").encode())
            exported = parts.ema.module if parts.ema is not None else parts.G
            files.update(export_generator(exported, parts.export_info(step), tmp_dir))
            for rank in range(accelerator.num_processes):
                for name in _rng_files(rank):
                    files[name] = sha256_of(tmp_dir / name)
            # "ema" makes G_ema a required file: a meta.json without it would resume a copy of G as the EMA.
            publish_checkpoint(tmp_dir, final_dir, files, {**meta, "step": step, "ema": parts.ema is not None,
                                                           "num_processes": accelerator.num_processes})
            apply_retention(self.path, keep_last)
            return final_dir

        path = self.on_main(write_and_publish)
        accelerator.wait_for_everyone()
        return path

    def _base_lr(self, model: str) -> float | None:
        if self.config is None:
            return None
        return self.config.optim.lr_g if model == "G" else self.config.optim.lr_d

    def _read(self, path: Path, parts: Parts) -> _Checkpoint:
        """This rank's part of a verified checkpoint, read and checked against `parts` (nothing applied).
        Only files that meta.json lists (and the main process verified) are read."""
        meta = read_meta(path)
        listed = set(meta["files"])
        G, D = read_tensors(path / "G.safetensors"), read_tensors(path / "D.safetensors")
        check_module_state(parts.G, G, path / "G.safetensors")
        check_module_state(parts.D, D, path / "D.safetensors")
        ema = None
        if parts.ema is not None and EMA_WEIGHTS in listed:
            ema = read_tensors(path / EMA_WEIGHTS)
            check_module_state(parts.ema.module, ema, path / EMA_WEIGHTS)
        optimizers = {name: read_optimizer_state(optimizer, path / f"{name}.safetensors", path / f"{name}.json")
                      for name, optimizer in (("optimizer_G", parts.opt_g), ("optimizer_D", parts.opt_d))}
        scaler = None
        if parts.scaler is not None and SCALER in listed:
            scaler = read_json(path / SCALER)
            if not isinstance(scaler, dict) or not {"scale", "_growth_tracker"} <= set(scaler):
                raise CheckpointError(f"{path / SCALER}: not a GradScaler state")
        state = TrainState.parse(read_json(path / TRAIN_STATE), path / TRAIN_STATE)
        if meta.get("step", state["step"]) != state["step"]:
            raise CheckpointError(f"{path / TRAIN_STATE}: step {state['step']}, {META} says {meta.get('step')} "
                                  "(files of different checkpoints)")
        rank = self.accelerator.process_index
        rng = _read_rng(path, rank, parts.noise) if _rng_files(rank)[0] in listed else None
        notes = [f"optimizer setting changed on resume: {name} {key} {old} -> {new} ({_SETTING_KEYS[name][key]}; "
                 "the configured value is used)"
                 for name, loaded in optimizers.items() for key, old, new in loaded.changes]
        return _Checkpoint(G=G, D=D, ema=ema, optimizers=optimizers, scaler=scaler, state=state, rng=rng,
                           saved_processes=meta.get("num_processes", 1), notes=notes)

    def load(self, path: Path, parts: Parts) -> None:
        """Every rank: restore the models, EMA, optimizers, scaler, counters and this rank's RNG states.

        Everything is read and checked first, on every rank, and applied only when every rank succeeded:
        a CheckpointError (the same on every rank) leaves `parts` untouched. The main process prints which
        optimizer settings the config changed. A different number of processes than at save time continues
        training but is not bit-exact (the data stream and per-rank noise depend on the process count):
        said once.
        """
        try:
            loaded, error = self._read(path, parts), None
        except CheckpointError as exc:
            loaded, error = None, str(exc)
        error = self._first_error(error)
        if error is not None:
            raise CheckpointError(error)
        assert loaded is not None
        parts.G.load_state_dict(loaded.G, strict=True)
        parts.D.load_state_dict(loaded.D, strict=True)
        if parts.ema is not None:
            # Without a saved EMA (switched on at this resume) it starts from the loaded G.
            parts.ema.module.load_state_dict(loaded.ema if loaded.ema is not None else parts.G.state_dict())
        apply_optimizer_state(parts.opt_g, loaded.optimizers["optimizer_G"])
        apply_optimizer_state(parts.opt_d, loaded.optimizers["optimizer_D"])
        if loaded.scaler is not None:
            parts.scaler.load_state_dict(loaded.scaler)
        parts.state.apply(loaded.state)
        if parts.ema is not None:
            parts.ema.num_updates = parts.state.ema_updates
        if loaded.rng is not None:
            _apply_rng(loaded.rng, parts.noise)
        self.resume_notes = loaded.notes
        if self.is_main:
            for note in loaded.notes:
                print(note, flush=True)
        if loaded.saved_processes != self.accelerator.num_processes and self.is_main:
            print(f"warning: {path} was written by {loaded.saved_processes} process(es), this run has "
                  f"{self.accelerator.num_processes}: training continues, but not bit-exactly as an "
                  "uninterrupted run would (the data order and per-rank noise depend on the process count)",
                  file=sys.stderr, flush=True)

    # -- best checkpoint, end of run -------------------------------------------------------------------
    def mark_best(self, step: int, metrics: dict[str, float]) -> None:
        if self.is_main:
            mark_best(self.path, step, metrics)

    def newest_checkpoint(self) -> Path | None:
        checkpoints = complete_checkpoints(self.path)
        return checkpoints[-1][1] if checkpoints else None

    def append_eval(self, record: dict[str, Any]) -> None:
        """One line of RUN_DIR/evals.jsonl per evaluation (step, images seen, wall-clock, metrics): the
        run's own history, for plots of quality against time and images (scripts/results.py plot)."""
        if self.is_main:
            with open(self.path / "evals.jsonl", "a") as handle:
                handle.write(json.dumps(record, sort_keys=True) + "\n")

    def write_done(self, record: dict[str, Any]) -> None:
        if self.is_main:
            write_json_atomic(self.path / DONE, {**record, "best": read_best(self.path)})

    def export(self, G: nn.Module, info: GeneratorInfo) -> None:
        if self.is_main:
            export_generator(G, info, self.path)

    def remove_done(self) -> None:
        """A run continued past its old num_steps is no longer done."""
        if self.is_main and (self.path / DONE).is_file():
            os.remove(self.path / DONE)
