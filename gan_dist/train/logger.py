"""Training statistics: summed on the device every micro-batch, read once per log interval.

`StatsAccumulator.add` costs a handful of device ops per micro-batch (stack, index_add, isfinite, where)
and never reads a value on the host. It also remembers, per statistic, the first step at which it was
not finite, so that a diverged run is caught at the next log line (or before the next checkpoint) and
reported with the step and the loss that went first. `MetricLogger` turns one read into the console
line (the objective formats its own summary), the tracker's scalars, and the divergence check.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Protocol

import torch
from torch import Tensor

NOT_SEEN = -1  # first_nonfinite_step value of a statistic that was always finite


class Diverged(RuntimeError):
    """A training statistic became inf or nan. The message names the step and the statistic."""

    def __init__(self, step: int, key: str, value: float) -> None:
        super().__init__(f"training diverged: {key} became {value} at step {step}")
        self.step, self.key, self.value = step, key, value


class StatsAccumulator:
    """Device-side sums, counts and first non-finite step of named 0-dim statistics."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: list[str] = []
        self._sums = torch.zeros(0, dtype=torch.float64, device=device)
        self._counts = torch.zeros(0, dtype=torch.float64, device=device)
        self._first_nonfinite = torch.zeros(0, dtype=torch.int64, device=device)
        self._last_value = torch.zeros(0, dtype=torch.float32, device=device)
        self._index: dict[tuple[str, ...], Tensor] = {}  # key set -> positions (device), cached
        self._pinned: list[Tensor] = []  # the host copies of those positions

    def _positions(self, keys: tuple[str, ...]) -> Tensor:
        positions = self._index.get(keys)
        if positions is None:
            new = [key for key in keys if key not in self.keys]
            if new:
                self.keys += new
                grow = len(new)
                self._sums = torch.cat([self._sums, torch.zeros(grow, dtype=torch.float64, device=self.device)])
                self._counts = torch.cat([self._counts, torch.zeros(grow, dtype=torch.float64, device=self.device)])
                self._first_nonfinite = torch.cat(
                    [self._first_nonfinite, torch.full((grow,), NOT_SEEN, dtype=torch.int64, device=self.device)])
                self._last_value = torch.cat([self._last_value, torch.zeros(grow, device=self.device)])
            host = torch.tensor([self.keys.index(key) for key in keys])
            if self.device.type == "cuda":  # pinned, so that the copy does not make the device wait
                host = host.pin_memory()
            positions = host.to(self.device, non_blocking=True)
            self._pinned.append(host)  # kept alive: its memory must not be reused before the copy ran
            self._index[keys] = positions
        return positions

    def add(self, stats: dict[str, Tensor], step: int) -> None:
        """Add one micro-batch's statistics (0-dim tensors) seen at `step` (no host sync)."""
        if not stats:
            return
        keys = tuple(stats)
        positions = self._positions(keys)
        values = torch.stack([stats[key].detach().float() for key in keys])  # (K,)
        self._sums.index_add_(0, positions, values.double())
        self._counts.index_add_(0, positions, torch.ones_like(values, dtype=torch.float64))
        self._last_value.index_copy_(0, positions, values)
        bad = ~torch.isfinite(values)
        first = self._first_nonfinite.index_select(0, positions)
        first = torch.where(bad & (first == NOT_SEEN), torch.full_like(first, step), first)
        self._first_nonfinite.index_copy_(0, positions, first)

    def read(self) -> tuple[dict[str, float], dict[str, tuple[int, float]]]:
        """(mean of each statistic since the last reset, {key: (first non-finite step, its last value)});
        one host sync. Statistics not seen since the reset are left out."""
        if not self.keys:
            return {}, {}
        sums, counts, first, last = torch.stack(
            [self._sums, self._counts, self._first_nonfinite.double(), self._last_value.double()]).tolist()
        means = {key: s / c for key, s, c in zip(self.keys, sums, counts, strict=True) if c > 0}
        nonfinite = {key: (int(f), v) for key, f, v in zip(self.keys, first, last, strict=True) if f != NOT_SEEN}
        return means, nonfinite

    def means_tensor(self) -> tuple[list[str], Tensor]:
        """(keys, (2, K) float64 on the device: the interval's means and counts), for a cross-rank reduce
        before reading."""
        return list(self.keys), torch.stack([self._sums / self._counts.clamp(min=1), self._counts])

    def reset(self) -> None:
        """Start a new interval (the non-finite record is kept for the whole run)."""
        self._sums.zero_()
        self._counts.zero_()


