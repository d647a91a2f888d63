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

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self.counters), "run_id": self.run_id, "best_fid": self.best_fid,
                "ema_updates": self.ema_updates, "elapsed_s": self.elapsed_s}

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
        return fields

    def apply(self, fields: dict[str, Any]) -> None:
        for key in COUNTERS:
            setattr(self.counters, key, fields[key])
        self.run_id, self.best_fid = fields["run_id"], fields["best_fid"]
        self.ema_updates, self.elapsed_s = fields["ema_updates"], fields["elapsed_s"]
