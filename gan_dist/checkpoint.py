"""Checkpoints that cannot run code: safetensors and JSON only, verified before use, replaced atomically.

The file formats and the handful of operations on them: write (`write_rank_files`, `write_checkpoint`),
read verified (`verify_checkpoint`, `read_checkpoint`, `apply_checkpoint`), select for resume
(`select_resume`), retention, export (`export_generator`, `load_generator`) and the best-FID mark. The run
folder's layout, atomicity and what verification checks: docs/design-notes.md ("Checkpoints without pickle").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from gan_dist.config import MAX_CLASSES, MAX_IMAGE_SIZE, ConfigError, ModelConfig
from gan_dist.configure import validate_model
from gan_dist.files import fsync_dir, sha256_file, write_bytes_durably, write_json_atomic, write_text_atomic
from gan_dist.models.build import build_generator
from gan_dist.progress import ProgressError, TrainState

CHECKPOINTS = "checkpoints"
GENERATOR_WEIGHTS = "generator.safetensors"
GENERATOR_RECORD = "generator.yaml"
# An exported folder (`gan-dist export`, the Hugging Face Hub's model layout): the weights, the same record
# in JSON (plus what the model card says), the card and a sample grid.
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.json"
META = "meta.json"
BEST = "best.json"
DONE = "done.json"
TRAIN_STATE = "train_state.json"
EMA_WEIGHTS = "G_ema.safetensors"
SCALER = "scaler.json"
# Every file RunFolder.load reads from any checkpoint, besides the per-rank RNG states and G_ema (required
# when meta.json says the run had an EMA): verification refuses a meta.json that does not list them all.
REQUIRED_FILES = ("G.safetensors", "D.safetensors", "optimizer_G.safetensors", "optimizer_G.json",
                  "optimizer_D.safetensors", "optimizer_D.json", TRAIN_STATE)
# The optimizer settings a resumed run takes from its config rather than from the checkpoint.
OPTIMIZER_SETTINGS = ("lr", "betas", "weight_decay", "eps")
FORMAT_VERSION = 2  # 1: accelerate.save_state (pickles); 2: this module's safetensors + JSON
_STEP_DIR = re.compile(r"^step_(\d{8})$")
MAX_HEADER_BYTES = 100 << 20  # a safetensors header (JSON) longer than this is refused unread
# A shared generator record may not declare more (parameters and buffers): 4 GiB of float32, far above
# anything these architectures are used at (StyleGAN2 at 1024 px has 30 M).
MAX_GENERATOR_PARAMETERS = 1 << 30


class CheckpointError(RuntimeError):
    """A checkpoint that is incomplete, damaged or unreadable. The message names the file."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rng_files(rank: int) -> tuple[str, str]:
    """The RNG state files of one rank in a checkpoint (each rank writes its own)."""
    return f"rng_rank{rank}.safetensors", f"rng_rank{rank}.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON/YAML true is not a count


# -- safe (de)serialisation of state dicts ---------------------------------------------------------------

def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of CPU, contiguous copies of `tensors`; the same bytes for the same input."""
    data = save_safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return _sort_metadata(data) if metadata and len(metadata) > 1 else data


def _sort_metadata(data: bytes) -> bytes:
    """safetensors (0.8) writes `__metadata__` in a random (hash map) order, so the same weights gave files
    of different sha256 from one save to the next (exported generators of identical runs differed): rewrite
    the header with its metadata keys sorted. The data section is unchanged (its offsets are relative)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data section stays 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


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


def _settings(group: dict[str, Any], lr: float | None = None) -> dict[str, Any]:
    """A param group's OPTIMIZER_SETTINGS as JSON values (betas as a list); `lr` replaces the group's own."""
    values = {key: list(group[key]) if isinstance(group.get(key), tuple) else group.get(key)
              for key in OPTIMIZER_SETTINGS if key in group}
    if lr is not None and "lr" in values:
        values["lr"] = lr
    return values


def optimizer_state_files(optimizer: torch.optim.Optimizer, base_lrs: list[float] | None = None) -> tuple[bytes, str]:
    """(safetensors bytes of the per-parameter tensors, JSON of the param groups and non-tensor state).

    torch.optim state dicts are {"state": {index: {name: value}}, "param_groups": [...]}; tensors go to
    safetensors under "state.<index>.<name>", everything else (numbers, booleans, lists) to JSON.
    "settings" records the configured lr/betas/weight decay/eps of each group (`base_lrs`: the lr before
    any schedule scaled it), so that a resume can say which of them the new config changes.
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
    lrs = base_lrs if base_lrs is not None and len(base_lrs) == len(groups) else [None] * len(groups)
    settings = [_settings(group, lr) for group, lr in zip(optimizer.param_groups, lrs, strict=True)]
    record = {"param_groups": groups, "scalar_state": scalars, "settings": settings}
    return tensors_to_bytes(tensors), json.dumps(record, sort_keys=True)


@dataclass
class OptimizerState:
    """An optimizer's checkpointed state, checked against the optimizer it is for (nothing applied yet)."""

    state_dict: dict[str, Any]  # for optimizer.load_state_dict
    changes: list[tuple[str, Any, Any]]  # (setting, the checkpoint's value, the configured one)


