"""Where a run is: its step counters and identity, as train_state.json records them in every checkpoint.
The same on every rank (the ranks step in lockstep)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

COUNTERS = ("step", "d_steps", "batches", "images_seen")


class ProgressError(ValueError):
    """A train_state.json whose fields do not parse; the message names the file and the field."""


@dataclass
class StepCounters:
    """Progress, identical on every rank; Python ints (reading them costs no host sync)."""

    step: int = 0  # G steps taken
    d_steps: int = 0  # D steps taken (d_steps_per_g per G step)
    batches: int = 0  # real batches consumed by this rank (the data stream resumes from here)
    images_seen: int = 0  # real images consumed by all ranks


@dataclass
class TrainState:
    """What a checkpoint records besides tensors (train_state.json)."""

    counters: StepCounters = field(default_factory=StepCounters)
    run_id: str = ""
    best_fid: float | None = None
    ema_updates: int = 0
    elapsed_s: float = 0.0  # wall-clock seconds of the run up to this checkpoint (all starts, start-up included)
    # Real images per optimizer step (per process x processes x accumulation): a run resumed on another
    # number of processes keeps it (0: not recorded, a checkpoint of an older gan_dist).
    global_batch_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.counters), "run_id": self.run_id, "best_fid": self.best_fid,
                "ema_updates": self.ema_updates, "elapsed_s": self.elapsed_s,
                "global_batch_size": self.global_batch_size}

    @staticmethod
    def parse(record: Any, path: Path) -> dict[str, Any]:
        """train_state.json's fields, type-checked (nothing assigned). Raises ProgressError naming the file."""
        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        if not isinstance(record, dict):
            raise ProgressError(f"{path}: not a JSON object")
        fields: dict[str, Any] = {}
        for key in (*COUNTERS, "ema_updates"):
            value = record.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProgressError(f"{path}: field {key!r} must be a non-negative integer, got {value!r}")
            fields[key] = value
        if not isinstance(record.get("run_id"), str):
            raise ProgressError(f"{path}: field 'run_id' must be a string, got {record.get('run_id')!r}")
        fields["run_id"] = record["run_id"]
        best_fid = record.get("best_fid")
        if best_fid is not None and not number(best_fid):
            raise ProgressError(f"{path}: field 'best_fid' must be null or a finite number, got {best_fid!r}")
        fields["best_fid"] = None if best_fid is None else float(best_fid)
        elapsed_s = record.get("elapsed_s", 0.0)
        if not number(elapsed_s):
            raise ProgressError(f"{path}: field 'elapsed_s' must be a finite number, got {elapsed_s!r}")
        fields["elapsed_s"] = float(elapsed_s)
        global_batch = record.get("global_batch_size", 0)
        if not isinstance(global_batch, int) or isinstance(global_batch, bool) or global_batch < 0:
            raise ProgressError(f"{path}: field 'global_batch_size' must be a non-negative integer, got "
                                f"{global_batch!r}")
        fields["global_batch_size"] = global_batch
        return fields

    def apply(self, fields: dict[str, Any]) -> None:
        for key in COUNTERS:
            setattr(self.counters, key, fields[key])
        self.run_id, self.best_fid = fields["run_id"], fields["best_fid"]
        self.ema_updates, self.elapsed_s = fields["ema_updates"], fields["elapsed_s"]
        self.global_batch_size = fields["global_batch_size"]


def elastic_batch(global_batch: int, num_processes: int, batch_size_per_process: int,
                  accumulation_steps: int) -> tuple[int, int]:
    """(batch per process, accumulation steps) that keep `global_batch` on `num_processes`: the configured
    accumulation with the per-process batch adapted, else the configured per-process batch with the
    accumulation adapted; ValueError when neither divides (the caller names the keys)."""
    if global_batch % (num_processes * accumulation_steps) == 0:
        return global_batch // (num_processes * accumulation_steps), accumulation_steps
    if global_batch % (num_processes * batch_size_per_process) == 0:
        return batch_size_per_process, global_batch // (num_processes * batch_size_per_process)
    raise ValueError(f"a global batch of {global_batch} does not divide among {num_processes} processes with "
                     f"{accumulation_steps} accumulation step(s) nor with {batch_size_per_process} images per process")
