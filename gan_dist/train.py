"""The Trainer: one loop for 1 CPU process, N processes, or many GPUs on many nodes.

Per optimizer step (see DESIGN.md for why each rule is there):
  fake = G(z)                                   # (B, 1, 28, 28), one G forward shared by both phases
  D phase: D(real) -> 1, D(fake.detach()) -> 0,  loss = mean of both BCE-with-logits terms, opt_d.step()
  G phase: D frozen and called unwrapped (no DDP hooks: no all-reduce of D, no reducer state),
           non-saturating loss BCE(D(fake), 1) = softplus(-logits), opt_g.step()
Both phases sit in one `accelerator.accumulate(G, D)` context. D stays in training mode in the G
phase (BatchNorm on batch statistics), as in the Keras tutorial's original behaviour.

The main process logs, writes grids and exports; checkpoints and evaluation run on every rank.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import warnings
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_dist.checkpoint import (
    DONE,
    apply_retention,
    export_generator,
    find_resume_checkpoint,
    mark_best,
    read_best,
    save_checkpoint,
    set_aside_newer_checkpoints,
    write_json_atomic,
)
from gan_dist.config import Config, ConfigError, to_yaml
from gan_dist.losses import discriminator_loss, generator_loss
from gan_dist.models import build_models
from gan_dist.tracking import make_tracker, new_run_id, save_grid_png

# Exit status of a run stopped early by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL):
# "try again" — the SLURM scripts requeue and the next start resumes with --resume auto.
EXIT_STOPPED_EARLY = 75


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


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MiB) of this process and of its finished children (e.g. loader workers)."""
    import resource

    kib = 1024.0  # ru_maxrss is in KiB on Linux
    return {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}


def precision_with_launcher(configured: str) -> str:
    """train.mixed_precision, reconciled with `accelerate launch --mixed_precision` / its config file.

    The launcher exports ACCELERATE_MIXED_PRECISION. An Accelerator given an explicit precision ignores
    it, so a user's `--mixed_precision bf16` would silently train in fp32: instead, the launcher's choice
    is taken when the config leaves the default ("no"), and a real disagreement is an error.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher in ("no", "") or launcher == configured:
        return configured
    if configured == "no":
        print(f"train.mixed_precision: using {launcher} from accelerate launch (ACCELERATE_MIXED_PRECISION)",
              file=sys.stderr)
        return launcher
    raise ConfigError(f"train.mixed_precision={configured} but accelerate launch asked for {launcher} "
                     "(--mixed_precision / its config file): make them agree")


class StopRequest:
    """Set by SIGUSR1 / SIGTERM (SLURM's warning before a time limit or preemption).

    The handler only sets a flag; the loop finishes the current step, then all ranks agree.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class TrainState:
    """Counters saved in every checkpoint via accelerator.register_for_checkpointing.

    Accelerate writes registered objects from the main process only and loads that one file on every
    rank, so everything here must be identical on all ranks (it is: the ranks step in lockstep).
    Per-rank randomness is therefore derived, not stored: see `noise_generator`.
    """

    def __init__(self) -> None:
        self.step = 0
        self.micro_steps = 0
        self.images_seen = 0
        self.run_id = ""
        self.best_fid = math.inf

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "micro_steps": self.micro_steps, "images_seen": self.images_seen,
                "run_id": self.run_id, "best_fid": self.best_fid}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.micro_steps = int(state["micro_steps"])
        self.images_seen = int(state["images_seen"])
        self.run_id = str(state["run_id"])
        self.best_fid = float(state["best_fid"])


