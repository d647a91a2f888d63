"""The Accelerator and everything resolved with it (precision, device, Adam's kernels), and the few
collectives the rest of the package uses (`run_on_main`, `broadcast_from_main`, `first_error`): shared by
training and evaluation so both run the same way on 1 CPU process, N gloo processes or many GPUs.
Resolved values go into the run record, never back into the user's config.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch

from gan_dist.config import ConfigError, DistConfig

T = TypeVar("T")


def cpu_supports_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo: bf16 autocast on the CPU is fast there."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_mixed_precision(mode: str, use_cpu: bool) -> str:
    """train.mixed_precision -> what Accelerate gets. fp16 needs a GPU (CPU autocast has no fp16 scaler path)."""
    if mode == "auto":
        if use_cpu:
            return "bf16" if cpu_supports_bf16() else "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "fp16" and use_cpu:
        raise ConfigError("key 'train.mixed_precision': fp16 needs a CUDA GPU; use bf16 (or auto) on CPUs")
    return mode


def precision_with_launcher(configured: str) -> str:
    """train.mixed_precision, reconciled with `accelerate launch --mixed_precision` / its config file.

    The launcher exports ACCELERATE_MIXED_PRECISION. An Accelerator given an explicit precision ignores
    it, so a user's `--mixed_precision bf16` would silently train in fp32: instead, the launcher's choice
    is taken when the config says auto (the default) or no (the launcher's own default, so configs
    written for it keep working), and a real disagreement (bf16 vs fp16) is an error.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher in ("no", "") or launcher == configured:
        return configured
    if configured in ("no", "auto"):
        print(f"train.mixed_precision: using {launcher} from accelerate launch (ACCELERATE_MIXED_PRECISION)",
              file=sys.stderr)
        return launcher
    raise ConfigError(f"train.mixed_precision={configured} but accelerate launch asked for {launcher} "
                      "(--mixed_precision / its config file): make them agree")


def uses_cpu(dist: DistConfig) -> bool:
    return dist.cpu or not torch.cuda.is_available()


def build_accelerator(dist: DistConfig, mixed_precision: str = "no", log_with: str | None = None,
                      project_dir: str = ".", cuda_graph: bool = False) -> Any:
    """An Accelerator for `dist` with a resolved precision (no | fp16 | bf16).

    Gradient accumulation is not delegated to Accelerate (gradient_accumulation_steps stays 1): the step
    runs its own D and G micro-batch loops (gan_dist/train/step.py) and uses `no_sync` itself. On a
    machine without a GPU the Accelerator is created with cpu=True, which makes N launched processes form
    a gloo group; a WORLD_SIZE that disagrees with the group size is refused (the processes would
    otherwise train alone, silently). With `cuda_graph`, autocast's cast cache is off: cached bf16 copies of
    the weights made during capture would be freed when the autocast context exits while the graph still
    writes them, and their memory handed to other tensors (PyTorch's CUDA-graph notes; on the H200 this
    corrupted the memory loader's sample indices: docs/design-notes.md, "CUDA graphs").
    """
    from accelerate import Accelerator
    from accelerate.utils import (
        AutocastKwargs,
        DistributedDataParallelKwargs,
        InitProcessGroupKwargs,
        ProjectConfiguration,
    )

    # torch >= 2.12 deprecates DDP's broadcast_buffers for forward_sync_buffers, which Accelerate's
    # DistributedDataParallelKwargs cannot pass yet; broadcast_buffers=False is still what we mean.
    warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
    accelerator = Accelerator(
        cpu=uses_cpu(dist),
        mixed_precision=mixed_precision,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=project_dir),
        kwargs_handlers=[
            DistributedDataParallelKwargs(broadcast_buffers=dist.broadcast_buffers,
                                          find_unused_parameters=dist.find_unused_parameters),
            InitProcessGroupKwargs(timeout=timedelta(seconds=dist.timeout_s)),
            AutocastKwargs(cache_enabled=False if cuda_graph else None),
        ],
    )
    expected_world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected_world_size:
        raise RuntimeError(
            f"WORLD_SIZE={expected_world_size} but the process group has {accelerator.num_processes} "
            "process(es): the processes are running alone. Launch with `accelerate launch --multi_gpu "
            "--num_processes N` (see launch/accelerate/); on CPUs also set dist.cpu=true or ACCELERATE_USE_CPU=1.")
    return accelerator


def release_accelerator(accelerator: Any) -> None:
    """Destroy the process group and clear Accelerate's process-wide singletons, so that a later
    Accelerator in the same process (bench, tests) may use other settings."""
    from accelerate.state import AcceleratorState, GradientState

    accelerator.end_training()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_on_main(accelerator: Any, fn: Callable[[], T], *, passthrough: tuple[type[Exception], ...] = (),
                what: str = "a step") -> T:
    """fn() on the main process and its result on every rank (collective). An exception there is raised on
    the main process as it is and on the other ranks too (the same type for those in `passthrough`, else a
    RuntimeError with its message), after they were told: no rank waits for one that failed."""
    from accelerate.utils import broadcast_object_list

    outcome: list[Any] = [None]
    error: BaseException | None = None
    if accelerator.is_main_process:
        try:
            outcome = [("ok", fn())]
        except Exception as exc:  # re-raised below, after the other ranks are told
            error = exc
            outcome = [("error", (type(exc).__name__, str(exc)))]
    if accelerator.num_processes > 1:
        broadcast_object_list(outcome, from_process=0)
    if error is not None:
        raise error
    status, value = outcome[0]
    if status == "error":
        kind, message = value
        same_type = next((t for t in passthrough if t.__name__ == kind), None)
        raise same_type(message) if same_type else RuntimeError(f"{what} failed on the main process: {kind}: {message}")
    return value


def adam_implementation(requested: str, device: torch.device) -> str:
    """optim.implementation -> fused | foreach | for_loop. fused runs Adam in one kernel per parameter
    group with its step counters on the device (no host sync; foreach reads each step counter with
    .item()); it exists for CUDA and, since torch 2.4, for the CPU."""
    if requested != "auto":
        return requested
    return "fused" if device.type in ("cuda", "cpu") else "foreach"


def adam_kwargs(implementation: str) -> dict[str, bool]:
    """Keyword arguments of torch.optim.Adam for a resolved implementation."""
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[implementation]


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """cudnn autotuning and TF32 for float32 matmuls and convolutions on GPUs (fp32 runs: TF32 keeps 10
    mantissa bits, as bf16 has 7), through the fp32_precision settings of torch >= 2.9 (allow_tf32 is
    deprecated there); deterministic algorithms when run.deterministic asks for them (slower)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        return
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            torch.backends.cudnn.conv.fp32_precision = "tf32"
        else:  # torch < 2.9
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True


def broadcast_from_main(accelerator: Any, value: T) -> T:
    """The main process's `value` on every rank (collective with several processes)."""
    from accelerate.utils import broadcast_object_list

    holder = [value]
    if accelerator.num_processes > 1:
        broadcast_object_list(holder, from_process=0)
    return holder[0]


def first_error(accelerator: Any, error: str | None) -> str | None:
    """Collective: the first failing rank's message (None: every rank succeeded), the same on every rank."""
    if accelerator.num_processes == 1:
        return error
    gathered: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(gathered, error)
    return next((f"rank {rank}: {message}" if rank else message
                 for rank, message in enumerate(gathered) if message is not None), None)
