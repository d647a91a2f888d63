"""Checkpoints that cannot run code: safetensors and JSON only, verified before use, replaced atomically.

Layout of a run folder:

    RUN_DIR/config.yaml, RUN_DIR/run.json      the user's config; the resolved run record
    RUN_DIR/checkpoints/step_00000500/         one complete checkpoint:
        G.safetensors, D.safetensors           the models' state dicts (unwrapped)
        G_ema.safetensors                      the EMA of G (when train.ema_decay > 0)
        optimizer_G.safetensors + .json        Adam's tensors, and its param groups / scalars
        optimizer_D.safetensors + .json
        scaler.json                            fp16 GradScaler state (when fp16)
        rng_rank<R>.safetensors + .json        per-process RNG states (torch CPU/CUDA, the noise generator,
                                               numpy, python): each rank writes its own
        train_state.json                       step, images seen, run id, best FID, ...
        generator.safetensors + generator.yaml the exported generator (G_ema when trained), for sharing
        meta.json                              the completion marker, written last: size and sha256 of
                                               every file above
    RUN_DIR/checkpoints/.tmp-step_*            a checkpoint being written: never resumed from, removed at start
    RUN_DIR/checkpoints/damaged-*-step_*       a checkpoint that failed verification, set aside (kept)
    RUN_DIR/checkpoints/abandoned-*-step_*     newer checkpoints of a trajectory abandoned by an explicit resume
    RUN_DIR/checkpoints/best.json              which step had the best FID (kept by retention)
    RUN_DIR/generator.safetensors + .yaml      exported at the end
    RUN_DIR/done.json                          written when the run reached train.num_steps

Why not accelerate's save_state/load_state: they pickle registered objects and RNG states and load them
with `torch.load(weights_only=False)`, so a crafted file in a shared run folder runs code on resume, and
a failed RNG load is only logged (DESIGN.md). Nothing here is ever unpickled.

Atomicity: files are written into the temp folder and fsynced, the folder is fsynced, meta.json (the
sizes and sha256 of every file) is written last, and the folder appears under its final name by a
rename. Replacing an existing step first renames the old folder to `.old-step_N` (restored at the next
start if a kill came between the two renames). `--resume auto` verifies every file against meta.json and
falls back to the next older checkpoint, setting a damaged one aside with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from gan_dist.config import MAX_CLASSES, MAX_IMAGE_SIZE, ConfigError, ModelConfig, validate_model

CHECKPOINTS = "checkpoints"
GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_RECORD = "generator.yaml"
META = "meta.json"
BEST = "best.json"
DONE = "done.json"
TRAIN_STATE = "train_state.json"
FORMAT_VERSION = 2  # 1: accelerate.save_state (pickles); 2: this module's safetensors + JSON
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, damaged or unreadable. The message names the file."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


# -- writing files durably ------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX: the directory entry is in the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> str:
    """Write `data` to `path` (no temp name: callers write into a temp folder), fsync; returns its sha256."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return hashlib.sha256(data).hexdigest()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp_path = path.with_name(f".{path.name}.tmp")
    write_bytes_durably(tmp_path, text.encode())
    os.replace(tmp_path, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    _write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- safe (de)serialisation of state dicts ---------------------------------------------------------------

def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of CPU, contiguous copies of `tensors`."""
    return save_safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (CPU). Raises CheckpointError naming the file."""
    try:
        return load_safetensors_bytes(path.read_bytes())
    except Exception as error:  # safetensors raises its own error types for bad headers/truncation
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from error


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({type(error).__name__}: {error})") from error


def optimizer_state_files(optimizer: torch.optim.Optimizer) -> tuple[bytes, str]:
    """(safetensors bytes of the per-parameter tensors, JSON of the param groups and non-tensor state).

    torch.optim state dicts are {"state": {index: {name: value}}, "param_groups": [...]}; tensors go to
    safetensors under "state.<index>.<name>", everything else (numbers, booleans, lists) to JSON.
    """
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{key: list(value) if isinstance(value, tuple) else value for key, value in group.items()}
              for group in state_dict["param_groups"]]
    record = {"param_groups": groups, "scalar_state": scalars}
    return tensors_to_bytes(tensors), json.dumps(record, sort_keys=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors_path: Path, json_path: Path) -> None:
    """Inverse of `optimizer_state_files`: the per-parameter state (Adam's moments and step counters) comes
    from the checkpoint, the hyperparameters (lr, betas, weight decay, kernels) stay those the optimizer
    was built with from the run's config, so a resumed run can change them (torch's load_state_dict would
    silently restore the saved ones). Raises CheckpointError naming the file on any mismatch."""
    configured = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    tensors = read_tensors(tensors_path)
    record = read_json(json_path)
    try:
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
        for index, values in record["scalar_state"].items():
            state.setdefault(int(index), {}).update(values)
        groups = [{key: tuple(value) if key == "betas" else value for key, value in group.items()}
                  for group in record["param_groups"]]
        if len(groups) != len(configured):
            raise ValueError(f"{len(groups)} parameter groups saved, {len(configured)} in this run")
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        for group, hyperparameters in zip(optimizer.param_groups, configured, strict=True):
            group.update(hyperparameters)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{tensors_path} / {json_path}: optimizer state does not fit this run "
                              f"({type(error).__name__}: {error})") from error


