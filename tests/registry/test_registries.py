"""Every registry entry resolves to code with the functions its kind promises, facts are readable without
torch, and the import order has no cycle and no upward import (scripts/import_graph.py)."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from gan_dist.config import ConfigError, ModelConfig
from gan_dist.registry.architectures import ARCHITECTURES, architecture, model_options
from gan_dist.registry.augmentations import AUGMENTATIONS
from gan_dist.registry.datasets import DATASETS
from gan_dist.registry.feature_nets import FEATURE_NETS, feature_net
from gan_dist.registry.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_module_has_its_builders(name):
    module = importlib.import_module(architecture(name).module)
    assert callable(module.build_generator) and callable(module.build_discriminator)
    options = model_options(ModelConfig(name=name))
    assert dataclasses.is_dataclass(options)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_module_has_its_losses(name):
    module = importlib.import_module(OBJECTIVES[name].module)
    assert callable(module.d_loss) and callable(module.g_loss)


@pytest.mark.parametrize("name", [n for n, spec in AUGMENTATIONS.items() if spec.module])
def test_every_augmentation_module_builds(name):
    assert callable(importlib.import_module(AUGMENTATIONS[name].module).build)


def test_every_feature_net_and_dataset_default_resolves():
    for spec in FEATURE_NETS.values():
        module = importlib.import_module(spec.module)
        assert callable(module.load_feature_net)
        if spec.fetches_weights:  # checked at start-up, previewed by dry runs
            assert callable(module.ensure_weights) and callable(module.weights_status)
        if spec.feature_dim is not None:
            assert getattr(module, "FEATURE_DIM", spec.feature_dim) == spec.feature_dim
    for dataset in DATASETS.values():
        assert feature_net("", dataset.default_feature_net).name in FEATURE_NETS


def test_unknown_model_options_name_the_key():
    with pytest.raises(ConfigError, match=r"model.options.width_mult.*model.name=dcgan has options: none"):
        model_options(ModelConfig(name="dcgan", options={"width_mult": 2}))


def test_facts_and_config_load_without_torch():
    code = ("import sys; import gan_dist.registry.architectures, gan_dist.registry.objectives, "
            "gan_dist.registry.datasets, gan_dist.registry.augmentations, gan_dist.registry.feature_nets; "
            "from gan_dist.configure import load_config; load_config(None, ['model.name=mlp']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_import_order_has_no_cycle_and_no_upward_import():
    result = subprocess.run([sys.executable, "scripts/import_graph.py"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout
    assert "cycles: 0" in result.stdout and "upward imports: 0" in result.stdout, result.stdout


# Small widths and options per architecture, for the contract test (a new architecture adds a line here).
SMALL = {"keras_dcgan": (16, 8, {}), "dcgan": (8, 8, {}), "mlp": (16, 16, {}), "resnet_sngan": (8, 8, {}),
         "biggan": (8, 8, {}), "stylegan2": (16, 16, {"w_dim": 16, "mapping_layers": 2, "channel_base": 512})}


@pytest.mark.parametrize("conditioning", ["none", "concat", "acgan", "projection"])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_keeps_the_model_contract(name, conditioning):
    """What the step, the objectives and the samplers rely on, for every registered architecture: G(z, y) ->
    (B, C, H, W); D(x, y) -> logits (B,) (acgan: + class logits (B, K)); gradients reach every parameter of G
    through D and of D; the registry's facts match the modules (norms, convolutions)."""
    import torch
    from torch import nn

    from gan_dist.models.build import build_models
    from gan_dist.registry.architectures import d_has_batchnorm

    g_width, d_width, options = SMALL[name]
    model = ModelConfig(name=name, g_width=g_width, d_width=d_width, conditioning=conditioning, options=options,
                        d_norm="none")
    torch.manual_seed(0)
    shape, classes = (3, 32, 32), 10
    G, D = build_models(model, shape, classes)
    z = torch.randn(4, model.latent_dim)
    labels = torch.arange(4) % classes
    images = G(z, labels)
    assert images.shape == (4, *shape)
    output = D(images, labels)
    logits, class_logits = output if conditioning == "acgan" else (output, None)
    assert logits.shape == (4,)
    assert (class_logits is None) == (conditioning != "acgan")
    loss = logits.sum() + (class_logits.sum() if class_logits is not None else 0)
    loss.backward()
    for module, what in ((G, "G"), (D, "D")):
        missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name} {what}: no gradient for {missing[:5]}"
    spec = architecture(name)
    assert spec.convolutional == any(p.dim() == 4 for p in D.parameters())  # conv kernels (O, I, kh, kw)
    assert not d_has_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in D.modules())


def test_the_augmentation_registry_matches_its_modules():
    from gan_dist.augment.ada import PIPELINES
    from gan_dist.augment.diffaugment import POLICIES
    from gan_dist.registry.augmentations import ADA_PIPELINES

    assert set(ADA_PIPELINES) == set(PIPELINES)
    assert set(AUGMENTATIONS["diffaugment"].policy_ops) == set(POLICIES)
