"""Checkpoints: atomic save, retention, resume discovery, generator export and `gan-dist sample`.

Layout of a run folder:

    RUN_DIR/config.yaml                      the fully resolved config of the run
    RUN_DIR/checkpoints/step_00000500/       accelerate.save_state (G, D, both optimizers, scaler, RNG
                                             states per process, registered TrainState and G_ema)
                                             + generator.safetensors + generator.yaml + meta.json
    RUN_DIR/checkpoints/.tmp-step_00000500/  a checkpoint being written: never resumed from
    RUN_DIR/checkpoints/best.json            which step had the best FID (kept by retention)
    RUN_DIR/generator.safetensors            exported at the end, with generator.yaml
    RUN_DIR/done.json                        written when the run reached train.num_steps

A checkpoint folder only ever appears under its final name by `os.replace` of a completely written
temp folder, so a kill at any moment leaves either the previous checkpoints or the new one complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from gan_dist.config import Config, ConfigError, config_from_yaml, to_yaml

CHECKPOINTS = "checkpoints"
GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_CONFIG = "generator.yaml"
META = "meta.json"
BEST = "best.json"
DONE = "done.json"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp_path = path.with_name(f".{path.name}.tmp")
    with open(tmp_path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp_path, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    _write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, oldest first. Temp folders are never listed."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_resume_checkpoint(run_dir: Path, resume: str) -> Path | None:
    """checkpoint.resume -> a folder to load: '' none, 'auto' the newest complete one (or none), else a path."""
    if not resume:
        return None
    if resume == "auto":
        checkpoints = complete_checkpoints(run_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume).expanduser()
    if not (path / META).is_file():
        raise ConfigError(
            f"checkpoint.resume={resume}: {path} is not a complete checkpoint folder (no {META}); "
            f"use 'auto' or one of RUN_DIR/{CHECKPOINTS}/step_*")
    return path


def export_generator(G: nn.Module, config: Config, out_dir: Path, step: int, is_ema: bool) -> None:
    """generator.safetensors (+ generator.yaml with the config) for sampling without the trainer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in G.state_dict().items()}
    tmp_path = out_dir / f".{GENERATOR_WEIGHTS}.tmp"
    save_file(state, str(tmp_path), metadata={"step": str(step), "ema": str(is_ema), "model": config.model.name})
    os.replace(tmp_path, out_dir / GENERATOR_WEIGHTS)
    _write_text_atomic(out_dir / GENERATOR_CONFIG, to_yaml(config))


def save_checkpoint(accelerator: Any, run_dir: Path, step: int, export: tuple[nn.Module, bool],
                    config: Config, meta: dict[str, Any]) -> Path:
    """Write checkpoints/step_N atomically. Called on EVERY rank (save_state writes per-rank RNG states).

    export: (the generator to export, whether it is the EMA). meta: numbers recorded in meta.json.
    """
    root = Path(run_dir) / CHECKPOINTS
    final_dir = root / step_dir_name(step)
    tmp_dir = root / f".tmp-{step_dir_name(step)}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp_dir.exists():  # left over from a kill during an earlier write of this step
            shutil.rmtree(tmp_dir)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp_dir))
    if accelerator.is_main_process:
        G, is_ema = export
        export_generator(G, config, tmp_dir, step, is_ema)
        write_json_atomic(tmp_dir / META, {**meta, "step": step, "num_processes": accelerator.num_processes})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # Checkpoints live on a filesystem every node sees (the model files come from the main process).
        if final_dir.exists():
            shutil.rmtree(final_dir)  # an older checkpoint of the same step (re-run after a resume)
        os.replace(tmp_dir, final_dir)
    accelerator.wait_for_everyone()
    return final_dir