def read_optimizer_state(optimizer: torch.optim.Optimizer, tensors_path: Path, json_path: Path) -> OptimizerState:
    """Read and check an optimizer's saved state without touching `optimizer`: the groups and their sizes,
    every state index, and the shape of every per-parameter tensor must fit (torch's load_state_dict does
    not check state shapes: a wrong one would fail, or broadcast, at the first step). Raises
    CheckpointError naming the files."""
    tensors = read_tensors(tensors_path)
    record = read_json(json_path)
    try:
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        groups = [{key: tuple(value) if key == "betas" else value for key, value in group.items()}
                  for group in record["param_groups"]]
        if len(groups) != len(optimizer.param_groups):
            raise ValueError(f"{len(groups)} parameter groups saved, {len(optimizer.param_groups)} in this run")
        params: dict[int, torch.Tensor] = {}
        for saved, group in zip(groups, optimizer.param_groups, strict=True):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"a group of {len(saved['params'])} parameters saved, {len(group['params'])} "
                                 "in this run")
            params.update(zip((int(index) for index in saved["params"]), group["params"], strict=True))
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
        for index, values in record["scalar_state"].items():
            state.setdefault(int(index), {}).update(values)
        for index, values in state.items():
            if index not in params:
                raise ValueError(f"state for parameter {index}, which no saved group lists")
            for name, value in values.items():
                if torch.is_tensor(value) and value.ndim > 0 and value.shape != params[index].shape:
                    raise ValueError(f"state.{index}.{name} has shape {tuple(value.shape)}, the parameter "
                                     f"{tuple(params[index].shape)}")
        saved_settings = record.get("settings") or [_settings(group) for group in groups]
        changes = []
        for saved, group in zip(saved_settings, optimizer.param_groups, strict=True):
            for key, now in _settings(group).items():
                if key in saved and saved[key] != now:
                    changes.append((key, saved[key], now))
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{tensors_path} / {json_path}: optimizer state does not fit this run "
                              f"({type(error).__name__}: {error})") from error
    return OptimizerState({"state": state, "param_groups": groups}, changes)


def apply_optimizer_state(optimizer: torch.optim.Optimizer, loaded: OptimizerState) -> None:
    """Load a checked state: the per-parameter state (Adam's moments and step counters) comes from the
    checkpoint, the hyperparameters (lr, betas, weight decay, kernels) stay those the optimizer was built
    with from the run's config, so a resumed run can change them (torch's load_state_dict would silently
    restore the saved ones)."""
    configured = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(loaded.state_dict)
    for group, hyperparameters in zip(optimizer.param_groups, configured, strict=True):
        group.update(hyperparameters)


