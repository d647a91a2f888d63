"""Augmentations (`augment.name`) of every image D sees, declared.

An entry with a module names `gan_dist.augment.<file>`, which defines `build(augment: AugmentConfig) ->
nn.Module` whose `forward(images, draws)` returns augmented images (differentiable; all randomness from
`draws`, so that resume is exact and 1 process with batch 2B sees what 2 processes with B see). An adaptive
augmentation also has `accumulate(real_logits)`, `adjust(reduce_sum, batch_size_global)` and
`state_tensors()` / `load_state_tensors()` (checkpointed). Adding one: a file plus an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from gan_dist.config import ConfigError

ADA_PIPELINES = ("blit", "geom", "color", "bg", "bgc")  # stylegan2-ada's names (gan_dist.augment.ada.PIPELINES)


@dataclass(frozen=True)
class AugmentSpec:
    name: str  # augment.name
    title: str
    module: str | None  # None: no augmentation
    adaptive: bool = False  # p follows D's overfitting (augment.target, augment.interval, augment.speed_kimg)
    policy_ops: tuple[str, ...] = ()  # augment.policy applies: a comma-separated subset of these operations
    pipelines: tuple[str, ...] = ()  # augment.pipeline applies: one of these


AUGMENTATIONS: dict[str, AugmentSpec] = {
    spec.name: spec for spec in (
        AugmentSpec(name="none", title="no augmentation", module=None),
        # Zhao et al. 2020 (mit-han-lab/data-efficient-gans): color, translation, cutout, always on.
        AugmentSpec(name="diffaugment", title="DiffAugment (Zhao et al. 2020)", module="gan_dist.augment.diffaugment",
                    policy_ops=("color", "translation", "cutout")),
        # Karras et al. 2020 (NVlabs/stylegan2-ada-pytorch): the augment.pipeline ops, each with probability p;
        # ada adapts p toward augment.target every augment.interval D steps, ada_fixed keeps augment.p.
        AugmentSpec(name="ada", title="ADA (Karras et al. 2020)", module="gan_dist.augment.ada", adaptive=True,
                    pipelines=ADA_PIPELINES),
        AugmentSpec(name="ada_fixed", title="the ADA pipeline at a fixed p", module="gan_dist.augment.ada",
                    pipelines=ADA_PIPELINES),
    )
}


def augmentation(name: str) -> AugmentSpec:
    """The entry for `name`; ConfigError naming augment.name and the choices otherwise."""
    try:
        return AUGMENTATIONS[name]
    except KeyError:
        raise ConfigError(f"key 'augment.name': {name!r} is not one of {', '.join(AUGMENTATIONS)}") from None
