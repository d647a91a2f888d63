"""One training step (`GANStep.run`): `train.d_steps_per_g` D steps, then one G step, each over
`train.gradient_accumulation_steps` micro-batches, the objective computing every loss; the EMA of G; the
on-device noise (`NoiseSource`) and the `Networks` record the step runs on. `CUDAGraphStep` replays it.

    for each D step:  for each micro-batch: real = next(batches); fake = G(z, y)   # (B, C, H, W)
                                            objective.d_phase(D, real, fake.detach()) -> backward
                      clip, opt_d.step()
    for each micro-batch:                   objective.g_phase(D without DDP, fake) -> backward into G only
    clip, opt_g.step(); G_ema <- lerp(G_ema, G, 1 - decay)

Why the G phase calls D without DDP, why accumulation is done here and how the step avoids host syncs:
docs/design-notes.md ("The G phase touches no D parameter", "Accumulation ...", "No host sync inside a step").
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from gan_dist.objectives.objective import DPhaseInputs, Objective
from gan_dist.progress import StepCounters

Stats = dict[str, Tensor]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the parts' reprs, the same in every process (no hash randomization)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


class Noise(Protocol):
    """Where the step's randomness comes from (z, the classes asked of G, interpolation weights)."""

    def latent(self, batch_size: int, latent_dim: int) -> Tensor: ...
    def labels(self, batch_size: int, num_classes: int) -> Tensor: ...
    def mix(self, batch_size: int) -> Tensor: ...


class NoiseSource:
    """A torch.Generator on the training device, seeded from run.seed and identical on every rank: each
    draw is made for the global batch (batch_size x world_size rows) and the rank keeps its own slice.

    So the draws need no host sync, differ across ranks, resume exactly from the checkpointed generator
    state, and a run is the same function of the global batch for any process count (1 process x 2B sees
    the noise of 2 processes x B). The extra rows cost little: a G forward costs far more than its z.
    """

    def __init__(self, seed: int, rank: int, device: torch.device, world_size: int = 1) -> None:
        self.device, self.rank, self.world_size = device, rank, world_size
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(derive_seed(seed, "noise"))

    def _slice(self, draw: Tensor, batch_size: int) -> Tensor:
        return draw[self.rank * batch_size:(self.rank + 1) * batch_size]

    def latent(self, batch_size: int, latent_dim: int) -> Tensor:
        """z (B, latent_dim) ~ N(0, I)."""
        rows = batch_size * self.world_size
        return self._slice(torch.randn(rows, latent_dim, generator=self.generator, device=self.device), batch_size)

    def labels(self, batch_size: int, num_classes: int) -> Tensor:
        """Classes asked of G (B,), uniform over num_classes."""
        rows = batch_size * self.world_size
        return self._slice(torch.randint(num_classes, (rows,), generator=self.generator, device=self.device),
                           batch_size)

    def mix(self, batch_size: int) -> Tensor:
        """Interpolation weights (B,) ~ U[0, 1] (WGAN-GP)."""
        return self.uniform(batch_size)

    def uniform(self, batch_size: int, *shape: int) -> Tensor:
        """(B, *shape) ~ U[0, 1): the augmentations' random numbers (gan_dist.augment's Draws)."""
        rows = batch_size * self.world_size
        return self._slice(torch.rand(rows, *shape, generator=self.generator, device=self.device), batch_size)

    def normal(self, batch_size: int, *shape: int) -> Tensor:
        """(B, *shape) ~ N(0, 1)."""
        rows = batch_size * self.world_size
        return self._slice(torch.randn(rows, *shape, generator=self.generator, device=self.device), batch_size)

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)


