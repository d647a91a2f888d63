"""The objective of a run: its registry entry's D and G losses (gan_dist/registry/objectives.py), plus
the WGAN-GP gradient penalty, R1 (lazy) and the ACGAN class loss, which any objective can take.

    objective = build_objective(config.loss)
    loss, stats = objective.d_phase(D, DPhaseInputs(real, real_labels, fake, fake_labels, ...))
    loss, stats = objective.g_phase(D, fake, fake_labels)

The step runs the phases, backward passes and optimizer steps; the objective computes losses and returns
detached statistics (0-dim tensors, no host sync). Why gradient penalties work on the DDP-wrapped D, and
the fp16 loss-scale handling of input gradients: docs/design-notes.md ("Gradient penalties under DDP").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_dist.config import LossConfig
from gan_dist.registry.objectives import objective, penalizes_gradients

Stats = dict[str, Tensor]


@dataclass
class DPhaseInputs:
    """One micro-batch of the D phase. Tensors are on the training device."""

    real: Tensor  # (B, C, H, W) in [-1, 1]
    real_labels: Tensor | None  # (B,) int64 for a conditional D, else None
    fake: Tensor  # (B, C, H, W), detached from G's graph
    fake_labels: Tensor | None  # (B,) the classes G was asked for, else None
    mix: Tensor | None = None  # (B,) uniform in [0, 1]: interpolation weights of the gradient penalty
    d_step_index: int = 0  # D steps taken so far in the run (lazy R1 schedule)


def split_output(output: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """D's output -> (adversarial logits (B,), class logits (B, K) or None)."""
    if isinstance(output, tuple):
        return output[0], output[1]
    return output, None


def input_gradients(scores: Tensor, inputs: Tensor) -> Tensor:
    """d sum(scores) / d inputs (B, C, H, W) in float32, kept in the graph (create_graph) for the penalty's
    backward. Each sample's score depends only on its own input (no BatchNorm in D), so the gradient of the
    sum is the per-sample gradient. Outside autocast: the backward ops (and the graph create_graph records
    for the penalty's own backward) keep the dtypes of the forward they differentiate."""
    with torch.autocast(inputs.device.type, enabled=False):
        (grads,) = torch.autograd.grad(scores.float().sum(), inputs, create_graph=True)
    return grads.float()


def gradient_penalty(grads: Tensor) -> Tensor:
    """WGAN-GP: E[(||grad||_2 - 1)^2] over samples; norm over (C, H, W). The 1e-12 keeps sqrt differentiable at 0."""
    norms = (grads.square().flatten(1).sum(1) + 1e-12).sqrt()  # (B,)
    return (norms - 1.0).square().mean()


