"""Declarations: the names, facts and rules of everything a config chooses between, readable without torch.

  architectures.py   model.name     -> ArchitectureSpec (defaults, sizes, options, compile / CUDA-graph facts)
  objectives.py      loss.name      -> ObjectiveSpec (penalties, which settings apply)
  datasets.py        data.dataset   -> DatasetSpec (shape, classes, sources, official counts and checksums)
  augmentations.py   augment.name   -> AugmentSpec
  feature_nets.py    eval.feature_net -> FeatureNetSpec

Each registry is the one place its names live: config validation, CLI choices and error messages read them
from here, and the code that implements an entry is found through the entry (its `module`). Adding an
architecture, objective or augmentation is one new file plus one entry here (docs/extending.md).
"""
