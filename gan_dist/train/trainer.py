"""The Trainer: builds what a run needs once, then runs the loop. `train(config)` is the entry point.

Each piece has one job: the Accelerator and precision (gan_dist.distributed), the dataset and its batches
(gan_dist.data), G and D (gan_dist.models) as `Networks`, the objective (gan_dist.objectives), one step
(step.py), the run folder with resume and checkpoints (run_folder.py), statistics and the console
(logger.py), when things happen (cadence.py) and the learning rate (lr_schedule.py). `fit` reads as what
happens at each step. Rank rules: every rank runs the step, the log reduction, evaluation and checkpoints
(collectives); the main process alone writes grids, the tracker's files and the run folder's shared files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gan_dist.augment.build import build_augment
from gan_dist.checkpoint import Checkpointable, CheckpointError, GeneratorInfo, select_resume
from gan_dist.config import Config, ConfigError, to_yaml
from gan_dist.data.batches import make_batch_source, resolve_loader, training_images
from gan_dist.data.datasets import ResolvedDataset, resolve_dataset
from gan_dist.data.folder import scan_folder
from gan_dist.data.loader import resolve_num_workers
from gan_dist.data.shards import data_folder_settings
from gan_dist.data.sources import DataError
from gan_dist.distributed import (
    adam_implementation,
    adam_kwargs,
    broadcast_from_main,
    build_accelerator,
    configure_backends,
    precision_with_launcher,
    release_accelerator,
    resolve_mixed_precision,
    uses_cpu,
)
from gan_dist.metrics.evaluate import Evaluator, ensure_feature_net, evaluation_preview
from gan_dist.metrics.features import FeatureNetworkMissing
from gan_dist.metrics.prdc import TooFewSamples, check_enough_samples
from gan_dist.models.build import build_g_regularizer, build_models
from gan_dist.objectives.objective import build_objective
from gan_dist.progress import TrainState, elastic_batch
from gan_dist.registry.architectures import uses_channels_last
from gan_dist.registry.datasets import dataset_spec
from gan_dist.sampling import grid_inputs, sample_images, save_grid_png
from gan_dist.tracking import make_tracker, new_run_id
from gan_dist.train.cadence import Cadence
from gan_dist.train.logger import Diverged, MetricLogger
from gan_dist.train.lr_schedule import LinearDecay
from gan_dist.train.run_folder import RunFolder, RunFolderInUse, RunRecord, resolve_run_path
from gan_dist.train.step import EMA, CUDAGraphStep, GANStep, Networks, NoiseSource, StepSettings, derive_seed

# Exit status of a run stopped early by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL):
# "try again" — the SLURM scripts requeue and the next start resumes with --resume auto.
EXIT_STOPPED_EARLY = 75
# Exit status of a run whose losses became inf/nan: nothing non-finite was saved; not requeued.
EXIT_DIVERGED = 3
# Exit status of a run stopped by Ctrl-C (SIGINT) after writing its checkpoint: 128 + SIGINT, as a shell
# reports a process killed by it; a user's stop, so not 75 (which asks a scheduler to requeue).
EXIT_INTERRUPTED = 130
GRID_SEED_OFFSET = 12345  # the sample grids' fixed noise: seed run.seed + this


class StopRequest:
    """Set by SIGUSR1 / SIGTERM (SLURM's warning before a time limit or preemption) and by SIGINT (Ctrl-C).

    The handler only sets a flag; the loop finishes the current step, then all ranks agree. After the first
    Ctrl-C a second one raises KeyboardInterrupt at once (Python's own handler is put back): `gan-dist`
    then exits 130 without a new checkpoint (the last complete one stays).
    """

    def __init__(self, announce: bool = True) -> None:
        self.signal_name: str | None = None
        self.announce = announce  # say on stderr, once, that a Ctrl-C was heard (the main process)

    @contextmanager
    def installed(self) -> Any:
        signums = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
        previous = {signum: signal.signal(signum, self._handle) for signum in signums}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C aborts at once
            if self.announce:
                print("Ctrl-C: finishing the step and writing a checkpoint (Ctrl-C again to stop at once)",
                      file=sys.stderr, flush=True)
        if self.signal_name is None or signum == signal.SIGINT:
            self.signal_name = name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MiB) of this process and of its finished children (e.g. loader workers)."""
    import resource

    kib = 1024.0  # ru_maxrss is in KiB on Linux
    return {"process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / kib}


def _sync_buffers(modules: list[nn.Module]) -> None:
    """Broadcast BatchNorm running stats from rank 0 (DDP runs with broadcast_buffers=False, see docs/design-notes.md),
    so that evaluation, samples and checkpoints see the same G on every rank. Collective: every rank."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for module in modules:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer.data, src=0)


def _all_finite(modules: list[nn.Module]) -> bool:
    """Whether every parameter and buffer is finite (one host sync: checked before each checkpoint)."""
    sums = [tensor.detach().float().sum() for module in modules for tensor in module.state_dict().values()
            if tensor.is_floating_point()]
    return bool(torch.isfinite(torch.stack(sums).sum()).item()) if sums else True


def global_batch_size(config: Config, num_processes: int) -> int:
    """Real images per optimizer step: train.batch_size_per_process x processes x accumulation steps."""
    return config.train.batch_size_per_process * num_processes * config.train.gradient_accumulation_steps


def trainable_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


class Trainer:
    """Builds the parts for `config` (on every rank) and runs the loop (`fit`)."""

    def __init__(self, config: Config) -> None:
        self._clock_start = time.perf_counter()  # wall-clock of this start, start-up included
        self.config = config
        train_cfg = config.train
        precision = resolve_mixed_precision(precision_with_launcher(train_cfg.mixed_precision), uses_cpu(config.dist))
        accelerator = build_accelerator(config.dist, precision,
                                        log_with=None if config.log.tracker == "none" else config.log.tracker,
                                        project_dir=config.run.out_dir, cuda_graph=train_cfg.cuda_graph)
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        try:
            self._build(config)
        except BaseException:
            if getattr(self, "run", None) is not None:
                self.run.release()
            release_accelerator(accelerator)  # a failed start leaves no process group behind
            raise

    def _build(self, config: Config) -> None:
        from accelerate.utils import set_seed  # accelerate is imported lazily everywhere (~1 s)

        accelerator, train_cfg = self.accelerator, config.train
        self.run: RunFolder | None = None
        configure_backends(accelerator.device, config.run.deterministic)
        self._check_device_features()
        run_path = resolve_run_path(config, accelerator)  # a --resume PATH without run.name stops here (exit 2)

        # A run that will evaluate has its feature network's weights now (fetched, verified), or stops here in
        # one line: never at its first evaluation.
        ensure_feature_net(config, accelerator)
        # The data first: its shape and classes decide the models; node-local main processes prepare
        # missing shards first (atomic writes make a shared filesystem safe too).
        with accelerator.local_main_process_first():
            self.dataset = resolve_dataset(config.data)
        if config.data.train_subset > self.dataset.train_size:
            raise ConfigError(f"key 'data.train_subset': {config.data.train_subset} is more than the "
                              f"{self.dataset.train_size} images of {self.dataset.name}'s train split")
        self.train_images = training_images(self.dataset, config.data)  # what an epoch is
        self.loader = resolve_loader(self.dataset, config.data)
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.num_workers = resolve_num_workers(config.data.num_workers, local_processes) if self.loader == "stream" else 0
        if train_cfg.cuda_graph and self.loader != "memory":
            raise ConfigError(f"key 'train.cuda_graph': needs the train split on the device, but it does not fit "
                              f"in data.memory_max_mb={config.data.memory_max_mb}; raise it or turn the graph off")

        # Before anything is written (a resume on another process count keeps the checkpoint's global batch,
        # which passed this check at its own start; it is checked again once known).
        self._check_global_batch(global_batch_size(config, accelerator.num_processes))

        # Same initial weights on every rank (DDP also broadcasts rank 0's at prepare).
        set_seed(config.run.seed)
        G, D = build_models(config.model, self.dataset.image_shape, self.dataset.num_classes)
        self.num_classes = G.num_classes
        self.objective = build_objective(config.loss)

        # Evaluation that cannot run is off for the run, said once (not a crash after the last step).
        self._evaluation_off_reason: str | None = None
        if config.eval.eval_every >= 0:
            try:
                check_enough_samples(self.dataset.name, self.dataset.test_size, self.dataset.train_size,
                                     config.eval.num_samples)
            except TooFewSamples as error:
                self._evaluation_off_reason = str(error)
                self.print_main(f"evaluation is off for this run: {error}")

        # Only now, with the config known to build, is anything written into the run folder: its lock
        # first (a second training of the same folder stops here, on every rank, exit 1).
        self.run = RunFolder(run_path, accelerator)
        for note in self.run.prepare(config):
            self.print_main(note)

        self.networks = self._build_networks(G, D)
        self.noise = NoiseSource(config.run.seed, accelerator.process_index, accelerator.device,
                                 accelerator.num_processes)
        # What D sees goes through the augmentation; G's lazy regularizer (StyleGAN2's path length). Both keep
        # state a resume must restore (ADA's p, the mean path length).
        augment = build_augment(config.augment)
        self.augment = augment.to(accelerator.device) if augment is not None else None
        g_regularizer = build_g_regularizer(config.model)
        self.g_regularizer = g_regularizer.to(accelerator.device) if g_regularizer is not None else None
        extra = {name: holder for name, holder in (("augment", self.augment), ("g_regularizer", self.g_regularizer))
                 if holder is not None and holder.state_tensors()}
        self.state = TrainState()
        self.counters = self.state.counters
        nets = self.networks
        self.checkpointable = Checkpointable(
            G=nets.G, D=nets.D, G_ema=nets.ema.module if nets.ema is not None else None, opt_g=nets.opt_g,
            opt_d=nets.opt_d, scaler=accelerator.scaler, noise=self.noise, state=self.state,
            generator_info=self._generator_info,
            base_lrs={"optimizer_G": config.optim.lr_g, "optimizer_D": config.optim.lr_d}, extra=extra)

        self.resumed_from = self._resume()
        if self.resumed_from is not None and not self.run.owns(self.resumed_from):
            # A new run from another run's checkpoint (only read): its own tracker run and best FID.
            self.state.run_id, self.state.best_fid = "", None
            self.print_main(f"new run {self.run.path} from {self.resumed_from}, which was only read")
        self._elapsed_before = self.state.elapsed_s  # earlier starts' wall-clock, up to the checkpoint
        self.batch_size_per_process, self.accumulation_steps = self._batch_layout()
        self.global_batch = self.batch_size_per_process * accelerator.num_processes * self.accumulation_steps
        self.state.global_batch_size = self.global_batch
        self._check_global_batch(self.global_batch)
        if self.resumed_from is None:
            set_seed(config.run.seed, device_specific=True)  # per-rank dropout RNG; restored on resume
        elif self.run.fresh_streams:
            # A rank the checkpoint's run did not have: its own streams, from (seed, rank, step).
            set_seed(derive_seed(config.run.seed, "rank", accelerator.process_index, self.counters.step) % 2**32)
        if not self.state.run_id:
            self.state.run_id = broadcast_from_main(accelerator, new_run_id())

        settings = StepSettings(latent_dim=config.model.latent_dim, num_classes=self.num_classes,
                                d_steps_per_g=train_cfg.d_steps_per_g, accumulation_steps=self.accumulation_steps,
                                grad_clip_norm=config.optim.grad_clip_norm, channels_last=self._channels_last)
        self.step = GANStep(accelerator, nets, self.objective, self.noise, self.counters, settings,
                            augment=self.augment, g_regularizer=self.g_regularizer)
        if train_cfg.cuda_graph:
            self.step = CUDAGraphStep(self.step)  # type: ignore[assignment]
        self.lr_schedule = LinearDecay([nets.opt_d, nets.opt_g], config.optim.lr_decay_start, train_cfg.num_steps)
        self.cadence = Cadence.from_config(config)
        self.record = self._run_record()
        self.run.write_record(self.record.to_dict())
        self.stop_request = StopRequest()
        self.tracker: Any = None
        self._progress: Any = None
        self.logger: MetricLogger | None = None
        self.evaluator: Evaluator | None = None
        self._last_saved: tuple[int, Path] | None = None
        self._last_grid_step: int | None = None
        self._eval_s_total = 0.0

    def _run_record(self) -> RunRecord:
        accelerator, nets = self.accelerator, self.networks
        return RunRecord(
            run_name=self.run.path.name, run_dir=str(self.run.path), run_id=self.state.run_id,
            mixed_precision=accelerator.mixed_precision, num_processes=accelerator.num_processes,
            device=str(accelerator.device), adam_implementation=self.adam_implementation,
            dataset=self.dataset.name, loader=self.loader, num_workers=self.num_workers,
            image_shape=self.dataset.image_shape, train_images=self.train_images,
            num_classes=self.num_classes, global_batch_size=self.global_batch, start_step=self.counters.step,
            resumed_from=str(self.resumed_from) if self.resumed_from else None,
            parameters={"G": trainable_parameters(nets.G), "D": trainable_parameters(nets.D)})

    # -- construction helpers --------------------------------------------------------------------------
    def _check_device_features(self) -> None:
        train_cfg, device = self.config.train, self.accelerator.device
        if train_cfg.sync_batchnorm and self.accelerator.num_processes > 1 and device.type != "cuda":
            raise ConfigError("key 'train.sync_batchnorm': true needs CUDA GPUs (PyTorch's SyncBatchNorm is "
                              "GPU-only); set it to false on CPUs")
        if train_cfg.cuda_graph and device.type != "cuda":
            raise ConfigError("key 'train.cuda_graph': needs a CUDA GPU (this run is on "
                              f"{device.type}); set it to false, or use train.compile")
        if train_cfg.cuda_graph and self.accelerator.num_processes > 1:
            raise ConfigError("key 'train.cuda_graph': captures one process's step without DDP; with "
                              f"{self.accelerator.num_processes} processes set it to false (train.compile works)")
        if train_cfg.cuda_graph and self.accelerator.scaler is not None:
            # config.validate refuses a literal fp16; this catches auto -> fp16 (a GPU without bf16) and
            # `accelerate launch --mixed_precision fp16`, which would otherwise capture the scaler silently.
            raise ConfigError(
                "keys 'train.cuda_graph' and 'train.mixed_precision': this run resolved to "
                f"{self.accelerator.mixed_precision} (train.mixed_precision={train_cfg.mixed_precision}, or "
                "accelerate launch --mixed_precision), and fp16's GradScaler cannot be captured (its inf checks "
                "sync with the host); set train.mixed_precision=bf16 (or no), or train.cuda_graph=false")

    @property
    def _channels_last(self) -> bool:
        """train.channels_last where the architecture has convolutions to gain from it."""
        return uses_channels_last(self.config.model, self.config.train.channels_last)

    def _build_networks(self, G: nn.Module, D: nn.Module) -> Networks:
        accelerator, config = self.accelerator, self.config
        if self._channels_last:
            G.to(memory_format=torch.channels_last)
            D.to(memory_format=torch.channels_last)
        if config.train.sync_batchnorm and accelerator.num_processes > 1:
            G = nn.SyncBatchNorm.convert_sync_batchnorm(G)  # before prepare (docs/design-notes.md)
            D = nn.SyncBatchNorm.convert_sync_batchnorm(D)
        G, D = G.to(accelerator.device), D.to(accelerator.device)
        optim_cfg = config.optim
        self.adam_implementation = adam_implementation(optim_cfg.implementation, accelerator.device)
        adam = {"betas": (optim_cfg.beta1, optim_cfg.beta2), "weight_decay": optim_cfg.weight_decay,
                **adam_kwargs(self.adam_implementation)}
        if config.train.cuda_graph:
            adam["capturable"] = True
        opt_g = torch.optim.Adam(G.parameters(), lr=optim_cfg.lr_g, **adam)
        opt_d = torch.optim.Adam(D.parameters(), lr=optim_cfg.lr_d, **adam)
        # One prepare for all four, returned in the same order (accelerate #245). prepare patches autocast
        # into G.forward and D.forward themselves, so D called without its DDP wrapper has it too.
        G_wrapped, D_wrapped, opt_g, opt_d = accelerator.prepare(G, D, opt_g, opt_d)
        D_in_g_phase = D  # the G phase calls D without its DDP wrapper (see the step's docstring)
        if config.train.compile:
            # Compile the DDP-wrapped modules, not the reverse: TorchDynamo's DDPOptimizer then splits the
            # graph at DDP's bucket boundaries, so the all-reduce overlaps the backward (DDP around a compiled
            # module gets every gradient at once, at the end of one opaque backward).
            compiled_D = torch.compile(D_wrapped)
            D_in_g_phase = compiled_D if D_wrapped is D else torch.compile(D)  # one process: the same module
            G_wrapped, D_wrapped = torch.compile(G_wrapped), compiled_D
        ema = EMA(G, config.train.ema_decay, config.train.ema_warmup_steps) if config.train.ema_decay > 0 else None
        return Networks(G=G, D=D, G_wrapped=G_wrapped, D_wrapped=D_wrapped, D_in_g_phase=D_in_g_phase,
                        opt_g=opt_g, opt_d=opt_d, ema=ema, compiled=config.train.compile)

    def _check_global_batch(self, global_batch: int) -> None:
        if self.train_images < global_batch:
            what = "data.train_subset" if self.config.data.train_subset else f"the train split of {self.dataset.name}"
            raise ConfigError(f"data: {what} has {self.train_images} images, fewer than one global batch "
                              f"({global_batch} = train.batch_size_per_process x "
                              "processes x train.gradient_accumulation_steps): add images or lower the batch size")

    def _batch_layout(self) -> tuple[int, int]:
        """(images per process, accumulation steps): the config's, unless this start resumed a checkpoint
        written by another number of processes; then the run's global batch is kept (elastic resume) and the
        per-process batch, else the accumulation, adapts. ConfigError naming both keys when neither divides."""
        train_cfg, num_processes = self.config.train, self.accelerator.num_processes
        configured = (train_cfg.batch_size_per_process, train_cfg.gradient_accumulation_steps)
        saved_processes = self.run.loaded_processes
        if self.resumed_from is None or saved_processes in (None, num_processes):
            return configured
        saved_global = self.state.global_batch_size or saved_processes * configured[0] * configured[1]
        try:
            layout = elastic_batch(saved_global, num_processes, *configured)
        except ValueError as error:
            raise ConfigError(f"keys 'train.batch_size_per_process' and 'train.gradient_accumulation_steps': "
                              f"{self.resumed_from} was written by {saved_processes} process(es) training a "
                              f"global batch of {saved_global}; on {num_processes}: {error}. Resume on a "
                              "process count that divides it") from None
        if self.config.train.cuda_graph and layout[1] != 1:
            raise ConfigError(f"key 'train.cuda_graph': keeping the global batch of {saved_global} on "
                              f"{num_processes} process(es) needs {layout[1]} accumulation steps, which a graph "
                              "cannot capture; resume on a process count that divides the global batch")
        note = (f"elastic resume: {saved_processes} -> {num_processes} process(es), the global batch stays "
                f"{saved_global}: {layout[0]} images per process x {layout[1]} accumulation step(s) "
                f"(configured {configured[0]} x {configured[1]}); ranks without saved streams draw their own "
                "from (run.seed, rank, step)")
        self.print_main(note)
        self.run.resume_notes.append(note)
        return layout

    def _generator_info(self, step: int) -> GeneratorInfo:
        return GeneratorInfo(model=self.config.model, dataset=self.dataset.name,
                             image_shape=self.dataset.image_shape, num_classes=self.num_classes, step=step,
                             is_ema=self.networks.ema is not None)

    def _resume(self) -> Path | None:
        """Load the checkpoint that checkpoint.resume selects (verified; 'auto' falls back past damaged ones)."""
        resume = self.config.checkpoint.resume
        path = self.run.resume(resume, self.checkpointable)
        if path is None:
            if resume == "auto":
                self.print_main(f"checkpoint.resume=auto: no checkpoint in {self.run.path}; starting fresh")
            return None
        self.print_main(f"resumed from {path} at step {self.counters.step}")
        if self.networks.ema is not None:
            self.networks.ema.num_updates = self.state.ema_updates
        if resume != "auto" and self.run.owns(path):
            for moved in self.run.set_aside_newer(self.counters.step):
                self.print_main(f"newer checkpoint of the abandoned trajectory set aside: {moved}")
        if self.run.owns(path):
            self._take_best_from_record()
        return path

    def _take_best_from_record(self) -> None:
        """The run's best FID from checkpoints/best.json when it is better than the checkpoint's own: the final
        evaluation runs after the final checkpoint (a failing evaluation never costs it), so that checkpoint
        does not hold the FID of its own step. Only a best at or before the resumed step counts."""
        best = self.run.read_best()
        fid = best.get("metrics", {}).get("fid") if isinstance(best.get("metrics"), dict) else None
        step = best.get("step")
        if (isinstance(fid, (int, float)) and not isinstance(fid, bool) and math.isfinite(fid)
                and isinstance(step, int) and step <= self.counters.step
                and (self.state.best_fid is None or fid < self.state.best_fid)):
            self.state.best_fid = float(fid)

    def load_checkpoint(self, path: Path) -> None:
        """Every rank, mid-run: restore the run's state from `path` (verified first) and drop what a captured
        CUDA graph recorded of the state it replaces (the optimizer's state tensors are new objects)."""
        verified = self.run.on_main(lambda: select_resume(self.run.path, str(path)))
        assert verified is not None
        self.run.load(verified, self.checkpointable)
        if self.networks.ema is not None:
            self.networks.ema.num_updates = self.state.ema_updates
        self.step.invalidate()

    def elapsed_s(self) -> float:
        """Wall-clock seconds of the whole run: earlier starts (up to the resumed checkpoint) and this one."""
        return self._elapsed_before + time.perf_counter() - self._clock_start

    # -- small collective helpers ------------------------------------------------------------------------
    def print_main(self, *args: Any) -> None:
        """Console output from the main process only (accelerator.print prints once per node)."""
        if self.is_main:
            print(*args, flush=True)

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self) -> int:
        """Train to train.num_steps (or until a stop signal). Returns the process exit status."""
        config = self.config
        num_steps = config.train.num_steps
        if self.run.finished(num_steps, self.counters.step):
            # A requeued or repeated job of a finished run: nothing to do, nothing to rewrite.
            self.print_main(f"run {self.run.path} already finished at step {self.counters.step}; nothing to do")
            return 0
        self.run.remove_done()
        self.stop_request.announce = self.is_main
        self._start_logging()
        batches = self.batch_source()
        start_step = self.counters.step
        loop_start = time.perf_counter()
        try:
            with self.stop_request.installed():
                while self.counters.step < num_steps:
                    self.lr_schedule.apply(self.counters.step)
                    for stats in self.step.run(batches):
                        self.logger.add(stats, self.counters.step)
                    step = self.counters.step
                    self._progress_tick()
                    # One process reads its own flag every step; several agree at the log cadence, the
                    # flag riding on the log's all-reduce (SLURM's USR1 comes minutes before the end).
                    stop = self.stop_request.requested and self.accelerator.num_processes == 1
                    if self.cadence.log(step):
                        stop = self._log(step) or stop
                    if self.cadence.sample(step):
                        self.write_samples(step)
                    if self.cadence.evaluate(step):
                        self.evaluate(step)
                    if self.cadence.checkpoint(step):
                        self.save_checkpoint(step)
                    if stop:
                        return self._stopped_early(step)
                return self._finish(start_step, time.perf_counter() - loop_start)
        except Diverged as error:
            return self._diverged(error)
        finally:
            batches.close()
            if self._progress is not None:
                self._progress.close()

    def _start_logging(self) -> None:
        config = self.config
        self.accelerator.project_configuration.logging_dir = str(self.run.path)  # tensorboard's folder
        self.tracker = make_tracker(self.accelerator, config, self.run.path, self.state.run_id)
        self._progress = None
        if self.is_main and config.log.progress_bar and sys.stderr.isatty():
            from tqdm import tqdm

            self._progress = tqdm(total=config.train.num_steps, initial=self.counters.step, unit="step",
                                  dynamic_ncols=True)
        self.logger = MetricLogger(self.accelerator, self.tracker, self.objective.describe, self.is_main,
                                   self._progress)
        self.logger.start_interval(self.counters.images_seen)
        record = self.record
        self.print_main(
            f"run {self.run.path} | {config.model.name} on {record.dataset} {'x'.join(map(str, record.image_shape))}"
            f"{f', {self.num_classes} classes ({config.model.conditioning})' if self.num_classes else ''} | "
            f"loss {config.loss.name} | {record.num_processes} process(es) on {record.device} | mixed precision "
            f"{record.mixed_precision} | global batch {record.global_batch_size} | data.loader {record.loader} "
            f"| steps {self.counters.step}->{config.train.num_steps} | tracker {self.tracker.description}")

    def batch_source(self) -> Any:
        config = self.config
        data = dataclasses.replace(config.data, num_workers=self.num_workers)  # resolved (run.json), not the user's
        batches = make_batch_source(self.dataset, data, self.batch_size_per_process,
                                    seed=config.run.seed, rank=self.accelerator.process_index,
                                    world_size=self.accelerator.num_processes, start_sample=self.counters.images_seen,
                                    device=self.accelerator.device, channels_last=self._channels_last)
        subset = getattr(batches, "subset", None)
        if subset is not None and self.record.train_subset != subset:  # the draw, recorded once it is made
            self.record.train_subset = subset
            self.run.update_record(self.record.to_dict())
        return batches

    def _progress_tick(self) -> None:
        if self._progress is not None:
            self._progress.update(1)

    def _log(self, step: int) -> bool:
        """The log line (collective); returns whether any rank was asked to stop."""
        _, stop = self.logger.log(step, self.counters.images_seen, {
            "epoch": self.counters.images_seen / self.train_images,
            "lr_g": self.networks.opt_g.param_groups[0]["lr"], "lr_d": self.networks.opt_d.param_groups[0]["lr"]},
            stop_requested=self.stop_request.requested)
        return stop

    def _stopped_early(self, step: int) -> int:
        path = self.save_checkpoint(step)
        if self.stop_request.signal_name == "SIGINT":
            self.print_main(f"interrupted (SIGINT): checkpoint at step {step} in {path}; continue with "
                            "--resume auto")
            return EXIT_INTERRUPTED
        self.print_main(f"preempted ({self.stop_request.signal_name or 'signal on another rank'}): "
                        f"checkpoint at step {step} in {path}")
        return EXIT_STOPPED_EARLY

    def _diverged(self, error: Diverged) -> int:
        newest = self.run.newest_checkpoint()
        if self.is_main:
            print(f"gan-dist train: {error}; nothing after it was saved. Newest good checkpoint: "
                  f"{newest or 'none'}. Change the recipe (e.g. lower optim.lr_d / optim.lr_g, set "
                  "optim.grad_clip_norm) and continue with --resume auto.", file=sys.stderr, flush=True)
        return EXIT_DIVERGED

    def _finish(self, start_step: int, loop_s: float) -> int:
        """The end of the run: grid, checkpoint and export first, then the final evaluation, whose failure
        is one warning line: a failing evaluation never costs the checkpoint or the export."""
        step = self.counters.step
        self.logger.check_finite()
        self.write_samples(step)
        self.save_checkpoint(step)
        self.run.export(self.networks.G_for_samples, self._generator_info(step))
        if self.cadence.evaluate_at_end():
            try:
                self.evaluate(step)
            except Diverged:
                raise
            except Exception as error:  # e.g. a feature network or metric that fails on this data
                self.print_main(f"warning: the final evaluation failed ({type(error).__name__}: "
                                f"{str(error).splitlines()[0] if str(error) else ''}); the checkpoint and the "
                                f"exported generator were written before it; retry with `gan-dist eval --run "
                                f"{self.run.path}`")
        steps_this_start = step - start_step
        images_this_start = steps_this_start * self.global_batch * self.config.train.d_steps_per_g
        self.run.write_done({
            "step": step, "images_seen": self.counters.images_seen, "run_id": self.state.run_id,
            "num_processes": self.accelerator.num_processes,
            # Throughput of this start's loop (steps, logging, samples, eval, checkpoints included).
            "loop_s": loop_s, "images_per_s": images_this_start / loop_s if steps_this_start else None,
            "elapsed_s": self.elapsed_s(), "eval_s_this_start": self._eval_s_total,
            "peak_rss_mb": peak_rss_mb()})
        self.print_main(f"done: {step} steps, {self.counters.images_seen} images, run {self.run.path}")
        return 0

    # -- samples, evaluation, checkpoints -----------------------------------------------------------------
    def write_samples(self, step: int) -> None:
        """The fixed-noise grid (one row per class for a conditional G), PNG and tracker, drawn by the main
        process; every rank calls it (a failure there, a full disk, is raised on every rank)."""
        if self._last_grid_step == step:
            return
        self._last_grid_step = step

        def draw() -> None:
            G = self.networks.G_for_samples
            z, labels, columns = grid_inputs(G, self.config.log.num_samples, self.config.run.seed + GRID_SEED_OFFSET)
            with self._training_rng_untouched():
                images = sample_images(G, z, labels, device=self.accelerator.device)  # (N, C, H, W), one batch
            grid = save_grid_png(images, self.run.path / "samples" / f"step_{step:08d}.png", columns=columns,
                                 pixel_scale=self.config.log.grid_pixel_scale)
            self.tracker.log_image("samples", grid, step)

        self.run.on_main(draw)

    def _training_rng_untouched(self) -> Any:
        """A context in which G may draw from torch's global RNG (StyleGAN2's random noise inputs) without
        moving the training stream: the run stays a function of its seed whatever log.sample_every and
        eval.eval_every are, and a resumed run (whose last start wrote samples before its final
        checkpoint) continues the uninterrupted one exactly."""
        device = self.accelerator.device
        return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [],
                                     device_type=device.type if device.type == "cuda" else "cuda")

    def _make_evaluator(self) -> Any:
        """The Evaluator, or None with the reason said once (e.g. an unlabeled folder without eval.feature_net)."""
        try:
            evaluator = Evaluator(self.config, self.accelerator, self.dataset)
        except (FeatureNetworkMissing, TooFewSamples) as error:
            self._evaluation_off_reason = str(error)
            self.print_main(f"evaluation is off for this run: {error}")
            return None
        floor = evaluator.floor()
        self.tracker.log_scalars(evaluator.tracker_scalars(floor, "eval_floor"), self.counters.step)
        return evaluator

    def evaluate(self, step: int) -> dict[str, float]:
        """FID & co of G_ema (or G) on every rank; the main process logs; the best FID gets a checkpoint."""
        self.logger.check_finite()  # a diverged G is not worth evaluating (nor its NaN images)
        if self._evaluation_off_reason is not None:
            return {}
        if self.evaluator is None:
            self.evaluator = self._make_evaluator()
            if self.evaluator is None:
                return {}
        G = self.networks.G_for_samples
        _sync_buffers([G])
        with self._training_rng_untouched():
            metrics = self.evaluator.evaluate(G, seed=self.config.run.seed)
        self.tracker.log_scalars(self.evaluator.tracker_scalars(metrics), step)  # keys name the protocol
        notes = {key: note for key, note in (("intra_fid", self.evaluator.last_intra_fid_note),
                                             ("floor_intra_fid", self.evaluator.floor_intra_fid_note)) if note}
        self.print_main(f"eval at step {step} ({self.config.eval.num_samples} samples, "
                        f"{'G_ema' if self.networks.ema is not None else 'G'}):\n" + self.evaluator.table(metrics)
                        + "".join(f"\nnote ({key.replace('_', ' ')}): {note}" for key, note in notes.items()))
        self._eval_s_total += metrics.get("eval_seconds", 0.0)
        self.run.append_eval({"step": step, "images_seen": self.counters.images_seen,
                              "elapsed_s": self.elapsed_s(), "eval_s_total_this_start": self._eval_s_total,
                              "num_samples": self.config.eval.num_samples, "metrics": metrics,
                              "floor": self.evaluator.floor(), "protocol": self.evaluator.protocol(),
                              **({"notes": notes} if notes else {})})
        fid = metrics.get("fid")
        if fid is not None and (self.state.best_fid is None or fid < self.state.best_fid):
            self.state.best_fid = fid
            self.save_checkpoint(step)
            self.run.mark_best(step, metrics)
        self.logger.start_interval(self.counters.images_seen)
        return metrics

    def save_checkpoint(self, step: int) -> Path:
        """Every rank. Refuses anything non-finite (raises Diverged); skips a step already saved."""
        if self._last_saved is not None and self._last_saved[0] == step:
            return self._last_saved[1]
        self.logger.check_finite()
        nets = self.networks
        modules = [nets.G, nets.D] + ([nets.ema.module] if nets.ema is not None else [])
        _sync_buffers(modules)
        if not _all_finite(modules):
            raise Diverged(step, "a model parameter", float("nan"))
        self.state.ema_updates = nets.ema.num_updates if nets.ema is not None else 0
        self.state.elapsed_s = self.elapsed_s()
        meta = {"images_seen": self.counters.images_seen, "run_id": self.state.run_id,
                "model": self.config.model.name, "dataset": self.dataset.name,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        path = self.run.save(step, self.checkpointable, meta, self.config.checkpoint.keep_last)
        self._last_saved = (step, path)
        self.logger.start_interval(self.counters.images_seen)
        return path

    def close(self, succeeded: bool = True) -> None:
        """Finish the trackers (main process), then wait for every rank, then destroy the process group.

        The main process must finish wandb before the others exit: torchrun answers a rank's non-zero
        exit (75 after preemption) by sending SIGTERM to the ranks still running. On the error path
        there is no barrier (a failed rank would never reach it).
        """
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
        if self.run is not None:
            self.run.release()  # after every rank is done with the folder
        release_accelerator(accelerator)


def train(config: Config) -> int:
    """`gan-dist train`: build the Trainer, run it, close trackers on every exit path."""
    try:
        trainer = Trainer(config)
    except CheckpointError as error:
        print(f"gan-dist train: cannot resume: {error}", file=sys.stderr, flush=True)
        return 1
    except RunFolderInUse as error:
        if int(os.environ.get("RANK", "0")) == 0:  # the same line on every rank: said once
            print(f"gan-dist train: {error}", file=sys.stderr, flush=True)
        return 1
    succeeded = False
    try:
        status = trainer.fit()
        succeeded = True
        return status
    except CheckpointError as error:
        print(f"gan-dist train: checkpoint error: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        trainer.close(succeeded)


def _dataset_preview(config: Config) -> tuple[dict[str, Any], ResolvedDataset | None]:
    """What the data is, read without writing: the resolved dataset when its shards exist, else the spec's
    facts (a folder: listed, not converted)."""
    try:
        dataset = resolve_dataset(config.data, prepare=False)
        return {"dataset": dataset.name, "image_shape": list(dataset.image_shape), "num_classes": dataset.num_classes,
                "train_size": dataset.train_size, "test_size": dataset.test_size,
                "shards": str(dataset.directory) if dataset.directory else "remote"}, dataset
    except DataError as error:
        spec = dataset_spec(config.data.dataset)
        preview: dict[str, Any] = {"dataset": spec.name, "shards": f"not written yet ({error}); `train` writes them"}
        if spec.image_shape is not None or spec.benchmark is not None:
            shape = spec.image_shape or spec.archive_image_shape(config.data.image_size, config.data.crop)
            preview.update(image_shape=list(shape), num_classes=spec.classes_in_shards,
                           **{f"{split}_size": size for split, size in (spec.official_split_sizes or {}).items()})
        else:
            settings = data_folder_settings(config.data)
            listing = scan_folder(settings.directory)
            preview.update(image_shape=[settings.channels, settings.image_size, settings.image_size],
                           num_classes=listing.num_classes, images=len(listing.files))
        return preview, None


def dry_run(config: Config) -> int:
    """`gan-dist train --dry-run`: print the resolved config and the run record a start would write (device,
    precision, loader, global batch, dataset shape, parameter counts of G and D, the evaluation protocol and
    where its weights would come from), then exit 0. Nothing is written, fetched or downloaded: no shards, no
    run folder, no tracker, no weights (G and D are built on the meta device: no memory)."""
    precision = resolve_mixed_precision(precision_with_launcher(config.train.mixed_precision), uses_cpu(config.dist))
    accelerator = build_accelerator(config.dist, precision)
    try:
        preview, dataset = _dataset_preview(config)
        with torch.device("meta"):
            G, D = build_models(config.model, tuple(preview["image_shape"]), preview["num_classes"] or 0)
        num_processes = accelerator.num_processes
        record = {
            "run_dir": str(resolve_run_path(config, accelerator)), "device": str(accelerator.device),
            "num_processes": num_processes, "mixed_precision": accelerator.mixed_precision,
            "adam_implementation": adam_implementation(config.optim.implementation, accelerator.device),
            "loader": resolve_loader(dataset, config.data) if dataset is not None else f"{config.data.loader} "
                      "(auto decides once the shards exist)",
            "global_batch_size": global_batch_size(config, num_processes), **preview,
            "conditional_classes": G.num_classes,
            "parameters": {"G": trainable_parameters(G), "D": trainable_parameters(D)},
            "resume": config.checkpoint.resume or "(fresh start)",
            "evaluation": evaluation_preview(config),
        }
        if accelerator.is_main_process:
            print("# resolved config\n" + to_yaml(config).rstrip())
            print("# run record (not written: --dry-run)\n" + json.dumps(record, indent=2))
    finally:
        release_accelerator(accelerator)
    return 0