def noise_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    """The CPU generator for z of one micro-step of one rank: a pure function of (seed, rank, micro-step),
    so z is identical on any device, differs across ranks, and needs no state to resume exactly."""
    import numpy as np

    mixed_seed = int(np.random.SeedSequence([seed, rank, micro_step]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(mixed_seed)


def _sync_buffers(modules: list[nn.Module]) -> None:
    """Broadcast BatchNorm running stats from rank 0 (DDP runs with broadcast_buffers=False, see DESIGN.md),
    so that evaluation, samples and checkpoints see the same G on every rank. Collective: every rank."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for module in modules:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


class Trainer:
    """Builds the Accelerator, models and optimizers, and runs the loop. `train(config)` is the entry."""

    def __init__(self, config: Config) -> None:
        from accelerate import Accelerator
        from accelerate.utils import (
            DistributedDataParallelKwargs,
            InitProcessGroupKwargs,
            ProjectConfiguration,
            set_seed,
        )

        self.config = config
        train_cfg = config.train
        # torch >= 2.12 deprecates DDP's broadcast_buffers for forward_sync_buffers, which Accelerate's
        # DistributedDataParallelKwargs cannot pass yet; broadcast_buffers=False is still what we mean.
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        use_cpu = config.dist.cpu or not torch.cuda.is_available()
        train_cfg.mixed_precision = precision_with_launcher(train_cfg.mixed_precision)
        mixed_precision = resolve_mixed_precision(train_cfg.mixed_precision, use_cpu)
        if mixed_precision == "fp16" and train_cfg.gradient_accumulation_steps > 1:
            # One GradScaler serves both optimizers and updates its scale at opt_d.step(), in the middle
            # of G's accumulation window: G's gradient would mix loss scales.
            raise ConfigError("train.mixed_precision=fp16 with train.gradient_accumulation_steps > 1 is not "
                              "supported (one shared GradScaler); use bf16 or no accumulation")
        self.accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
            log_with=None if config.log.tracker == "none" else config.log.tracker,
            # tensorboard wants a folder now; the run folder is known (and set) once the ranks agree on it.
            project_config=ProjectConfiguration(project_dir=config.run.out_dir, logging_dir=config.run.out_dir),
            kwargs_handlers=[
                DistributedDataParallelKwargs(broadcast_buffers=config.dist.broadcast_buffers,
                                              find_unused_parameters=config.dist.find_unused_parameters),
                InitProcessGroupKwargs(timeout=timedelta(seconds=config.dist.timeout_s)),
            ],
        )
        accelerator = self.accelerator
        expected_world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if accelerator.num_processes != expected_world_size:
            raise RuntimeError(
                f"WORLD_SIZE={expected_world_size} but the process group has {accelerator.num_processes} "
                "process(es): the processes are running alone. Launch with `accelerate launch --multi_gpu "
                "--num_processes N` (see launch/accelerate/); on CPUs also set dist.cpu=true or ACCELERATE_USE_CPU=1.")
        if config.run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)

        self.run_dir = self._resolve_run_dir()
        self.resume_from = find_resume_checkpoint(self.run_dir, config.checkpoint.resume)

        # Same initial weights on every rank (DDP also broadcasts rank 0's at prepare).
        set_seed(config.run.seed)
        G, D = build_models(config.model)
        self.is_conv = config.model.name != "mlp"
        if train_cfg.channels_last and self.is_conv:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        if train_cfg.sync_batchnorm and accelerator.num_processes > 1 and accelerator.device.type != "cuda":
            raise ConfigError("key 'train.sync_batchnorm': true needs CUDA GPUs (PyTorch's SyncBatchNorm is GPU-only); "
                             "set it to false on CPUs")
        if train_cfg.sync_batchnorm and accelerator.num_processes > 1:
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)  # before prepare (DESIGN.md)
            D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        self.G_raw, self.D_raw = G.to(accelerator.device), D.to(accelerator.device)
        optim_cfg = config.optim
        opt_g = torch.optim.Adam(self.G_raw.parameters(), lr=optim_cfg.lr_g,
                                 betas=(optim_cfg.beta1, optim_cfg.beta2), weight_decay=optim_cfg.weight_decay)
        opt_d = torch.optim.Adam(self.D_raw.parameters(), lr=optim_cfg.lr_d,
                                 betas=(optim_cfg.beta1, optim_cfg.beta2), weight_decay=optim_cfg.weight_decay)
        G_forward, D_forward = self.G_raw, self.D_raw
        if train_cfg.compile:
            G_forward, D_forward = torch.compile(self.G_raw), torch.compile(self.D_raw)
        # One prepare for all four, returned in the same order (accelerate #245).
        self.G, self.D, self.opt_g, self.opt_d = accelerator.prepare(G_forward, D_forward, opt_g, opt_d)
        # The G phase calls D without its DDP wrapper (prepare patched autocast into D_forward itself).
        self.D_for_g = D_forward

        self.G_ema: nn.Module | None = None
        if train_cfg.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.G_ema = AveragedModel(self.G_raw, multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema_decay),
                                       use_buffers=True)
            self.G_ema.requires_grad_(False)

        self.state = TrainState()
        accelerator.register_for_checkpointing(self.state)
        if self.G_ema is not None:
            accelerator.register_for_checkpointing(self.G_ema)
        if self.resume_from is not None:
            accelerator.load_state(str(self.resume_from))
            self.print_main(f"resumed from {self.resume_from} at step {self.state.step}")
            explicit = config.checkpoint.resume not in ("", "auto")
            if explicit and accelerator.is_main_process:
                for moved in set_aside_newer_checkpoints(self.run_dir, self.state.step):
                    self.print_main(f"newer checkpoint of the abandoned trajectory set aside: {moved}")
        # Per-rank RNG for dropout, different on each rank; restored from the checkpoint on resume.
        if self.resume_from is None:
            set_seed(config.run.seed, device_specific=True)
        if not self.state.run_id:
            self.state.run_id = self._broadcast(new_run_id())

        # Fixed noise for the sample grids, identical on every rank and every resume.
        self.fixed_z = torch.randn(config.log.num_samples, config.model.latent_dim,
                                   generator=torch.Generator().manual_seed(config.run.seed + 12345))
        self.stop_request = StopRequest()
        self._stop_group = None
        self.evaluator = None
        self.tracker = None

    # -- setup helpers ------------------------------------------------------------------------------
    def print_main(self, *args: Any) -> None:
        """Console output from the main process only (accelerator.print prints once per node)."""
        if self.accelerator.is_main_process:
            print(*args, flush=True)

    def _broadcast(self, value: Any) -> Any:
        """The main process's value on every rank (collective)."""
        from accelerate.utils import broadcast_object_list

        holder = [value]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(holder, from_process=0)
        return holder[0]

    def _resolve_run_dir(self) -> Path:
        run_cfg = self.config.run
        name = run_cfg.name
        resume = self.config.checkpoint.resume
        if not name and resume not in ("", "auto"):
            # --resume PATH of RUN_DIR/checkpoints/step_N continues in RUN_DIR.
            return Path(resume).expanduser().resolve().parent.parent
        if not name:
            if resume == "auto":
                self.print_main("checkpoint.resume=auto with no run.name: starting a new run "
                                       "(set run.name to resume a run)")
            name = self._broadcast(f"{datetime.now():%Y%m%d-%H%M%S}-{self.config.model.name}")
            self.config.run.name = name
        return Path(run_cfg.out_dir).expanduser() / name

    def _prepare_run_dir(self) -> None:
        self.accelerator.project_configuration.logging_dir = str(self.run_dir)  # tensorboard's folder
        if self.accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "samples").mkdir(exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(self.config))
        self.accelerator.wait_for_everyone()

    def _stop_agreed(self) -> bool:
        """All ranks agree to stop if any rank got the signal. A CPU (gloo) all-reduce, so on GPUs it
        does not synchronise the CUDA stream."""
        requested = self.stop_request.requested
        if self.accelerator.num_processes == 1:
            return requested
        if self._stop_group is None:
            backend = torch.distributed.get_backend()
            self._stop_group = (torch.distributed.group.WORLD if backend == "gloo"
                                else torch.distributed.new_group(backend="gloo"))
        flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._stop_group)
        return bool(flag.item())

    # -- the step -----------------------------------------------------------------------------------
    def train_step(self, real: torch.Tensor, z: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One micro-step on this process's real batch (B, 1, 28, 28) in [-1, 1]; z (B, latent_dim) optional.

        Returns the loss statistics as detached scalar tensors (no host sync here).
        """
        accelerator = self.accelerator
        config = self.config
        batch_size = real.shape[0]
        if z is None:
            z = torch.randn(batch_size, config.model.latent_dim, generator=noise_generator(
                config.run.seed, accelerator.process_index, self.state.micro_steps))
        z = z.to(accelerator.device, non_blocking=True)
        real = real.to(accelerator.device, non_blocking=True)
        if self.config.train.channels_last and self.is_conv:
            real = real.contiguous(memory_format=torch.channels_last)
        clip = config.optim.grad_clip_norm
        with accelerator.accumulate(self.G, self.D):
            with accelerator.autocast():
                fake = self.G(z)  # (B, 1, 28, 28)
            # D phase: real -> 1 (or 1 - label_smoothing), fake -> 0; G's graph is cut by detach().
            self.D_raw.requires_grad_(True)
            with accelerator.autocast():
                real_logits = self.D(real)  # (B,)
                fake_logits = self.D(fake.detach())  # (B,)
            d_loss, d_stats = discriminator_loss(real_logits, fake_logits, config.optim.label_smoothing)
            accelerator.backward(d_loss)
            if clip > 0 and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.D_raw.parameters(), clip)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
            # G phase: D frozen and unwrapped, so D gets no gradients and no all-reduce.
            self.D_raw.requires_grad_(False)
            with accelerator.autocast():
                g_logits = self.D_for_g(fake)  # (B,)
            g_loss, g_stats = generator_loss(g_logits)  # softplus(-logits) = -log D(G(z))
            accelerator.backward(g_loss)
            if clip > 0 and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.G_raw.parameters(), clip)
            self.opt_g.step()
            self.opt_g.zero_grad(set_to_none=True)
            self.D_raw.requires_grad_(True)
        if accelerator.sync_gradients:
            if self.G_ema is not None:
                self.G_ema.update_parameters(self.G_raw)
            self.state.step += 1
        self.state.micro_steps += 1
        self.state.images_seen += batch_size * accelerator.num_processes
        return {**d_stats, **g_stats}

    # -- sampling, evaluation, checkpoints ----------------------------------------------------------
    def sampling_generator(self) -> tuple[nn.Module, bool]:
        """G_ema when on (else G), unwrapped; and whether it is the EMA."""
        if self.G_ema is not None:
            return self.G_ema.module, True
        return self.G_raw, False

    @torch.no_grad()
    def write_samples(self, step: int) -> None:
        """Main process: a grid from the fixed noise, as PNG under the run folder and to the tracker."""
        if not self.accelerator.is_main_process or getattr(self, "_last_sample_step", None) == step:
            return
        self._last_sample_step = step
        G, _ = self.sampling_generator()
        was_training = G.training
        G.eval()
        images = G(self.fixed_z.to(self.accelerator.device))  # (num_samples, 1, 28, 28)
        G.train(was_training)
        grid = save_grid_png(images, self.run_dir / "samples" / f"step_{step:08d}.png")
        self.tracker.log_image("samples", grid, step)

    def evaluate(self, step: int) -> dict[str, float]:
        """FID & co of G_ema (or G) on every rank; the main process logs; the best FID gets a checkpoint."""
        from gan_dist.metrics.evaluate import Evaluator, format_table

        if self.evaluator is None:
            self.evaluator = Evaluator(self.config, self.accelerator)
            # The real-data floor (train vs test images), once, beside the generated results.
            self.tracker.log_scalars({f"eval_floor/{key}": value for key, value in self.evaluator.floor().items()},
                                     step)
        G, _ = self.sampling_generator()
        _sync_buffers([G])
        was_training = G.training
        G.eval()
        metrics = self.evaluator.evaluate(G, seed=self.config.run.seed)
        G.train(was_training)
        self.tracker.log_scalars({f"eval/{key}": value for key, value in metrics.items()}, step)
        self.print_main(f"eval at step {step} ({self.config.eval.num_samples} samples, "
                               f"{'G_ema' if self.G_ema is not None else 'G'}):\n"
                               + format_table(metrics, self.evaluator.floor()))
        fid = metrics.get("fid")
        if fid is not None and fid < self.state.best_fid:
            self.state.best_fid = fid
            self.save_checkpoint(step)
            if self.accelerator.is_main_process:
                mark_best(self.run_dir, step, metrics)
        return metrics

    def save_checkpoint(self, step: int) -> Path:
        """Every rank. Skips a step already saved (e.g. the end coinciding with the cadence)."""
        if getattr(self, "_last_saved_step", None) == step:
            return self._last_saved_path
        G_export = self.sampling_generator()
        # G_ema.module, not G_ema: AveragedModel.n_averaged lives on the CPU (NCCL cannot broadcast it)
        # and is the same on every rank.
        _sync_buffers([self.G_raw, self.D_raw] + ([self.G_ema.module] if self.G_ema is not None else []))
        meta = {"images_seen": self.state.images_seen, "run_id": self.state.run_id,
                "model": self.config.model.name, "saved_at": datetime.now().isoformat(timespec="seconds")}
        path = save_checkpoint(self.accelerator, self.run_dir, step, G_export, self.config, meta)
        if self.accelerator.is_main_process:
            apply_retention(self.run_dir, self.config.checkpoint.keep_last)
        self._last_saved_step, self._last_saved_path = step, path
        return path

    # -- the loop -----------------------------------------------------------------------------------
    def fit(self) -> int:
        """Train to train.num_steps (or until a stop signal). Returns the process exit status."""
        from gan_dist.data.loader import train_batches
        from gan_dist.data.shards import ensure_shards, train_urls

        accelerator = self.accelerator
        config = self.config
        num_steps = config.train.num_steps
        accumulation = config.train.gradient_accumulation_steps
        self._prepare_run_dir()
        # Node-local main processes prepare shards first (atomic writes make a shared FS safe too).
        if not config.data.train_urls:
            with accelerator.local_main_process_first():
                ensure_shards(config.data)
        start_step = self.state.step
        if start_step >= num_steps and (self.run_dir / DONE).is_file():
            # A requeued or repeated job of a finished run: nothing to do, nothing to rewrite.
            self.print_main(f"run {self.run_dir} already finished at step {start_step}; nothing to do")
            return 0
        self.tracker = make_tracker(accelerator, config, self.run_dir, self.state.run_id)
        global_batch = config.train.batch_size_per_process * accelerator.num_processes * accumulation
        self.print_main(
            f"run {self.run_dir} | {config.model.name} | {accelerator.num_processes} process(es) on "
            f"{accelerator.device} | mixed precision {accelerator.mixed_precision} | global batch {global_batch} "
            f"| steps {start_step}->{num_steps} | tracker {self.tracker.description}")
        batches = train_batches(config.data, train_urls(config.data), config.train.batch_size_per_process,
                                seed=config.run.seed, rank=accelerator.process_index,
                                world_size=accelerator.num_processes, start_step=start_step * accumulation)
        progress = None
        if accelerator.is_main_process and config.log.progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            progress = tqdm(total=num_steps, initial=start_step, unit="step", dynamic_ncols=True)
        stat_sums: dict[str, torch.Tensor] = {}
        steps_in_interval = 0
        interval_start = time.perf_counter()
        images_at_interval_start = self.state.images_seen
        stopped_early = False
        loop_start = time.perf_counter()
        self.stop_request.install()
        try:
            while self.state.step < num_steps:
                for _ in range(accumulation):
                    real, _labels = next(batches)
                    stats = self.train_step(real)
                    for key, value in stats.items():
                        stat_sums[key] = stat_sums.get(key, 0.0) + value.detach().float()
                    steps_in_interval += 1
                step = self.state.step
                if progress is not None:
                    progress.update(1)
                if step % config.log.log_every == 0 or step == num_steps:
                    # Collective (mean over ranks): every rank runs it.
                    means = accelerator.reduce(
                        torch.stack([stat_sums[k] for k in sorted(stat_sums)]) / steps_in_interval, "mean")
                    values = dict(zip(sorted(stat_sums), means.tolist(), strict=True))
                    elapsed_s = time.perf_counter() - interval_start
                    images_per_s = (self.state.images_seen - images_at_interval_start) / max(elapsed_s, 1e-9)
                    values.update({"images_per_s": images_per_s, "images_seen": self.state.images_seen,
                                   "lr_g": self.opt_g.param_groups[0]["lr"],
                                   "lr_d": self.opt_d.param_groups[0]["lr"]})
                    self.tracker.log_scalars({f"train/{k}": v for k, v in values.items()}, step)
                    line = (f"{step} [D loss: {values['d_loss']:.4f}, acc.: {100 * values['d_accuracy']:.2f}%] "
                            f"[G loss: {values['g_loss']:.4f}] D(x) {values['d_real']:.3f} "
                            f"D(G(z)) {values['d_fake']:.3f} | {images_per_s:.0f} img/s")
                    if progress is not None:
                        progress.write(line)
                    else:
                        self.print_main(line)
                    stat_sums, steps_in_interval = {}, 0
                    interval_start = time.perf_counter()
                    images_at_interval_start = self.state.images_seen
                sample_every = config.log.sample_every
                if step == 1 or (sample_every > 0 and step % sample_every == 0):
                    self.write_samples(step)
                eval_every = config.eval.eval_every
                if eval_every > 0 and step % eval_every == 0 and step != num_steps:
                    self.evaluate(step)
                if config.checkpoint.every > 0 and step % config.checkpoint.every == 0:
                    self.save_checkpoint(step)
                if self._stop_agreed():
                    stopped_early = step < num_steps
                    break
            step = self.state.step
            loop_s = time.perf_counter() - loop_start
            if stopped_early:
                path = self.save_checkpoint(step)
                self.print_main(f"preempted ({self.stop_request.signal_name or 'signal on another rank'}): "
                                  f"checkpoint at step {step} in {path}")
                return EXIT_STOPPED_EARLY
            self.write_samples(step)
            if config.eval.eval_every >= 0:
                self.evaluate(step)
            self.save_checkpoint(step)
            if accelerator.is_main_process:
                G_export, is_ema = self.sampling_generator()
                export_generator(G_export, config, self.run_dir, step, is_ema)
                steps_this_start = step - start_step
                write_json_atomic(self.run_dir / DONE, {
                    "step": step, "images_seen": self.state.images_seen, "run_id": self.state.run_id,
                    "num_processes": accelerator.num_processes, "best": read_best(self.run_dir),
                    # Throughput of this start's loop (steps, logging, samples, eval, checkpoints included).
                    "loop_s": loop_s,
                    "images_per_s": steps_this_start * global_batch / loop_s if steps_this_start else None,
                    "peak_rss_mb": peak_rss_mb()})
                self.print_main(f"done: {step} steps, {self.state.images_seen} images, run {self.run_dir}")
            return 0
        finally:
            self.stop_request.uninstall()
            if progress is not None:
                progress.close()

    def close(self, succeeded: bool = True) -> None:
        """Finish the trackers (main process), then wait for every rank, then destroy the process group.

        The main process must finish wandb before the others exit: torchrun answers a rank's non-zero
        exit (75 after preemption) by sending SIGTERM to the ranks still running. On the error path
        there is no barrier (a failed rank would never reach it).
        """
        from accelerate.state import AcceleratorState, GradientState

        accelerator = self.accelerator
        for tracker in accelerator.trackers:
            try:
                tracker.finish()
            except Exception as error:  # e.g. wandb's service killed by SLURM's SIGTERM to the whole step
                print(f"warning: closing the {tracker.name} tracker failed: {error!r}", file=sys.stderr)
        accelerator.trackers = []
        if self.tracker is not None:
            self.tracker.finish()
        if succeeded and accelerator.num_processes > 1:
            accelerator.wait_for_everyone()
        accelerator.end_training()
        # Accelerate keeps process-wide singleton state that refuses a second Accelerator with other
        # settings (e.g. `gan-dist bench` running fp32 then bf16 trainers in one process); clear it.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def train(config: Config) -> int:
    """`gan-dist train`: build the Trainer, run it, close trackers on every exit path."""
    trainer = Trainer(config)
    succeeded = False
    try:
        status = trainer.fit()
        succeeded = True
        return status
    finally:
        trainer.close(succeeded)