class Tracker(Protocol):
    def log_scalars(self, values: dict[str, float], step: int) -> None: ...


def check_finite(nonfinite: dict[str, tuple[int, float]]) -> None:
    """Raise Diverged for the statistic that went non-finite first (ties: alphabetical)."""
    if nonfinite:
        key, (step, value) = min(nonfinite.items(), key=lambda item: (item[1][0], item[0]))
        raise Diverged(step, key, value)


class MetricLogger:
    """The log cadence's work: reduce the interval's means over ranks, check them, print, track."""

    def __init__(self, accelerator: Any, tracker: Tracker, describe: Any, is_main_process: bool,
                 progress: Any = None) -> None:
        self.accelerator = accelerator
        self.tracker = tracker
        self.describe = describe  # the objective's console summary: values -> str
        self.is_main_process = is_main_process
        self.progress = progress
        self.stats = StatsAccumulator(accelerator.device)
        self._interval_start = time.perf_counter()
        self._images_at_interval_start: int | None = None

    def add(self, stats: dict[str, Tensor], step: int) -> None:
        self.stats.add(stats, step)

    def check_finite(self) -> None:
        """Raise Diverged, on every rank, if any statistic on any rank went non-finite so far (collective:
        every rank runs it; the first non-finite step of each statistic is reduced over ranks; one host sync)."""
        stats = self.stats
        if not stats.keys:
            return
        first = stats._first_nonfinite
        if self.accelerator.num_processes > 1:
            never = torch.iinfo(torch.int64).max
            first = torch.where(first == NOT_SEEN, torch.full_like(first, never), first)
            torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
            first = torch.where(first == never, torch.full_like(first, NOT_SEEN), first)
        first_steps, last_values = torch.stack([first.double(), stats._last_value.double()]).tolist()
        check_finite({key: (int(step), value) for key, step, value in zip(stats.keys, first_steps, last_values,
                                                                           strict=True) if step != NOT_SEEN})

    def log(self, step: int, images_seen: int, extra: dict[str, float],
            stop_requested: bool = False) -> tuple[dict[str, float], bool]:
        """Collective (every rank): mean of each statistic over the interval and the ranks; checks finiteness,
        prints the console line and writes `train/<key>` scalars on the main process. Returns the values and
        whether any rank was asked to stop (its flag travels in the same all-reduce as the means, so the
        stop vote costs no collective of its own: docs/design-notes.md, "Preemption")."""
        self.check_finite()
        keys, means_and_counts = self.stats.means_tensor()
        flag = torch.tensor([[1.0 if stop_requested else 0.0], [1.0]], dtype=torch.float64)  # (2, 1)
        means_and_counts = torch.cat([means_and_counts, flag.to(means_and_counts.device, non_blocking=True)], dim=1)
        if self.accelerator.num_processes > 1:
            means_and_counts = self.accelerator.reduce(means_and_counts, "mean")
        means, counts = means_and_counts.tolist()
        stop_anywhere = means.pop() > 0  # the mean of 0/1 flags is > 0 iff a rank was asked to stop
        counts.pop()
        values: dict[str, float] = {key: mean for key, mean, count in zip(keys, means, counts, strict=True)
                                    if count > 0}
        now = time.perf_counter()
        if self._images_at_interval_start is not None:
            elapsed_s = max(now - self._interval_start, 1e-9)
            values["images_per_s"] = (images_seen - self._images_at_interval_start) / elapsed_s
        self._interval_start, self._images_at_interval_start = now, images_seen
        values.update({"images_seen": images_seen, **extra})
        self.tracker.log_scalars({f"train/{key}": value for key, value in values.items()
                                  if isinstance(value, (int, float)) and math.isfinite(value)}, step)
        rate = f" | {values['images_per_s']:.0f} img/s" if "images_per_s" in values else ""
        self.print(f"{step} {self.describe(values)}{rate}")
        self.stats.reset()
        return values, stop_anywhere

    def start_interval(self, images_seen: int) -> None:
        """Restart the img/s clock (after start-up, evaluation or a checkpoint: time not spent training)."""
        self._interval_start, self._images_at_interval_start = time.perf_counter(), images_seen

    def print(self, line: str) -> None:
        if not self.is_main_process:
            return
        if self.progress is not None:
            self.progress.write(line)
        else:
            print(line, flush=True)
            sys.stdout.flush()