def r1_penalty(grads: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x_real)||^2] (the objective multiplies by gamma / 2)."""
    return grads.square().flatten(1).sum(1).mean()


class Objective:
    """A GAN recipe: adversarial loss pair + optional gradient penalty, R1 and ACGAN class loss."""

    def __init__(self, loss: LossConfig) -> None:
        self.config = loss
        self.name = loss.name
        spec = objective(loss.name)
        module = importlib.import_module(spec.module)
        self._d_loss: Callable[[Tensor, Tensor], tuple[Tensor, Stats]] = lambda real, fake: module.d_loss(
            real, fake, loss)
        self._g_loss: Callable[[Tensor], tuple[Tensor, Stats]] = lambda fake: module.g_loss(fake, loss)
        self._describe: Callable[[dict[str, float]], str] | None = getattr(module, "describe", None)
        self.uses_gradient_penalty = spec.gradient_penalty
        self.uses_r1 = loss.r1_gamma > 0
        # Double backward through D: cannot be captured in a CUDA graph, needs per-sample gradients.
        self.penalizes_gradients = penalizes_gradients(loss)
        self.needs_mix = self.uses_gradient_penalty

    def r1_due(self, d_step_index: int) -> bool:
        """Lazy R1: every loss.r1_every-th D step (StyleGAN2), scaled by r1_every when applied."""
        return self.uses_r1 and d_step_index % self.config.r1_every == 0

    def d_phase(self, D: Callable[..., Any], inputs: DPhaseInputs,
                D_penalty: Callable[..., Any] | None = None) -> tuple[Tensor, Stats]:
        """D's loss on one micro-batch: adversarial + class loss (acgan) + penalties, and its stats.

        D_penalty: where the penalties' forwards run when they cannot share D's (None: R1 reuses the real
        forward, the interpolates go through D). The step passes the uncompiled D under torch.compile
        (AOTAutograd has no double backward) and a float32 D under fp16 (whose input gradients would
        overflow at GradScaler's scale, or underflow without it: docs/design-notes.md).
        """
        shared = D_penalty is None
        real = inputs.real
        r1_now = self.r1_due(inputs.d_step_index)
        if r1_now and shared:
            real = real.detach().requires_grad_(True)  # R1 reuses this forward for d D(x)/dx
        real_logits, real_classes = split_output(D(real, inputs.real_labels))  # (B,), (B, K) | None
        fake_logits, fake_classes = split_output(D(inputs.fake, inputs.fake_labels))
        loss, stats = self._d_loss(real_logits, fake_logits)
        with torch.no_grad():  # E[sign(D(x))]: the overfitting heuristic r_t of ADA (Karras et al. 2020)
            stats["d_real_sign"] = real_logits.detach().float().sign().mean()
        if real_classes is not None and fake_classes is not None:
            # ACGAN: D learns to classify real images and G's images alike (Odena et al. 2017).
            class_real = F.cross_entropy(real_classes.float(), inputs.real_labels)
            class_fake = F.cross_entropy(fake_classes.float(), inputs.fake_labels)
            class_loss = 0.5 * (class_real + class_fake)
            loss = loss + self.config.acgan_weight * class_loss
            with torch.no_grad():
                stats["d_class_loss"] = class_loss.detach()
                stats["d_class_accuracy_real"] = (real_classes.argmax(1) == inputs.real_labels).float().mean()
        if self.uses_gradient_penalty:
            if inputs.mix is None:
                raise ValueError("the gradient penalty needs DPhaseInputs.mix (interpolation weights)")
            mix = inputs.mix.view(-1, *([1] * (real.dim() - 1))).float()  # (B, 1, 1, 1)
            # x_hat = mix * x + (1 - mix) * G(z): points on straight lines between real and fake samples.
            interpolates = (mix * inputs.real.detach().float() + (1.0 - mix) * inputs.fake.detach().float())
            interpolates = interpolates.to(inputs.real.dtype).requires_grad_(True)
            scores, _ = split_output((D if shared else D_penalty)(interpolates, inputs.real_labels))
            penalty = gradient_penalty(input_gradients(scores, interpolates))
            loss = loss + self.config.gp_weight * penalty
            stats["gradient_penalty"] = penalty.detach()
            stats["d_loss"] = loss.detach()
        if r1_now:
            if shared:
                scores, penalized = real_logits, real
            else:
                penalized = inputs.real.detach().requires_grad_(True)
                scores, _ = split_output(D_penalty(penalized, inputs.real_labels))
            penalty = r1_penalty(input_gradients(scores, penalized))
            # gamma / 2 * E||grad||^2, times r1_every so that the lazy schedule keeps the same strength.
            loss = loss + 0.5 * self.config.r1_gamma * self.config.r1_every * penalty
            stats["r1_penalty"] = penalty.detach()
            stats["d_loss"] = loss.detach()
        return loss, stats

    def g_phase(self, D: Callable[..., Any], fake: Tensor, fake_labels: Tensor | None) -> tuple[Tensor, Stats]:
        """G's loss on one micro-batch (D is called, not stepped) and its stats."""
        logits, classes = split_output(D(fake, fake_labels))
        loss, stats = self._g_loss(logits)
        if classes is not None:
            class_loss = F.cross_entropy(classes.float(), fake_labels)  # G wants its class recognised
            loss = loss + self.config.acgan_weight * class_loss
            with torch.no_grad():
                stats["g_class_loss"] = class_loss.detach()
                stats["g_class_accuracy"] = (classes.argmax(1) == fake_labels).float().mean()
            stats["g_loss"] = loss.detach()
        return loss, stats

    def describe(self, values: dict[str, float]) -> str:
        """The console summary of one log interval's mean statistics (the objective's own line when its
        module has one, e.g. the seed tutorial's for ns)."""
        if self._describe is not None:
            line = self._describe(values)
        else:
            line = f"[D loss: {values['d_loss']:.4f}] [G loss: {values['g_loss']:.4f}]"
            extras = [key for key in ("wasserstein", "gradient_penalty", "d_real", "d_fake") if key in values]
            line += "".join(f" {key} {values[key]:.3f}" for key in extras)
        if "r1_penalty" in values:
            line += f" r1 {values['r1_penalty']:.4f}"
        if "d_class_accuracy_real" in values:
            line += f" class acc. real {100 * values['d_class_accuracy_real']:.1f}% G {100 * values['g_class_accuracy']:.1f}%"
        return line


def build_objective(loss: LossConfig) -> Objective:
    """The objective named by loss.name (ConfigError naming loss.name otherwise)."""
    return Objective(loss)