def set_aside_newer_checkpoints(run_dir: Path, resumed_step: int) -> list[Path]:
    """Resuming an older checkpoint explicitly starts a new trajectory: rename the newer checkpoints of the
    abandoned one to `abandoned-...` (kept, never resumed by 'auto' nor deleted by retention). Main only."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for step, path in complete_checkpoints(run_dir):
        if step > resumed_step:
            target = path.with_name(f"abandoned-{stamp}-{path.name}")
            os.replace(path, target)
            moved.append(target)
    return moved


def apply_retention(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, never the best-FID one. Main process only."""
    checkpoints = complete_checkpoints(run_dir)
    best_step = read_best(run_dir).get("step")
    removed = []
    for step, path in checkpoints[:-keep_last] if keep_last > 0 else checkpoints:
        if step == best_step:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def read_best(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CHECKPOINTS / BEST
    return json.loads(path.read_text()) if path.is_file() else {}


def mark_best(run_dir: Path, step: int, metrics: dict[str, float]) -> None:
    write_json_atomic(Path(run_dir) / CHECKPOINTS / BEST,
                      {"step": step, "checkpoint": step_dir_name(step), "metrics": metrics})


def _generator_source(run_dir: str | os.PathLike | None, checkpoint: str | os.PathLike | None) -> Path:
    """The generator.safetensors that `sample`/`eval` should load."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if path.is_dir():
            path = path / GENERATOR_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no {GENERATOR_WEIGHTS} there")
        return path
    run_path = Path(str(run_dir)).expanduser()
    if (run_path / GENERATOR_WEIGHTS).is_file():
        return run_path / GENERATOR_WEIGHTS
    checkpoints = complete_checkpoints(run_path)
    if not checkpoints:
        raise FileNotFoundError(f"--run {run_dir}: no {GENERATOR_WEIGHTS} and no complete checkpoint in it")
    return checkpoints[-1][1] / GENERATOR_WEIGHTS


def load_generator(run_dir: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                   use_ema: bool = True, map_location: str | torch.device = "cpu") -> tuple[nn.Module, Config, int]:
    """(G in eval mode, its config, training step) from a run folder or a checkpoint.

    The exported weights are G_ema when the run trained one; use_ema=False loads the raw G from the
    checkpoint's accelerate state instead.
    """
    from gan_dist.models import build_models

    weights_path = _generator_source(run_dir, checkpoint)
    config = config_from_yaml((weights_path.parent / GENERATOR_CONFIG).read_text())
    G, _ = build_models(config.model)
    from safetensors import safe_open

    with safe_open(str(weights_path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    state = load_file(str(weights_path), device=str(map_location))
    raw_weights = weights_path.parent / "model.safetensors"  # accelerate's name for the first model (G)
    if not use_ema and metadata.get("ema") == "True":
        if not raw_weights.is_file():
            raise FileNotFoundError(f"{weights_path.parent}: the raw G is only kept in checkpoints; "
                                    f"pass a checkpoint folder or drop --no-ema")
        state = load_file(str(raw_weights), device=str(map_location))
    G.load_state_dict(state)
    G.to(map_location).eval()
    return G, config, int(metadata.get("step", -1))


@torch.no_grad()
def generate(G: nn.Module, num_images: int, seed: int, batch_size: int = 500,
             device: str | torch.device = "cpu") -> torch.Tensor:
    """num_images images (N, 1, 28, 28) in [-1, 1]; image i depends only on (seed, i), not on batch size."""
    latent_dim = G.latent_dim
    noise_rng = torch.Generator().manual_seed(seed)
    z = torch.randn(num_images, latent_dim, generator=noise_rng)  # (N, latent_dim)
    return torch.cat([G(z[i:i + batch_size].to(device)).float().cpu() for i in range(0, num_images, batch_size)])


def sample_command(run_dir: str | None, checkpoint: str | None, num_images: int, out_png: str,
                   out_npz: str | None, seed: int, use_ema: bool) -> None:
    """`gan-dist sample`: a grid PNG and optionally the raw uint8 images (N, 28, 28) in an .npz."""
    import numpy as np

    from gan_dist.tracking import images_to_uint8, save_grid_png

    G, config, step = load_generator(run_dir, checkpoint, use_ema=use_ema)
    images = generate(G, num_images, seed)  # (N, 1, 28, 28)
    save_grid_png(images, Path(out_png))
    print(f"wrote {out_png}: {num_images} samples of {config.model.name} at step {step}")
    if out_npz:
        np.savez_compressed(out_npz, images=images_to_uint8(images))
        print(f"wrote {out_npz}: images uint8 (N, 28, 28)")
