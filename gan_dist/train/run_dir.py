"""The run folder: its name, what is written into it, which checkpoint a start resumes from, saving and
loading checkpoints across ranks, the best-FID policy and the `done.json` marker.

Rank rules: the main process decides (names, verification, renames) and writes the shared files; every
rank writes its own RNG state into a checkpoint and loads from it; decisions reach the other ranks by a
broadcast, errors included, so that no rank waits for one that failed.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from gan_dist.checkpoint import (
    CHECKPOINTS,
    DONE,
    TRAIN_STATE,
    CheckpointError,
    GeneratorInfo,
    apply_retention,
    clean_interrupted_writes,
    complete_checkpoints,
    export_generator,
    find_resume_checkpoint,
    load_module_state,
    load_optimizer_state,
    mark_best,
    optimizer_state_files,
    publish_checkpoint,
    read_best,
    read_json,
    read_tensors,
    set_aside_newer_checkpoints,
    sha256_of,
    step_dir_name,
    tensors_to_bytes,
    write_bytes_durably,
    write_json_atomic,
)
from gan_dist.config import Config, to_yaml
from gan_dist.train.accelerator import run_on_main
from gan_dist.train.step import EMA, NoiseSource, StepCounters

T = TypeVar("T")


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

    def load(self, record: dict[str, Any], path: Path) -> None:
        try:
            for key in ("step", "d_steps", "batches", "images_seen"):
                setattr(self.counters, key, int(record[key]))
            self.run_id = str(record["run_id"])
            self.best_fid = None if record["best_fid"] is None else float(record["best_fid"])
            self.ema_updates = int(record["ema_updates"])
            self.elapsed_s = float(record.get("elapsed_s", 0.0))
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: missing or invalid field ({type(error).__name__}: {error})") from error


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


def _rng_files(rank: int) -> tuple[str, str]:
    return f"rng_rank{rank}.safetensors", f"rng_rank{rank}.json"


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


def _restore_rng(directory: Path, rank: int, noise: NoiseSource) -> None:
    tensors_name, json_name = _rng_files(rank)
    tensors = read_tensors(directory / tensors_name)
    record = read_json(directory / json_name)
    try:
        torch.set_rng_state(tensors["torch_cpu"])
        noise.set_state(tensors["noise"])
        if "torch_cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["torch_cuda"])
        kind, position, has_gauss, cached_gaussian = record["numpy"]
        np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss,
                             cached_gaussian))
        version, state, gauss = record["python"]
        random.setstate((version, tuple(state), gauss))
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{directory / tensors_name}: unreadable RNG state ({type(error).__name__}: "
                              f"{error})") from error


class RunFolder:
    """One run's folder. Construct on every rank with the same path (see `resolve_path`)."""

    def __init__(self, path: Path, accelerator: Any) -> None:
        self.path = path
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process

    # -- collective helpers ---------------------------------------------------------------------------
    def on_main(self, fn: Callable[[], T]) -> T:
        """fn() on the main process, its result on every rank; an exception there is raised on every rank."""
        return run_on_main(self.accelerator, fn, passthrough=(CheckpointError,), what="a checkpoint operation")

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
        """Create the folder, write the user's config, tidy interrupted checkpoint writes (main)."""
        notes: list[str] = []
        if self.is_main:
            (self.path / "samples").mkdir(parents=True, exist_ok=True)
            (self.path / "config.yaml").write_text(to_yaml(config))
            notes = clean_interrupted_writes(self.path)
        self.accelerator.wait_for_everyone()
        return notes

    def write_record(self, record: dict[str, Any]) -> None:
        if self.is_main:
            write_json_atomic(self.path / "run.json", record)

    def select_resume(self, resume: str) -> Path | None:
        """The verified checkpoint to load (None: start fresh), the same on every rank. 'auto' sets damaged
        checkpoints aside and falls back; an explicit path that fails verification raises CheckpointError."""
        return self.on_main(lambda: find_resume_checkpoint(self.path, resume))

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
            for name, optimizer in (("optimizer_G", parts.opt_g), ("optimizer_D", parts.opt_d)):
                tensors, record = optimizer_state_files(optimizer)
                put(f"{name}.safetensors", tensors)
                put(f"{name}.json", record.encode())
            if parts.scaler is not None:
                put("scaler.json", json.dumps(parts.scaler.state_dict()).encode())
            put(TRAIN_STATE, (json.dumps(parts.state.to_dict(), indent=2, sort_keys=True) + "\n").encode())
            exported = parts.ema.module if parts.ema is not None else parts.G
            files.update(export_generator(exported, parts.export_info(step), tmp_dir))
            for rank in range(accelerator.num_processes):
                for name in _rng_files(rank):
                    files[name] = sha256_of(tmp_dir / name)
            publish_checkpoint(tmp_dir, final_dir, files, {**meta, "step": step,
                                                           "num_processes": accelerator.num_processes})
            apply_retention(self.path, keep_last)
            return final_dir

        path = self.on_main(write_and_publish)
        accelerator.wait_for_everyone()
        return path

    def load(self, path: Path, parts: Parts) -> None:
        """Every rank: restore the models, optimizers, scaler, counters and this rank's RNG states.

        A different number of processes than at save time continues training but is not bit-exact (the
        data stream and per-rank noise depend on the process count): said once.
        """
        load_module_state(parts.G, path / "G.safetensors")
        load_module_state(parts.D, path / "D.safetensors")
        if parts.ema is not None:
            if (path / "G_ema.safetensors").is_file():
                load_module_state(parts.ema.module, path / "G_ema.safetensors")
            else:
                parts.ema.module.load_state_dict(parts.G.state_dict())  # EMA switched on at resume
        load_optimizer_state(parts.opt_g, path / "optimizer_G.safetensors", path / "optimizer_G.json")
        load_optimizer_state(parts.opt_d, path / "optimizer_D.safetensors", path / "optimizer_D.json")
        if parts.scaler is not None and (path / "scaler.json").is_file():
            parts.scaler.load_state_dict(read_json(path / "scaler.json"))
        parts.state.load(read_json(path / TRAIN_STATE), path / TRAIN_STATE)
        if parts.ema is not None:
            parts.ema.num_updates = parts.state.ema_updates
        saved_processes = int(read_json(path / "meta.json").get("num_processes", 1))
        rank = self.accelerator.process_index
        if (path / _rng_files(rank)[0]).is_file():
            _restore_rng(path, rank, parts.noise)
        if saved_processes != self.accelerator.num_processes and self.is_main:
            print(f"warning: {path} was written by {saved_processes} process(es), this run has "
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