def load_module_state(module: nn.Module, path: Path) -> None:
    try:
        module.load_state_dict(read_tensors(path), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit this model (was model.* changed?): "
                              f"{str(error).splitlines()[0]}") from error


# -- the exported generator ------------------------------------------------------------------------------

@dataclass
class GeneratorInfo:
    """What an exported generator declares about itself (generator.yaml): enough to build G, nothing else."""

    model: ModelConfig
    dataset: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 0 = unconditional
    step: int
    is_ema: bool


def generator_record_yaml(info: GeneratorInfo) -> str:
    from omegaconf import OmegaConf

    record = {"model": dataclasses.asdict(info.model), "dataset": info.dataset,
              "image_shape": list(info.image_shape), "num_classes": info.num_classes, "step": info.step,
              "is_ema": info.is_ema}
    return OmegaConf.to_yaml(OmegaConf.create(record))


def read_generator_record(path: Path) -> GeneratorInfo:
    """Parse and validate a generator.yaml: only the model section and the dataset identity are read,
    checked like any config (known names, bounded sizes). Unknown sections (e.g. a `data:` with URLs in a
    shared file) are ignored, never used. Raises ConfigError naming the file and key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    origin = str(path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:
        raise ConfigError(f"{origin}: not valid YAML: {error}") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ConfigError(f"{origin}: no 'model' section")
    try:
        schema = OmegaConf.structured(ModelConfig)
        OmegaConf.set_struct(schema, True)
        model: ModelConfig = OmegaConf.to_object(OmegaConf.merge(schema, raw["model"]))  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        raise ConfigError(f"{origin}: key 'model.{getattr(error, 'key', '?')}': {str(error).splitlines()[0]}") from error
    validate_model(model, origin)
    dataset = raw.get("dataset")
    shape = raw.get("image_shape")
    num_classes = raw.get("num_classes", 0)
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"{origin}: key 'dataset' must name the dataset the generator was trained on")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(isinstance(v, int) for v in shape)
            or shape[0] not in (1, 3) or not all(1 <= v <= MAX_IMAGE_SIZE for v in shape[1:])):
        raise ConfigError(f"{origin}: key 'image_shape' must be [C, H, W] with C 1 or 3 and sizes in "
                          f"[1, {MAX_IMAGE_SIZE}], got {shape!r}")
    if not isinstance(num_classes, int) or not 0 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"{origin}: key 'num_classes' must be an integer in [0, {MAX_CLASSES}]")
    return GeneratorInfo(model=model, dataset=dataset, image_shape=(shape[0], shape[1], shape[2]),
                         num_classes=num_classes, step=int(raw.get("step", -1)), is_ema=bool(raw.get("is_ema", False)))


def export_generator(G: nn.Module, info: GeneratorInfo, out_dir: Path) -> dict[str, str]:
    """generator.safetensors + generator.yaml into out_dir (each atomically); returns {name: sha256}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = tensors_to_bytes(G.state_dict(), metadata={"step": str(info.step), "ema": str(info.is_ema)})
    digests = {}
    tmp = out_dir / f".{GENERATOR_WEIGHTS}.tmp"
    digests[GENERATOR_WEIGHTS] = write_bytes_durably(tmp, weights)
    os.replace(tmp, out_dir / GENERATOR_WEIGHTS)
    text = generator_record_yaml(info)
    _write_text_atomic(out_dir / GENERATOR_RECORD, text)
    digests[GENERATOR_RECORD] = hashlib.sha256(text.encode()).hexdigest()
    return digests


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
                   use_ema: bool = True, map_location: str | torch.device = "cpu") -> tuple[nn.Module, GeneratorInfo]:
    """(G in eval mode, what it declares) from a run folder, a checkpoint folder or a generator.safetensors.

    Only generator.yaml's model section and dataset identity are read (validated, bounded); the weights are
    safetensors. The exported weights are G_ema when the run trained one; use_ema=False loads the raw G
    from a checkpoint folder instead.
    """
    from gan_dist.models import build_generator

    weights_path = _generator_source(run_dir, checkpoint)
    record_path = weights_path.with_name(GENERATOR_RECORD)
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: missing (it says which model the weights belong to)")
    info = read_generator_record(record_path)
    G = build_generator(info.model, info.image_shape, info.num_classes)
    if not use_ema and info.is_ema:
        raw_weights = weights_path.parent / "G.safetensors"
        if not raw_weights.is_file():
            raise FileNotFoundError(f"{weights_path.parent}: the raw G is only kept in checkpoints; "
                                    f"pass a checkpoint folder or drop --no-ema")
        weights_path = raw_weights
        info = dataclasses.replace(info, is_ema=False)
    try:
        load_module_state(G, weights_path)
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    G.to(map_location).eval()
    return G, info