class EMA:
    """Exponential moving average of G's parameters and floating-point buffers (BatchNorm statistics).

    Written here rather than with torch.optim.swa_utils.AveragedModel, whose update tests
    `n_averaged == 0` on a device tensor (a host sync every step). The first update copies G, as
    AveragedModel does; later ones compute ema <- ema + w * (G - ema), w = 1 - decay, with foreach kernels
    and w held in a device tensor, so that a captured CUDA graph replays with each step's w.
    `decay_at(step)` ramps the decay up at the start (`warmup_steps`), so early, poor weights fade fast.
    """

    def __init__(self, G: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        self.module = copy.deepcopy(G).requires_grad_(False)
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.num_updates = 0
        device = next(iter(self.module.state_dict().values())).device
        self.weight = torch.zeros((), device=device)  # 1 - decay of the next update

    def decay_at(self, step: int) -> float:
        """decay, or (1 + step) / (warmup + 1 + step) while that is smaller (a half-life growing with step)."""
        if self.warmup_steps <= 0:
            return self.decay
        return min(self.decay, (1.0 + step) / (self.warmup_steps + 1.0 + step))

    def _pairs(self, G: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(averaged EMA tensors, their sources, copied EMA tensors, their sources): floating-point parameters
        and buffers are averaged, except the buffers G names in `ema_copied_buffers` (StyleGAN's tracked mean
        w, itself a moving average), and integer buffers are copied."""
        copied = set(getattr(G, "ema_copied_buffers", ()))
        ema_float, src_float, ema_other, src_other = [], [], [], []
        for (name, ema_tensor), tensor in zip(self.module.state_dict().items(), G.state_dict().values(), strict=True):
            if ema_tensor.is_floating_point() and name not in copied:
                ema_float.append(ema_tensor)
                src_float.append(tensor.detach())
            else:
                ema_other.append(ema_tensor)
                src_other.append(tensor)
        return ema_float, src_float, ema_other, src_other

    def set_decay(self, step: int) -> None:
        """Set the next update's weight 1 - decay_at(step) (a device fill, no host sync)."""
        self.weight.fill_(1.0 - self.decay_at(step))

    @torch.no_grad()
    def apply(self, G: nn.Module) -> None:
        """One update with the weight set by `set_decay` (the first update copies G)."""
        ema_float, src_float, ema_other, src_other = self._pairs(G)
        if self.num_updates == 0:
            torch._foreach_copy_(ema_float, src_float)
        else:
            # A list of (the same) 0-dim weight tensors: the single-tensor overload reads it with .item().
            torch._foreach_lerp_(ema_float, src_float, [self.weight] * len(ema_float))
        for ema_tensor, tensor in zip(ema_other, src_other, strict=True):
            ema_tensor.copy_(tensor)
        self.num_updates += 1

    def update(self, G: nn.Module, step: int) -> None:
        self.set_decay(step)
        self.apply(G)


@dataclass
class Networks:
    """G and D in the forms each user needs, and their optimizers: built once by the Trainer, handed to the
    step, the checkpoints and the evaluator."""

    G: nn.Module  # the plain modules: parameters, clipping, EMA source, checkpoints
    D: nn.Module
    G_wrapped: nn.Module  # as prepared (DDP when several processes; compiled with train.compile): the step's G
    D_wrapped: nn.Module  # D in the D phase (DDP: its gradients are all-reduced)
    D_in_g_phase: nn.Module  # D in the G phase: no DDP wrapper (compiled with train.compile), see the docstring
    opt_g: Any
    opt_d: Any
    ema: EMA | None = None
    compiled: bool = False  # G_wrapped, D_wrapped and D_in_g_phase are torch.compile'd

    @property
    def G_for_samples(self) -> nn.Module:
        """G_ema when trained, else G (unwrapped): what grids, evaluation and exports use."""
        return self.ema.module if self.ema is not None else self.G


@dataclass(frozen=True)
class StepSettings:
    """The config values a step needs (resolved)."""

    latent_dim: int
    num_classes: int  # 0: unconditional (labels are not passed to G or D)
    d_steps_per_g: int
    accumulation_steps: int
    grad_clip_norm: float
    channels_last: bool


class PlainForward:
    """A module's forward for a double backward (a gradient penalty, the path-length penalty), when it cannot
    go through the training forward: the plain (uncompiled, un-wrapped) module, in float32 when
    `full_precision` (fp16: gradients of gradients in half precision overflow at GradScaler's scale and
    underflow without it). Its gradients reach the parameters in the same backward as the main term: DDP
    all-reduces their sum once."""

    def __init__(self, module: nn.Module, full_precision: bool) -> None:
        self.module, self.full_precision = module, full_precision

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.full_precision:
            return self.module(*args, **kwargs)
        # accelerate's prepare patched autocast into forward and kept the original as _original_forward.
        forward = getattr(self.module, "_original_forward", self.module.forward)
        device_type = next(self.module.parameters()).device.type
        with torch.autocast(device_type, enabled=False):
            return forward(*(a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args),
                           **kwargs)


class PenaltyD:
    """D for the forwards a gradient penalty differentiates twice (see PlainForward), behind the augmentation."""

    def __init__(self, D: nn.Module, augment: nn.Module | None, draws: Any, full_precision: bool) -> None:
        self.D, self.augment, self.draws = PlainForward(D, full_precision), augment, draws
        self.full_precision = full_precision

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Any:
        if self.full_precision:
            images = images.float()
        if self.augment is not None:
            with torch.autocast(images.device.type, enabled=not self.full_precision):
                images = self.augment(images, self.draws)
        return self.D(images, labels)


class AugmentedD:
    """D behind an augmentation: every image D sees, real or fake, in either phase, goes through
    `augment(images, draws)` first (differentiable, so G learns through it; penalties take their input
    gradients through it too, as stylegan2-ada's R1 does)."""

    def __init__(self, D: nn.Module, augment: nn.Module, draws: Any) -> None:
        self.D, self.augment, self.draws = D, augment, draws

    def __call__(self, images: Tensor, labels: Tensor | None = None) -> Any:
        return self.D(self.augment(images, self.draws), labels)


class GANStep:
    """Runs one G step (with its D steps) on the networks the Trainer built. See the module docstring."""

    def __init__(self, accelerator: Any, networks: Networks, objective: Objective, noise: NoiseSource,
                 counters: StepCounters, settings: StepSettings, augment: nn.Module | None = None,
                 g_regularizer: nn.Module | None = None) -> None:
        self.accelerator = accelerator
        self.networks = networks
        self.objective = objective
        self.noise = noise
        self.counters = counters
        self.settings = settings
        self.augment = augment
        # D as each phase calls it (behind the augmentation when there is one)
        self.D_phase_d: Any = networks.D_wrapped if augment is None else AugmentedD(networks.D_wrapped, augment, noise)
        self.D_phase_g: Any = (networks.D_in_g_phase if augment is None
                               else AugmentedD(networks.D_in_g_phase, augment, noise))
        # Penalties share D's forward unless D is compiled (no double backward) or the run is fp16.
        fp16 = accelerator.scaler is not None
        self.D_penalty = (PenaltyD(networks.D, augment, noise, full_precision=fp16)
                          if objective.penalizes_gradients and (networks.compiled or fp16) else None)
        # An adaptive augmentation (ADA) follows E[sign(D(real))] and moves its p every `interval` D steps.
        self.adaptive_augment = augment is not None and bool(getattr(augment, "adaptive", False))
        # G's lazy regularizer (StyleGAN2's path-length penalty): a double backward through G.
        self.g_regularizer = g_regularizer
        self.G_regularized = (PlainForward(networks.G, full_precision=fp16) if networks.compiled or fp16
                              else networks.G_wrapped)
        self.g_params = [p for p in networks.G.parameters() if p.requires_grad]
        self.world_size = accelerator.num_processes
        self.capturing = False  # True while CUDAGraphStep records run() into a graph

    def invalidate(self) -> None:
        """Nothing to drop: the eager step reads the networks' state afresh at every call (CUDAGraphStep's
        graph does not: see its invalidate)."""

    # -- helpers ------------------------------------------------------------------------------------
    def _sync_context(self, model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces on the last micro-batch of a phase only (forward and backward in the context)."""
        if last_micro_batch or self.world_size == 1:
            return contextlib.nullcontext()
        return getattr(model, "_orig_mod", model).no_sync()  # compiled: the DDP module inside

    def _draw(self, batch_size: int) -> tuple[Tensor, Tensor | None]:
        z = self.noise.latent(batch_size, self.settings.latent_dim)  # (B, latent_dim)
        num_classes = self.settings.num_classes
        labels = self.noise.labels(batch_size, num_classes) if num_classes else None  # (B,)
        return z, labels

    def _reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum over ranks (an all-reduce; the tensor itself with one process)."""
        return self.accelerator.reduce(tensor, "sum") if self.world_size > 1 else tensor

    def _reduce_mean(self, tensor: Tensor) -> Tensor:
        return self.accelerator.reduce(tensor, "mean") if self.world_size > 1 else tensor

    @staticmethod
    def _model_regularization(module: nn.Module) -> Tensor | None:
        """A term the architecture adds to its own loss at every step (BigGAN's orthogonal regularization)."""
        regularization = getattr(module, "regularization_loss", None)
        return regularization() if regularization is not None else None

    def _optimizer_step(self, optimizer: Any, model: nn.Module) -> None:
        if self.settings.grad_clip_norm > 0:
            self.accelerator.unscale_gradients(optimizer=optimizer)  # fp16: clip true gradients
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.settings.grad_clip_norm, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # -- the step -----------------------------------------------------------------------------------
    def run(self, batches: Iterator[tuple[Tensor, Tensor]]) -> list[Stats]:
        """One G step and its D steps; returns each micro-batch's statistics (detached tensors)."""
        accelerator, nets, settings = self.accelerator, self.networks, self.settings
        micro_batches = settings.accumulation_steps
        share_fake = micro_batches == 1  # the seed's one G forward per step
        all_stats: list[Stats] = []
        shared_fake: tuple[Tensor, Tensor | None] | None = None  # the last D step's G output, reused by G
        for d_step in range(settings.d_steps_per_g):
            share_this_forward = share_fake and d_step == settings.d_steps_per_g - 1
            for micro in range(micro_batches):
                real, labels = next(batches)  # (B, C, H, W) float32 on the device, (B,)
                batch_size = real.shape[0]
                with self._sync_context(nets.D_wrapped, micro == micro_batches - 1):
                    z, fake_labels = self._draw(batch_size)
                    with accelerator.autocast(), torch.set_grad_enabled(share_this_forward):
                        fake = nets.G_wrapped(z, fake_labels)  # (B, C, H, W); its graph serves the G phase if shared
                    mix = self.noise.mix(batch_size) if self.objective.needs_mix else None
                    inputs = DPhaseInputs(real=real, real_labels=labels if settings.num_classes else None,
                                          fake=fake.detach(), fake_labels=fake_labels, mix=mix,
                                          d_step_index=self.counters.d_steps)
                    with accelerator.autocast():
                        loss, stats = self.objective.d_phase(self.D_phase_d, inputs, self.D_penalty)
                        regularization = self._model_regularization(nets.D)
                    if regularization is not None:
                        loss = loss + regularization
                        stats["d_regularization"] = regularization.detach()
                    accelerator.backward(loss / micro_batches if micro_batches > 1 else loss)
                if self.adaptive_augment:
                    self.augment.accumulate_mean(stats["d_real_sign"], batch_size)
                if share_this_forward:
                    shared_fake = (fake, fake_labels)
                all_stats.append(stats)
                self.counters.batches += 1
                self.counters.images_seen += batch_size * self.world_size
            self._optimizer_step(nets.opt_d, nets.D)
            self.counters.d_steps += 1
            if self.adaptive_augment and self.counters.d_steps % self.augment.interval == 0:
                all_stats.append(self.augment.adjust(self._reduce_sum, batch_size * self.world_size))
        for micro in range(micro_batches):
            with self._sync_context(nets.G_wrapped, micro == micro_batches - 1):
                if shared_fake is not None:
                    fake, fake_labels = shared_fake
                else:
                    z, fake_labels = self._draw(batch_size)
                    with accelerator.autocast():
                        fake = nets.G_wrapped(z, fake_labels)  # (B, C, H, W)
                with accelerator.autocast():
                    loss, stats = self.objective.g_phase(self.D_phase_g, fake, fake_labels)
                    regularization = self._model_regularization(nets.G)
                if regularization is not None:
                    loss = loss + regularization
                    stats["g_regularization"] = regularization.detach()
                regularizer = self.g_regularizer
                if regularizer is not None and micro == micro_batches - 1 and regularizer.due(self.counters.step):
                    z_reg, labels_reg = self._draw(regularizer.batch_size(batch_size))
                    with accelerator.autocast():
                        penalty, penalty_stats = regularizer(self.G_regularized, z_reg, labels_reg, draws=self.noise,
                                                             reduce_mean=self._reduce_mean)
                    # Lazy regularization: every `every` G steps, scaled by `every` (StyleGAN2, sec. 4).
                    loss = loss + regularizer.every * micro_batches * penalty
                    stats.update(penalty_stats)
                # Gradients into G only: D's weights get no .grad and D's DDP reducer is not involved.
                accelerator.backward(loss / micro_batches if micro_batches > 1 else loss, inputs=self.g_params)
            all_stats.append(stats)
        self._optimizer_step(nets.opt_g, nets.G)
        if nets.ema is not None:
            if not self.capturing:  # a captured graph gets each step's weight set before its replay
                nets.ema.set_decay(self.counters.step)
            nets.ema.apply(nets.G)
        self.counters.step += 1
        return all_stats


class CUDAGraphStep:
    """train.cuda_graph: GANStep.run recorded once into a CUDA graph and replayed every step.

    Each step's real batches are copied into static device buffers, the EMA weight is set, then the graph
    replays the whole D and G phases (forward, backward, capturable Adam, EMA) with one launch. Before the
    capture, `warmup_steps` eager steps run on a side stream (cuDNN autotuning, lazily created optimizer
    state, the first EMA copy), as PyTorch's whole-network capture recipe asks. The noise generator is
    registered with the graph, so each replay draws new noise and its state stays checkpointable; the
    default CUDA generator (dropout) is registered by PyTorch. Python counters advance outside the graph.
    `invalidate()` drops the graph (e.g. after loading a checkpoint, which replaces optimizer state
    tensors); the next call warms up and captures again. Refused (config and trainer): CPUs, the stream
    loader, several processes, fp16's GradScaler, accumulation, gradient penalties (double backward).
    """

    def __init__(self, step: GANStep, warmup_steps: int = 3) -> None:
        self.step = step
        self.warmup_steps = warmup_steps
        self._warmups_left = warmup_steps
        self.graph: Any = None
        self._static_batches: list[tuple[Tensor, Tensor]] = []
        self._static_stats: list[Stats] = []

    def invalidate(self) -> None:
        self.graph, self._static_batches, self._static_stats = None, [], []
        self._warmups_left = self.warmup_steps

    def _counters_after(self, batches: list[tuple[Tensor, Tensor]]) -> None:
        counters, step = self.step.counters, self.step
        counters.batches += len(batches)
        counters.images_seen += sum(real.shape[0] for real, _ in batches) * step.world_size
        counters.d_steps += step.settings.d_steps_per_g
        counters.step += 1
        if step.networks.ema is not None:
            step.networks.ema.num_updates += 1

    def run(self, batches: Iterator[tuple[Tensor, Tensor]]) -> list[Stats]:
        step = self.step
        fresh = [next(batches) for _ in range(step.settings.d_steps_per_g * step.settings.accumulation_steps)]
        if self.graph is None and self._warmups_left > 0:
            self._warmups_left -= 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                stats = step.run(iter(fresh))
            torch.cuda.current_stream().wait_stream(side)
            return stats
        if self.graph is None:
            self._capture(fresh)
        for (static_real, static_labels), (real, labels) in zip(self._static_batches, fresh, strict=True):
            static_real.copy_(real)
            static_labels.copy_(labels)
        if step.networks.ema is not None:
            step.networks.ema.set_decay(step.counters.step)
        self.graph.replay()
        self._counters_after(fresh)
        return self._static_stats

    def _capture(self, fresh: list[tuple[Tensor, Tensor]]) -> None:
        step = self.step
        self._static_batches = [(real.clone(), labels.clone()) for real, labels in fresh]
        step.networks.opt_d.zero_grad(set_to_none=True)
        step.networks.opt_g.zero_grad(set_to_none=True)
        saved = dataclasses.replace(step.counters)
        graph = torch.cuda.CUDAGraph()
        if isinstance(step.noise, NoiseSource):
            graph.register_generator_state(step.noise.generator)
        torch.cuda.synchronize()
        step.capturing = True
        try:
            with torch.cuda.graph(graph):
                self._static_stats = step.run(iter(self._static_batches))
        finally:
            step.capturing = False
        # Recording ran no kernels and no step: undo the Python-side effects of the recorded run.
        step.counters.step, step.counters.d_steps = saved.step, saved.d_steps
        step.counters.batches, step.counters.images_seen = saved.batches, saved.images_seen
        if step.networks.ema is not None:
            step.networks.ema.num_updates -= 1
        self.graph = graph
