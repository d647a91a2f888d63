"""Experiment tracking: the only module that imports wandb.

The main process gets a `Tracker` backed by Accelerate's tracker API (wandb or tensorboard); every
other rank gets a `NullTracker`, so the training loop never asks which rank it is on before logging.
wandb runs offline when no API key is configured and never prompts; the run id is chosen here and
stored in every checkpoint so a resumed (or requeued) job continues the same wandb run.
"""

from __future__ import annotations

import netrc
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from gan_dist.config import Config, LogConfig, to_dict


def new_run_id() -> str:
    """An 8-character id, the same format wandb uses, chosen once per training run."""
    return uuid.uuid4().hex[:8]


def wandb_api_key_configured() -> bool:
    """True when wandb could log in without prompting: WANDB_API_KEY, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(log: LogConfig) -> str:
    """online | offline | disabled. WANDB_MODE in the environment wins over log.wandb_mode=auto."""
    if log.wandb_mode != "auto":
        return log.wandb_mode
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    if env_mode == "dryrun":
        return "offline"
    return "online" if wandb_api_key_configured() else "offline"


class NullTracker:
    """What every rank but the main one gets: accepts everything, writes nothing."""

    run_id: str | None = None
    description = "none"

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        pass

    def log_image(self, name: str, grid: np.ndarray, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class Tracker(NullTracker):
    """Accelerate's trackers (wandb or tensorboard) on the main process."""

    def __init__(self, accelerator: Any, config: Config, run_dir: Path, run_id: str) -> None:
        self.accelerator = accelerator
        self.kind = config.log.tracker
        self.run_id = run_id
        self.run_dir = run_dir
        self.description = self.kind
        self.failed: str | None = None  # why logging stopped (see _guarded)
        init_kwargs: dict[str, Any] = {}
        if self.kind == "wandb":
            mode = resolve_wandb_mode(config.log)
            self.description = f"wandb ({mode}, run id {run_id})"
            self.wandb_mode = mode
            # One wandb run per training run, however many nodes or requeues: the id is ours.
            init_kwargs["wandb"] = {
                "id": run_id,
                "resume": "allow",
                "name": run_dir.name,
                "dir": str(run_dir),
                "mode": mode,
                "entity": config.log.entity,
                # Never block on a login prompt (CI has no stdin; offline needs no login).
                "settings": _wandb_settings(),
            }
        project = config.log.project
        accelerator.init_trackers(project, config=_flatten(to_dict(config)), init_kwargs=init_kwargs)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        if self.failed is None:
            self._guarded(lambda: self.accelerator.log(values, step=step))

    def log_image(self, name: str, grid: np.ndarray, step: int) -> None:
        if self.failed is not None:
            return
        if self.kind == "wandb":
            import wandb

            self._guarded(lambda: self.accelerator.log({name: wandb.Image(grid, caption=f"step {step}")}, step=step))
        elif self.kind == "tensorboard":
            writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
            self._guarded(lambda: writer.add_image(name, grid, global_step=step,
                                                   dataformats="HW" if grid.ndim == 2 else "HWC"))

    def _guarded(self, write: Any) -> None:
        """A tracker that breaks must not take the training down with it: under SLURM, scancel and
        preemption SIGTERM every process of the step, wandb's service among them, and the next log call
        raises (ConnectionResetError) while the trainer still has a checkpoint to write. Say so once and
        stop logging; the run folder (checkpoints, samples, eval.jsonl) still has everything."""
        try:
            write()
        except Exception as error:
            self.failed = f"{type(error).__name__}: {error}"
            print(f"warning: the {self.kind} tracker failed ({self.failed}); training goes on without it "
                  "(checkpoints, samples/ and eval.jsonl in the run folder are unaffected)", file=sys.stderr,
                  flush=True)

    def finish(self) -> None:
        """Called after accelerator.end_training() (which finishes the tracker runs)."""
        if self.kind == "wandb" and self.wandb_mode == "offline":
            wandb_dir = self.run_dir / "wandb"
            print(f"wandb ran offline; upload with: wandb sync --include-offline {wandb_dir}/offline-run-*")


def _wandb_settings() -> Any:
    import wandb

    return wandb.Settings(silent=True, console="off")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'num_steps': 4}} -> {'train.num_steps': 4}: trackers' config panels want flat keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def make_tracker(accelerator: Any, config: Config, run_dir: Path, run_id: str) -> NullTracker:
    """A real tracker on the main process when log.tracker is not 'none'; a NullTracker elsewhere."""
    if not accelerator.is_main_process or config.log.tracker == "none":
        return NullTracker()
    return Tracker(accelerator, config, run_dir, run_id)