def check_module_state(module: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError naming `path` unless `tensors` has exactly the module's keys, shapes and dtypes
    (checked before anything is loaded, so a mismatch leaves the module as it was)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    for key in sorted(set(expected) & set(tensors)):
        saved, own = tensors[key], expected[key]
        if saved.shape != own.shape or saved.dtype != own.dtype:
            problems.append(f"{key} is {saved.dtype} {tuple(saved.shape)}, the model's {own.dtype} {tuple(own.shape)}")
            break
    if problems:
        raise CheckpointError(f"{path}: weights do not fit this model (was model.* changed?): {'; '.join(problems)}")


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


def _interpolation_key(value: Any, key: str = "") -> str | None:
    """The first key whose value holds an OmegaConf interpolation (`${...}`, including `${oc.env:...}`)."""
    if isinstance(value, dict):
        for name, item in value.items():
            found = _interpolation_key(item, f"{key}.{name}" if key else str(name))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _interpolation_key(item, f"{key}[{index}]")
            if found is not None:
                return found
    elif isinstance(value, str) and "${" in value:
        return key
    return None


def read_generator_record(path: Path) -> GeneratorInfo:
    """Parse and validate a generator.yaml (or an exported folder's config.json, the same record in JSON):
    only the model section and the dataset identity are read, checked like any config (known names, bounded
    sizes, exact types). Unknown sections (e.g. a `data:` with URLs in a shared file) are ignored, never used.
    Interpolations (`${...}`) are refused anywhere in the file, never resolved: `${oc.env:...}` in a shared
    file would read this machine's environment, and an error message could show it. Raises ConfigError
    naming the file and key."""
    from omegaconf import OmegaConf

    origin = str(path)
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigError(f"{origin}: not valid JSON: {error}") from error
    else:
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception as error:
            raise ConfigError(f"{origin}: not valid YAML: {error}") from error
    return parse_generator_record(raw, origin)


def parse_generator_record(raw: Any, origin: str) -> GeneratorInfo:
    """The checks of `read_generator_record` on an already parsed record (`origin` names it in errors)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ConfigError(f"{origin}: no 'model' section")
    interpolated = _interpolation_key(raw)
    if interpolated is not None:
        raise ConfigError(f"{origin}: key '{interpolated}' holds an interpolation ('${{...}}'); a generator record "
                          "takes plain values only (interpolations are never resolved)")
    try:
        schema = OmegaConf.structured(ModelConfig)
        OmegaConf.set_struct(schema, True)
        # model.options is checked against the architecture's options dataclass by validate_model below (as
        # configure.load_config does): a stylegan2 record with w_dim etc. must merge here.
        OmegaConf.set_struct(schema.options, False)
        model: ModelConfig = OmegaConf.to_object(OmegaConf.merge(schema, raw["model"]))  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        raise ConfigError(f"{origin}: key 'model.{getattr(error, 'key', '?')}': {str(error).splitlines()[0]}") from error
    validate_model(model, origin)
    dataset = raw.get("dataset")
    shape = raw.get("image_shape")
    num_classes = raw.get("num_classes", 0)
    step = raw.get("step", -1)
    is_ema = raw.get("is_ema", False)
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"{origin}: key 'dataset' must name the dataset the generator was trained on")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(v) for v in shape)
            or shape[0] not in (1, 3) or not all(1 <= v <= MAX_IMAGE_SIZE for v in shape[1:])):
        raise ConfigError(f"{origin}: key 'image_shape' must be [C, H, W] with C 1 or 3 and sizes in "
                          f"[1, {MAX_IMAGE_SIZE}], got {shape!r}")
    if not _is_int(num_classes) or not 0 <= num_classes <= MAX_CLASSES:
        raise ConfigError(f"{origin}: key 'num_classes' must be an integer in [0, {MAX_CLASSES}], got {num_classes!r}")
    if not _is_int(step) or step < -1:
        raise ConfigError(f"{origin}: key 'step' must be the integer training step of the weights, got {step!r}")
    if not isinstance(is_ema, bool):  # the string "false" would otherwise read as true
        raise ConfigError(f"{origin}: key 'is_ema' must be true or false, got {is_ema!r}")
    return GeneratorInfo(model=model, dataset=dataset, image_shape=(shape[0], shape[1], shape[2]),
                         num_classes=num_classes, step=step, is_ema=is_ema)


def export_generator(G: nn.Module, info: GeneratorInfo, out_dir: Path) -> dict[str, str]:
    """generator.safetensors + generator.yaml into out_dir (each atomically); returns {name: sha256}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = tensors_to_bytes(G.state_dict(), metadata={"step": str(info.step), "ema": str(info.is_ema)})
    digests = {}
    tmp = out_dir / f".{GENERATOR_WEIGHTS}.tmp"
    digests[GENERATOR_WEIGHTS] = write_bytes_durably(tmp, weights)
    os.replace(tmp, out_dir / GENERATOR_WEIGHTS)
    text = generator_record_yaml(info)
    write_text_atomic(out_dir / GENERATOR_RECORD, text)
    digests[GENERATOR_RECORD] = hashlib.sha256(text.encode()).hexdigest()
    return digests


@dataclass(frozen=True)
class GeneratorSource:
    """Where a generator's files are: the weights, the record that says which model they belong to, the
    checkpoint folder they came from (None for a run's final export, an exported folder or a file), and
    which of a run's generators this is, in words ("step_00001200", "best (step_00001200)", ...)."""

    weights: Path
    record: Path
    checkpoint_dir: Path | None
    label: str


CHECKPOINT_CHOICES = "best | last | step_N"


def _is_export_folder(path: Path) -> bool:
    return (path / EXPORT_CONFIG).is_file() and (path / EXPORT_WEIGHTS).is_file()


def _record_step(record: Path) -> int:
    try:
        return read_generator_record(record).step
    except ConfigError:
        return -1


def _run_generator(run_path: Path, select: str | None) -> GeneratorSource:
    """One of a run folder's generators: select None / "last" (the newest: the run's final export or its
    newest complete checkpoint, whichever has the higher step), "best" (checkpoints/best.json's step) or
    "step_N"."""
    checkpoints = complete_checkpoints(run_path)
    by_step = dict(checkpoints)
    select = "last" if select is None else select
    if select == "best":
        best = read_best(run_path)
        step = best.get("step")
        if not _is_int(step):
            raise FileNotFoundError(f"{run_path}: no best-FID checkpoint recorded ({CHECKPOINTS}/{BEST} is missing: "
                                    "no evaluation ran; train with eval.eval_every > 0, or use --checkpoint last)")
        if step not in by_step:
            raise FileNotFoundError(f"{run_path}: {CHECKPOINTS}/{BEST} names step {step}, whose checkpoint "
                                    f"{step_dir_name(step)} is not there (deleted by hand?)")
        folder = by_step[step]
        return GeneratorSource(folder / GENERATOR_WEIGHTS, folder / GENERATOR_RECORD, folder,
                               f"best ({step_dir_name(step)})")
    if select == "last":
        final = run_path / GENERATOR_WEIGHTS
        if final.is_file() and (not checkpoints or _record_step(run_path / GENERATOR_RECORD) >= checkpoints[-1][0]):
            return GeneratorSource(final, run_path / GENERATOR_RECORD, None, "last (the run's final export)")
        if not checkpoints:
            raise FileNotFoundError(f"--run {run_path}: no {GENERATOR_WEIGHTS} and no complete checkpoint in it")
        step, folder = checkpoints[-1]
        return GeneratorSource(folder / GENERATOR_WEIGHTS, folder / GENERATOR_RECORD, folder,
                               f"last ({step_dir_name(step)})")
    match = re.fullmatch(r"step_(\d+)", select)
    if match is None:
        raise ConfigError(f"--checkpoint {select!r}: not one of {CHECKPOINT_CHOICES} (e.g. step_1200)")
    step = int(match.group(1))
    if step not in by_step:
        have = ", ".join(f"step_{s}" for s in by_step) or "none"
        raise FileNotFoundError(f"{run_path}: no complete checkpoint at step {step} (complete ones: {have})")
    folder = by_step[step]
    return GeneratorSource(folder / GENERATOR_WEIGHTS, folder / GENERATOR_RECORD, folder, step_dir_name(step))


def generator_source(path: str | os.PathLike, select: str | None = None) -> GeneratorSource:
    """The generator at `path`: an exported folder (config.json + model.safetensors), a checkpoint folder, a
    generator.safetensors / model.safetensors file, or a run folder, where `select` (best | last | step_N;
    None = last) picks which one. FileNotFoundError when it is not there, ConfigError for a bad `select`."""
    where = Path(path).expanduser()
    if where.is_file():
        record = where.with_name(EXPORT_CONFIG if where.name == EXPORT_WEIGHTS else GENERATOR_RECORD)
        source = GeneratorSource(where, record, None, where.name)
    elif _is_export_folder(where):
        source = GeneratorSource(where / EXPORT_WEIGHTS, where / EXPORT_CONFIG, None, "exported folder")
    elif (where / META).is_file() or (where / GENERATOR_WEIGHTS).is_file() and not (where / CHECKPOINTS).is_dir():
        source = GeneratorSource(where / GENERATOR_WEIGHTS, where / GENERATOR_RECORD, where, where.name)
    elif where.is_dir():
        return _run_generator(where, select)
    else:
        raise FileNotFoundError(f"{path}: no such run folder, exported folder, checkpoint folder or weights file")
    if select is not None:
        raise ConfigError(f"--checkpoint {select}: picks a generator of a run folder; {path} is already one "
                          f"generator ({source.label})")
    if not source.weights.is_file():
        raise FileNotFoundError(f"{path}: no {GENERATOR_WEIGHTS} there")
    return source


def _generator_source(run_dir: str | os.PathLike | None, checkpoint: str | os.PathLike | None,
                      select: str | None = None) -> GeneratorSource:
    """What `sample`/`eval` load: --checkpoint PATH (any generator), else --run PATH (any generator, a run
    folder's picked by `select`)."""
    if checkpoint is not None:
        try:
            return generator_source(checkpoint)
        except FileNotFoundError:
            raise FileNotFoundError(f"--checkpoint {checkpoint}: no {GENERATOR_WEIGHTS} there") from None
    return generator_source(str(run_dir), select)


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's header alone (no tensor is read). Raises
    CheckpointError naming the file when the header is not one."""
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if not 0 < length <= MAX_HEADER_BYTES:
                raise ValueError(f"header length {length}")
            header = json.loads(handle.read(length))
        return {name: (entry["dtype"], tuple(int(size) for size in entry["shape"]))
                for name, entry in header.items() if name != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a safetensors file ({type(error).__name__}: {error})") from error


def load_generator(run_dir: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
                   use_ema: bool = True, map_location: str | torch.device = "cpu",
                   select: str | None = None) -> tuple[nn.Module, GeneratorInfo]:
    """(G in eval mode, what it declares) from a run folder (`select`: best | last | step_N, None = last), an
    exported folder (`gan-dist export`), a checkpoint folder or a weights file (`generator_source`).

    Nothing in the folder runs or allocates before it is checked: generator.yaml's model section and dataset
    identity are validated (known names, bounded sizes), G is first built on the meta device (no memory) and
    the tensor names and shapes declared in the weights' header must equal its own, with at most
    MAX_GENERATOR_PARAMETERS parameters; only then is G built for real and the (finite) weights loaded. The
    exported weights are G_ema when the run trained one; use_ema=False loads the raw G from a checkpoint.
    Errors: ConfigError (the record or the weights do not fit: exit 2), CheckpointError (damaged: exit 1).
    """
    source = _generator_source(run_dir, checkpoint, select)
    weights_path, record_path = source.weights, source.record
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: missing (it says which model the weights belong to)")
    info = read_generator_record(record_path)
    if not use_ema and info.is_ema:
        raw_weights = weights_path.parent / "G.safetensors"
        if not raw_weights.is_file():
            raise FileNotFoundError(f"{weights_path.parent}: the raw G is only kept in checkpoints; "
                                    f"pass a checkpoint folder or drop --no-ema")
        weights_path = raw_weights
        info = dataclasses.replace(info, is_ema=False)
    with torch.device("meta"):  # shapes only: an absurd record allocates nothing here
        skeleton = build_generator(info.model, info.image_shape, info.num_classes)
    count = sum(tensor.numel() for tensor in skeleton.state_dict().values())
    if count > MAX_GENERATOR_PARAMETERS:
        raise ConfigError(f"{record_path}: key 'model': the model it declares has {count:,} parameters and "
                          f"buffers, over the {MAX_GENERATOR_PARAMETERS:,} a generator may have")
    declared = safetensors_header(weights_path)
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    if {name: shape for name, (_, shape) in declared.items()} != expected:
        differ = sorted(set(declared) ^ set(expected)) or sorted(
            name for name in expected if declared[name][1] != expected[name])
        raise ConfigError(f"{weights_path}: its tensors do not fit the model {record_path.name} declares "
                          f"(model.name={info.model.name}): first difference {differ[0]!r}")
    check_finite_file(weights_path)  # a NaN generator is damaged, not misconfigured: exit 1, not 2
    G = build_generator(info.model, info.image_shape, info.num_classes)
    tensors = read_tensors(weights_path)
    try:
        check_module_state(G, tensors, weights_path)
    except CheckpointError as error:
        raise ConfigError(str(error)) from error
    G.load_state_dict(tensors, strict=True)
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


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Raise CheckpointError naming the file and tensor unless every floating-point tensor is finite."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds non-finite values (nan/inf): resuming would "
                                  "continue a diverged (or tampered) state")


def required_files(meta: dict[str, Any], meta_path: Path) -> list[str]:
    """What a checkpoint must hold for RunFolder.load: the models, optimizers and counters, the RNG states of
    every rank that wrote it, and G_ema when meta.json says the run had one."""
    processes = meta.get("num_processes", 1)
    if not _is_int(processes) or processes < 1:
        raise CheckpointError(f"{meta_path}: 'num_processes' must be a positive integer, got {processes!r}")
    ema = meta.get("ema", False)
    if not isinstance(ema, bool):
        raise CheckpointError(f"{meta_path}: 'ema' must be true or false, got {ema!r}")
    extra = meta.get("extra", [])
    if not isinstance(extra, list) or not all(isinstance(n, str) and re.fullmatch(r"[a-z0-9_]+", n) for n in extra):
        raise CheckpointError(f"{meta_path}: 'extra' must be a list of state names, got {extra!r}")
    names = list(REQUIRED_FILES) + [name for rank in range(processes) for name in rng_files(rank)]
    return names + ([EMA_WEIGHTS] if ema else []) + [_extra_file(name) for name in extra]


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's meta.json, checked for shape (not yet against the files): a JSON object of this
    format whose 'files' maps plain file names to {size_bytes, sha256}. Raises CheckpointError naming it."""
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: no {META} (an incomplete checkpoint)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: not a JSON object (damaged or replaced)")
    if meta.get("format_version") != FORMAT_VERSION or "files" not in meta:
        raise CheckpointError(f"{meta_path}: written by an older gan_dist (no file checksums); it cannot be "
                              "verified or resumed safely")
    files = meta["files"]
    if not isinstance(files, dict):
        raise CheckpointError(f"{meta_path}: 'files' is not an object of file entries (damaged or replaced)")
    for name, entry in files.items():
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"{meta_path}: lists an invalid file name {name!r}")
        if (not isinstance(entry, dict) or not _is_int(entry.get("size_bytes"))
                or not isinstance(entry.get("sha256"), str)):
            raise CheckpointError(f"{meta_path}: the entry of {name!r} is not {{\"size_bytes\": int, \"sha256\": str}} "
                                  "(damaged or replaced)")
    missing = [name for name in required_files(meta, meta_path) if name not in files]
    if missing:
        raise CheckpointError(f"{meta_path}: does not list {', '.join(missing)}, which a resume reads "
                              "(incomplete or replaced)")
    return meta


