"""Objectives (`loss.name`), declared: which module computes them and which rules follow from them.

Each entry names a module `gan_dist.objectives.<file>` that defines `d_loss(real, fake, loss) -> (loss,
stats)` and `g_loss(fake, loss) -> (loss, stats)` on D's outputs, and may define `describe(values) -> str`
for the console line (gan_dist.objectives.objective adds penalties and the ACGAN class loss to any of them).
Adding an objective: one file plus one entry here (docs/extending.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from gan_dist.config import ConfigError, LossConfig


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str  # loss.name
    title: str  # the paper, for messages and the README
    module: str  # gan_dist.objectives.<file>
    # The WGAN-GP gradient penalty on real/fake interpolates (loss.gp_weight): a double backward through D.
    gradient_penalty: bool = False
    # loss.label_smoothing applies (one-sided smoothing of D's real target).
    label_smoothing: bool = False


OBJECTIVES: dict[str, ObjectiveSpec] = {
    spec.name: spec for spec in (
        ObjectiveSpec(name="ns", title="non-saturating GAN (Goodfellow et al. 2014)", module="gan_dist.objectives.ns",
                      label_smoothing=True),
        ObjectiveSpec(name="minimax", title="the minimax GAN (Goodfellow et al. 2014, eq. 1)",
                      module="gan_dist.objectives.minimax", label_smoothing=True),
        ObjectiveSpec(name="lsgan", title="least squares GAN (Mao et al. 2017)", module="gan_dist.objectives.lsgan"),
        ObjectiveSpec(name="wgan_gp", title="WGAN-GP (Gulrajani et al. 2017)", module="gan_dist.objectives.wgan_gp",
                      gradient_penalty=True),
        ObjectiveSpec(name="hinge", title="hinge loss (Lim & Ye 2017; SNGAN, BigGAN)",
                      module="gan_dist.objectives.hinge"),
    )
}


def objective(name: str) -> ObjectiveSpec:
    """The entry for `name`; ConfigError naming loss.name and the choices otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"key 'loss.name': {name!r} is not one of {', '.join(OBJECTIVES)}") from None


def penalizes_gradients(loss: LossConfig) -> bool:
    """Whether `loss` penalizes D's input gradients (the objective's gradient penalty, or R1 with r1_gamma > 0):
    a double backward through D, per sample. The one rule for the objective, validation and the bench."""
    return objective(loss.name).gradient_penalty or loss.r1_gamma > 0