# -- checkpoint folders ---------------------------------------------------------------------------------

def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint with a completion marker, oldest first. Temp, damaged and
    abandoned folders are never listed."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / META).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file listed in meta.json (size, sha256); returns meta. Raises CheckpointError naming
    the first problem (missing marker, older format, missing/truncated/modified file)."""
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: no {META} (an incomplete checkpoint)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION or not isinstance(
            meta.get("files"), dict):
        raise CheckpointError(f"{meta_path}: written by an older gan_dist (no file checksums); it cannot be "
                              "verified or resumed safely")
    for name, entry in sorted(meta["files"].items()):
        file_path = path / name
        if "/" in name or name.startswith("."):
            raise CheckpointError(f"{meta_path}: lists an invalid file name {name!r}")
        if not file_path.is_file():
            raise CheckpointError(f"{file_path}: missing")
        size = file_path.stat().st_size
        if size != entry.get("size_bytes"):
            raise CheckpointError(f"{file_path}: {size} bytes, {META} records {entry.get('size_bytes')} "
                                  "(truncated or replaced)")
        if sha256_of(file_path) != entry.get("sha256"):
            raise CheckpointError(f"{file_path}: sha256 differs from {META} (modified or corrupt)")
    return meta


def set_aside(path: Path, reason: str, prefix: str = "damaged") -> Path:
    """Rename a checkpoint out of the resume/retention namespace, keeping it for inspection."""
    target = path.with_name(f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{path.name}")
    os.replace(path, target)
    _fsync_dir(path.parent)
    (target / "SET_ASIDE.txt").write_text(reason + "\n")
    return target


def find_resume_checkpoint(run_dir: Path, resume: str,
                           report: Callable[[str], None] | None = None) -> Path | None:
    """checkpoint.resume -> a verified folder to load: '' none; 'auto' the newest checkpoint that verifies
    (damaged newer ones are set aside with the reason, and the next older one is tried); else that path,
    which must verify (CheckpointError naming the file otherwise). Main process only (it renames)."""
    report = report or (lambda message: print(message, file=sys.stderr, flush=True))
    if not resume:
        return None
    if resume == "auto":
        for step, path in reversed(complete_checkpoints(run_dir)):
            try:
                verify_checkpoint(path)
                return path
            except CheckpointError as error:
                moved = set_aside(path, str(error))
                report(f"checkpoint at step {step} is damaged and was set aside as {moved.name}: {error}; "
                       "trying the next older one")
        return None
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise ConfigError(f"checkpoint.resume={resume}: {path} is not a checkpoint folder; use 'auto' or one of "
                          f"RUN_DIR/{CHECKPOINTS}/step_*")
    verify_checkpoint(path)
    return path


def clean_interrupted_writes(run_dir: Path) -> list[str]:
    """At start (main process): remove `.tmp-*` folders of killed writes; for `.old-step_N` (a kill between
    the two renames of a replacement) restore it when step_N is missing, else remove it."""
    root = Path(run_dir) / CHECKPOINTS
    notes: list[str] = []
    if not root.is_dir():
        return notes
    for child in sorted(root.iterdir()):
        if child.name.startswith(".tmp-"):
            shutil.rmtree(child, ignore_errors=True)
            notes.append(f"removed the unfinished checkpoint write {child.name}")
        elif child.name.startswith(".old-"):
            final = root / child.name[len(".old-"):]
            if final.exists():
                shutil.rmtree(child, ignore_errors=True)
            else:
                os.replace(child, final)
                notes.append(f"restored {final.name} (a replacement of it was interrupted)")
    _fsync_dir(root)
    return notes


def publish_checkpoint(tmp_dir: Path, final_dir: Path, files: dict[str, str], meta: dict[str, Any]) -> None:
    """Main process, once every file is in tmp_dir and fsynced: write meta.json (sizes + sha256 of every
    file), fsync the folder, and rename it into place (moving an existing step aside first)."""
    entries = {name: {"sha256": digest, "size_bytes": (tmp_dir / name).stat().st_size}
               for name, digest in sorted(files.items())}
    write_bytes_durably(tmp_dir / META, (json.dumps(
        {**meta, "format_version": FORMAT_VERSION, "files": entries}, indent=2, sort_keys=True) + "\n").encode())
    _fsync_dir(tmp_dir)
    old_dir = final_dir.with_name(f".old-{final_dir.name}")
    if final_dir.exists():
        if old_dir.exists():
            shutil.rmtree(old_dir)
        os.replace(final_dir, old_dir)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old_dir.exists():
        shutil.rmtree(old_dir)


def set_aside_newer_checkpoints(run_dir: Path, resumed_step: int) -> list[Path]:
    """Resuming an older checkpoint explicitly starts a new trajectory: rename the newer checkpoints of the
    abandoned one to `abandoned-...` (kept, never resumed by 'auto' nor deleted by retention). Main only."""
    moved = []
    for step, path in complete_checkpoints(run_dir):
        if step > resumed_step:
            moved.append(set_aside(path, f"abandoned: the run was resumed explicitly from step {resumed_step}",
                                   prefix="abandoned"))
    return moved


def apply_retention(run_dir: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, never the best-FID one. Main process only.

    Only called after a new checkpoint was published, and every published checkpoint is finite (the
    trainer checks before saving), so the newest finite checkpoint always survives."""
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
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def mark_best(run_dir: Path, step: int, metrics: dict[str, float]) -> None:
    write_json_atomic(Path(run_dir) / CHECKPOINTS / BEST,
                      {"step": step, "checkpoint": step_dir_name(step), "metrics": metrics})