def check_finite_file(path: Path) -> None:
    """Raise CheckpointError naming the file and tensor unless every floating-point tensor of a safetensors
    file is finite; tensors are read one at a time (memory-mapped), never the whole file at once."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise CheckpointError(f"{path}: tensor {key!r} holds non-finite values (nan/inf): resuming "
                                          "would continue a diverged (or tampered) state")
    except CheckpointError:
        raise
    except Exception as error:  # safetensors raises its own error types for bad headers and truncation
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from error


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check meta.json (see read_meta) and every file it lists (size, sha256 hashed in chunks; safetensors
    files must parse and hold only finite floating-point tensors); returns meta. Raises CheckpointError naming
    the first problem (missing marker, older format, a file missing, truncated, modified or non-finite)."""
    meta = read_meta(path)
    for name, entry in sorted(meta["files"].items()):
        file_path = path / name
        if not file_path.is_file():
            raise CheckpointError(f"{file_path}: missing")
        size = file_path.stat().st_size
        if size != entry["size_bytes"]:
            raise CheckpointError(f"{file_path}: {size} bytes, {META} records {entry['size_bytes']} "
                                  "(truncated or replaced)")
        try:
            digest = sha256_file(file_path)
        except OSError as error:
            raise CheckpointError(f"{file_path}: unreadable ({error})") from error
        if digest != entry["sha256"]:
            raise CheckpointError(f"{file_path}: sha256 differs from {META} (modified or corrupt)")
        if name.endswith(".safetensors"):
            # Hashes only say the files are those meta.json lists: a NaN written by a bug (or by someone who
            # also rewrote meta.json) would pass them. Every tensor a resume loads is checked here, once.
            check_finite_file(file_path)
    return meta


def set_aside(path: Path, reason: str, prefix: str = "damaged") -> Path:
    """Rename a checkpoint out of the resume/retention namespace, keeping it for inspection. The name
    holds the time and, when another set-aside took that name (the same step twice in one second), a
    counter: every set-aside folder is kept."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{prefix}-{stamp}-{path.name}")
    counter = 1
    while target.exists():
        target = path.with_name(f"{prefix}-{stamp}.{counter}-{path.name}")
        counter += 1
    os.replace(path, target)
    fsync_dir(path.parent)
    (target / "SET_ASIDE.txt").write_text(reason + "\n")
    return target


def select_resume(run_dir: Path, resume: str, report: Callable[[str], None] | None = None,
                           exclude: Collection[Path] = ()) -> Path | None:
    """checkpoint.resume -> a verified folder to load: '' none; 'auto' the newest checkpoint that verifies
    (damaged newer ones are set aside with the reason, and the next older one is tried), skipping those in
    `exclude`; else that path, which must verify (CheckpointError naming the file otherwise). Main process
    only (it renames)."""
    report = report or (lambda message: print(message, file=sys.stderr, flush=True))
    if not resume:
        return None
    if resume == "auto":
        for step, path in reversed(complete_checkpoints(run_dir)):
            if path in exclude:
                continue
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
    fsync_dir(root)
    return notes


def publish_checkpoint(tmp_dir: Path, final_dir: Path, files: dict[str, str], meta: dict[str, Any]) -> None:
    """Main process, once every file is in tmp_dir and fsynced: write meta.json (sizes + sha256 of every
    file), fsync the folder, and rename it into place (moving an existing step aside first)."""
    entries = {name: {"sha256": digest, "size_bytes": (tmp_dir / name).stat().st_size}
               for name, digest in sorted(files.items())}
    write_bytes_durably(tmp_dir / META, (json.dumps(
        {**meta, "format_version": FORMAT_VERSION, "files": entries}, indent=2, sort_keys=True) + "\n").encode())
    fsync_dir(tmp_dir)
    old_dir = final_dir.with_name(f".old-{final_dir.name}")
    if final_dir.exists():
        if old_dir.exists():
            shutil.rmtree(old_dir)
        os.replace(final_dir, old_dir)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)
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


# -- a training checkpoint: what it holds, writing it, reading it back ----------------------------------

class NoiseState(Protocol):
    """The step's noise generator, as a checkpoint sees it."""

    device: torch.device

    def get_state(self) -> torch.Tensor: ...
    def set_state(self, state: torch.Tensor) -> None: ...


class TensorState(Protocol):
    """Extra state a checkpoint carries as tensors (e.g. an adaptive augmentation's p)."""

    def state_tensors(self) -> dict[str, torch.Tensor]: ...
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


@dataclass
class Checkpointable:
    """The live objects a checkpoint saves and restores, as the trainer built them (unwrapped modules)."""

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: Any  # torch.amp.GradScaler (fp16) or None
    noise: NoiseState
    state: TrainState
    generator_info: Callable[[int], GeneratorInfo]  # step -> what the exported generator declares
    base_lrs: dict[str, float] = field(default_factory=dict)  # optimizer file -> configured lr (before schedules)
    extra: dict[str, TensorState] = field(default_factory=dict)  # name -> state saved as extra_<name>.safetensors


# optimizer file -> the config keys of its settings (what a note about a changed setting names)
_SETTING_KEYS = {"optimizer_G": {"lr": "optim.lr_g", "betas": "optim.beta1/optim.beta2",
                                 "weight_decay": "optim.weight_decay", "eps": "eps"},
                 "optimizer_D": {"lr": "optim.lr_d", "betas": "optim.beta1/optim.beta2",
                                 "weight_decay": "optim.weight_decay", "eps": "eps"}}


def _extra_file(name: str) -> str:
    return f"extra_{name}.safetensors"


def write_rank_files(tmp_dir: Path, rank: int, noise: NoiseState) -> None:
    """This process's RNG states into a checkpoint being written (every rank writes its own): torch CPU and
    CUDA (dropout), the noise generator, numpy and python."""
    tensors = {"torch_cpu": torch.get_rng_state(), "noise": noise.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    python_version, python_state, python_gauss = random.getstate()
    record = {"numpy": [kind, int(position), int(has_gauss), float(cached_gaussian)],
              "python": [python_version, list(python_state), python_gauss]}
    tensors_name, json_name = rng_files(rank)
    write_bytes_durably(tmp_dir / tensors_name, tensors_to_bytes(tensors))
    write_bytes_durably(tmp_dir / json_name, json.dumps(record).encode())


def write_checkpoint(tmp_dir: Path, final_dir: Path, target: Checkpointable, step: int, meta: dict[str, Any],
                     num_processes: int) -> None:
    """Main process, once every rank wrote its RNG files into tmp_dir: write the models, EMA, optimizers,
    scaler, counters, extra state and the exported generator, then publish (meta.json with every file's size
    and sha256, written last, and an atomic rename to final_dir). The caller checked everything is finite."""
    files: dict[str, str] = {}

    def put(name: str, data: bytes) -> None:
        files[name] = write_bytes_durably(tmp_dir / name, data)

    put("G.safetensors", tensors_to_bytes(target.G.state_dict()))
    put("D.safetensors", tensors_to_bytes(target.D.state_dict()))
    if target.G_ema is not None:
        put(EMA_WEIGHTS, tensors_to_bytes(target.G_ema.state_dict()))
    for name, optimizer in (("optimizer_G", target.opt_g), ("optimizer_D", target.opt_d)):
        # The configured lr (a schedule may have scaled the group's): what a resume compares with.
        base_lr = target.base_lrs.get(name)
        base_lrs = None if base_lr is None else [base_lr] * len(optimizer.param_groups)
        tensors, record = optimizer_state_files(optimizer, base_lrs)
        put(f"{name}.safetensors", tensors)
        put(f"{name}.json", record.encode())
    if target.scaler is not None:
        put(SCALER, json.dumps(target.scaler.state_dict()).encode())
    for name, holder in sorted(target.extra.items()):
        put(_extra_file(name), tensors_to_bytes(holder.state_tensors()))
    put(TRAIN_STATE, (json.dumps(target.state.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    exported = target.G_ema if target.G_ema is not None else target.G
    files.update(export_generator(exported, target.generator_info(step), tmp_dir))
    for rank in range(num_processes):
        for name in rng_files(rank):
            files[name] = sha256_file(tmp_dir / name)
    # "ema" makes G_ema a required file: a meta.json without it would resume a copy of G as the EMA.
    publish_checkpoint(tmp_dir, final_dir, files, {**meta, "step": step, "ema": target.G_ema is not None,
                                                   "extra": sorted(target.extra), "num_processes": num_processes})


@dataclass
class RngStates:
    torch_cpu: torch.Tensor
    noise: torch.Tensor
    torch_cuda: torch.Tensor | None
    numpy: tuple[Any, ...]
    python: tuple[Any, ...]


def _read_rng(directory: Path, rank: int, noise: NoiseState) -> RngStates:
    """This rank's saved RNG states, each tried on a scratch generator first (nothing global is touched)."""
    tensors_name, json_name = rng_files(rank)
    tensors = read_tensors(directory / tensors_name)
    record = read_json(directory / json_name)
    try:
        kind, position, has_gauss, cached_gaussian = record["numpy"]
        numpy_state = (kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
        version, state, gauss = record["python"]
        python_state = (version, tuple(state), gauss)
        states = RngStates(torch_cpu=tensors["torch_cpu"], noise=tensors["noise"],
                           torch_cuda=tensors.get("torch_cuda"), numpy=numpy_state, python=python_state)
        torch.Generator().set_state(states.torch_cpu)
        torch.Generator(device=noise.device).set_state(states.noise)
        np.random.RandomState().set_state(numpy_state)
        random.Random().setstate(python_state)
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{directory / tensors_name} / {json_name}: unreadable RNG state "
                              f"({type(error).__name__}: {error})") from error
    return states


def _apply_rng(states: RngStates, noise: NoiseState) -> None:
    torch.set_rng_state(states.torch_cpu)
    noise.set_state(states.noise)
    if states.torch_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states.torch_cuda)
    np.random.set_state(states.numpy)
    random.setstate(states.python)


@dataclass
class LoadedCheckpoint:
    """Everything one rank will load from a checkpoint, read and checked against the live objects, not yet
    applied (`apply_checkpoint`)."""

    path: Path
    G: dict[str, torch.Tensor]
    D: dict[str, torch.Tensor]
    G_ema: dict[str, torch.Tensor] | None  # None: the checkpoint has no EMA
    optimizers: dict[str, OptimizerState]
    scaler: dict[str, Any] | None
    extra: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]
    rng: RngStates | None  # None: this rank did not write it (the run had fewer processes)
    noise: torch.Tensor  # the step's noise generator: the same on every rank (rank 0's when this one wrote none)
    saved_processes: int
    notes: list[str] = field(default_factory=list)  # optimizer settings the config changed


def read_checkpoint(path: Path, rank: int, target: Checkpointable) -> LoadedCheckpoint:
    """Rank `rank`'s part of a verified checkpoint, read and checked against `target` (nothing applied).
    Only files that meta.json lists (and the main process verified) are read. Raises CheckpointError naming
    the file that does not fit."""
    meta = read_meta(path)
    listed = set(meta["files"])
    G, D = read_tensors(path / "G.safetensors"), read_tensors(path / "D.safetensors")
    check_module_state(target.G, G, path / "G.safetensors")
    check_module_state(target.D, D, path / "D.safetensors")
    G_ema = None
    if target.G_ema is not None and EMA_WEIGHTS in listed:
        G_ema = read_tensors(path / EMA_WEIGHTS)
        check_module_state(target.G_ema, G_ema, path / EMA_WEIGHTS)
    optimizers = {name: read_optimizer_state(optimizer, path / f"{name}.safetensors", path / f"{name}.json")
                  for name, optimizer in (("optimizer_G", target.opt_g), ("optimizer_D", target.opt_d))}
    scaler = None
    if target.scaler is not None and SCALER in listed:
        scaler = read_json(path / SCALER)
        if not isinstance(scaler, dict) or not {"scale", "_growth_tracker"} <= set(scaler):
            raise CheckpointError(f"{path / SCALER}: not a GradScaler state")
    extra = {}
    for name, holder in target.extra.items():
        if _extra_file(name) not in listed:
            continue  # switched on at this resume: it starts fresh
        tensors = read_tensors(path / _extra_file(name))
        expected = holder.state_tensors()
        if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
            raise CheckpointError(f"{path / _extra_file(name)}: holds {sorted(tensors)}, this run's {name} "
                                  f"has {sorted(expected)} (of other shapes?)")
        extra[name] = tensors
    try:
        state = TrainState.parse(read_json(path / TRAIN_STATE), path / TRAIN_STATE)
    except ProgressError as error:
        raise CheckpointError(str(error)) from None
    if meta.get("step", state["step"]) != state["step"]:
        raise CheckpointError(f"{path / TRAIN_STATE}: step {state['step']}, {META} says {meta.get('step')} "
                              "(files of different checkpoints)")
    rng = _read_rng(path, rank, target.noise) if rng_files(rank)[0] in listed else None
    noise = rng.noise if rng is not None else _read_rng(path, 0, target.noise).noise
    notes = [f"optimizer setting changed on resume: {name} {key} {old} -> {new} ({_SETTING_KEYS[name][key]}; "
             "the configured value is used)"
             for name, loaded in optimizers.items() for key, old, new in loaded.changes]
    return LoadedCheckpoint(path=path, G=G, D=D, G_ema=G_ema, optimizers=optimizers, scaler=scaler, extra=extra,
                            state=state, rng=rng, noise=noise, saved_processes=meta.get("num_processes", 1),
                            notes=notes)


def apply_checkpoint(loaded: LoadedCheckpoint, target: Checkpointable) -> None:
    """Restore the models, EMA, optimizers, scaler, extra state, counters and this rank's RNG states."""
    target.G.load_state_dict(loaded.G, strict=True)
    target.D.load_state_dict(loaded.D, strict=True)
    if target.G_ema is not None:
        # Without a saved EMA (switched on at this resume) it starts from the loaded G.
        target.G_ema.load_state_dict(loaded.G_ema if loaded.G_ema is not None else target.G.state_dict())
    apply_optimizer_state(target.opt_g, loaded.optimizers["optimizer_G"])
    apply_optimizer_state(target.opt_d, loaded.optimizers["optimizer_D"])
    if loaded.scaler is not None:
        target.scaler.load_state_dict(loaded.scaler)
    for name, tensors in loaded.extra.items():
        target.extra[name].load_state_tensors(tensors)
    target.state.apply(loaded.state)
    target.noise.set_state(loaded.noise)
    if loaded.rng is not None:
        _apply_rng(loaded.rng, target.noise)
