"""model.spectral_norm: every weight of D (convs, linears, the projection embedding and the ACGAN class
head) is divided by its largest singular value; it survives state_dict round trips, torch.compile and DDP."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from gan_dist.config import ModelConfig
from gan_dist.models.build import build_models
from gan_dist.registry.architectures import ARCHITECTURES
from tests.distributed import run_processes

K = 10
SMALL = {"keras_dcgan": (16, 8), "dcgan": (8, 8), "mlp": (16, 16), "stylegan2": (16, 16), "resnet_sngan": (8, 8),
         "biggan": (8, 8)}
# The architectures where model.spectral_norm decides (the others have it built in, or not at all).
OPTIONAL_SN = tuple(name for name, spec in ARCHITECTURES.items() if spec.spectral_norm == "optional")
# Architecture options that keep the small models small (model.options).
SMALL_OPTIONS = {"stylegan2": {"w_dim": 16, "mapping_layers": 2, "channel_base": 512}}
WEIGHT_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)


def sn_models(name: str, conditioning: str = "projection", image_shape=(1, 28, 28), seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    g_width, d_width = SMALL[name]
    config = ModelConfig(name=name, g_width=g_width, d_width=d_width, spectral_norm=True, conditioning=conditioning,
                         **kwargs)
    return build_models(config, image_shape, K)


def top_singular_value(weight: torch.Tensor) -> float:
    """Largest singular value of a weight seen as a matrix (out, in * kh * kw); (K, F) for an embedding."""
    return torch.linalg.matrix_norm(weight.reshape(weight.shape[0], -1), ord=2).item()


@pytest.mark.parametrize("conditioning", ["none", "concat", "acgan", "projection"])
@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_every_d_weight_and_no_g_weight_is_normalized(name: str, conditioning: str) -> None:
    g, d = sn_models(name, conditioning)
    layers = [m for m in d.modules() if isinstance(m, WEIGHT_TYPES)]
    body_and_head = {"keras_dcgan": 4 + 1, "dcgan": 2 + 1, "mlp": 3 + 1}[name]  # + class head / embedding
    assert len(layers) == body_and_head + (conditioning in ("acgan", "projection"))
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(parametrize.is_parametrized(m) for m in g.modules())  # spectral norm is on D only
    norms = [m for m in d.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))]
    assert not any(parametrize.is_parametrized(m) for m in norms)  # norm scales are not matrices
    if conditioning == "projection":
        assert parametrize.is_parametrized(d.embed, "weight")
    if conditioning == "acgan":
        assert parametrize.is_parametrized(d.class_head, "weight")


@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_top_singular_value_is_one_after_power_iterations(name: str) -> None:
    _, d = sn_models(name, "projection", d_dropout=0.0)
    layers = [m for m in d.modules() if parametrize.is_parametrized(m, "weight")]
    originals = [top_singular_value(m.parametrizations.weight.original) for m in layers]
    assert max(abs(s - 1) for s in originals) > 0.1  # without the normalization the test would fail
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([0, 1, 2, 3])
    d.train()
    with torch.no_grad():
        for _ in range(100):  # one power iteration per training-mode forward (after 15 at registration)
            d(x, y)
    d.eval()  # eval mode: the weight is read with the current u, v (no further iteration)
    with torch.no_grad():
        sigmas = [top_singular_value(m.weight) for m in layers]
    assert sigmas == pytest.approx([1.0] * len(layers), abs=0.02)
    assert min(sigmas) >= 1 - 1e-4  # the power-iteration estimate approaches sigma from below


@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_state_dict_keys_hold_original_weight_and_power_iteration_vectors(name: str) -> None:
    _, d = sn_models(name, "acgan")
    _, plain = build_models(ModelConfig(name=name, g_width=SMALL[name][0], d_width=SMALL[name][1],
                                        conditioning="acgan"), (1, 28, 28), K)
    keys = set(d.state_dict())
    for key in plain.state_dict():
        if key.endswith(".weight") and f"{key[:-len('.weight')]}.parametrizations.weight.original" in keys:
            stem = key[: -len(".weight")]
            assert {f"{stem}.parametrizations.weight.0._u", f"{stem}.parametrizations.weight.0._v"} <= keys
            assert key not in keys
        else:
            assert key in keys  # biases, norm parameters and statistics keep their names
    # No new parameters, only the u, v buffers.
    assert sum(p.numel() for p in d.parameters()) == sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_safetensors_round_trip_restores_weights_and_power_iteration_state(name: str, tmp_path: Path) -> None:
    _, d = sn_models(name, "projection", d_dropout=0.0)
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([3, 1, 4, 1])
    d.train()
    with torch.no_grad():
        for _ in range(5):
            d(x, y)  # move u, v away from their initial values
    save_file(d.state_dict(), tmp_path / "d.safetensors")
    _, fresh = sn_models(name, "projection", seed=123, d_dropout=0.0)  # other init, other u, v
    fresh.load_state_dict(load_file(tmp_path / "d.safetensors"), strict=True)
    for key, value in d.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    d.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, y), d(x, y))
    d.train()
    fresh.train()
    with torch.no_grad():  # the next power iteration continues identically
        assert torch.equal(fresh(x, y), d(x, y))


@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_same_seed_gives_the_same_power_iteration_vectors(name: str) -> None:
    """What DDP relies on: each rank seeds identically before building D, so u, v agree everywhere."""
    _, a = sn_models(name)
    _, b = sn_models(name)
    _, c = sn_models(name, seed=1)
    u_keys = [k for k in a.state_dict() if k.endswith("._u")]
    assert u_keys
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    # Another seed, other vectors (u of a layer with one output is always [1], so not every u differs).
    multi = [k for k in u_keys if a.state_dict()[k].numel() > 1]
    assert multi and not any(torch.equal(a.state_dict()[k], c.state_dict()[k]) for k in multi)


@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_power_iteration_is_deterministic_and_data_independent(name: str) -> None:
    """u, v evolve from the weights alone: two copies fed different batches keep identical u, v, which
    is why ranks stay in agreement without broadcasting buffers."""
    _, a = sn_models(name, d_dropout=0.0, d_norm="none")
    b = copy.deepcopy(a)
    y = torch.tensor([0, 1])
    with torch.no_grad():
        for _ in range(3):
            a(torch.rand(2, 1, 28, 28), y)
            b(torch.rand(2, 1, 28, 28), y)
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_gradient_penalty_double_backward_reaches_the_original_weights(name: str) -> None:
    _, d = sn_models(name, "projection", d_dropout=0.0, d_norm="layer")
    x = (torch.rand(4, 1, 28, 28) * 2 - 1).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3])
    (grad,) = torch.autograd.grad(d(x, y).sum(), x, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()  # WGAN-GP form
    penalty.backward()
    grads = [m.parametrizations.weight.original.grad for m in d.modules() if parametrize.is_parametrized(m)]
    assert all(g is not None and g.isfinite().all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", OPTIONAL_SN)
def test_compiled_training_forward_matches_eager_and_advances_u_identically(name: str) -> None:
    torch._dynamo.reset()
    _, eager = sn_models(name, "projection", d_dropout=0.0)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x, y = torch.rand(4, 1, 28, 28) * 2 - 1, torch.tensor([2, 7, 1, 8])
    for _ in range(2):
        expected, actual = eager(x, y), compiled(x, y)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)
    for key, value in eager.state_dict().items():
        if key.endswith(("._u", "._v")):
            torch.testing.assert_close(compiled_model.state_dict()[key], value, atol=1e-6, rtol=1e-5)


def test_ranks_keep_identical_weights_and_vectors_under_ddp(tmp_path: Path) -> None:
    """2 gloo processes, each on its own data: parameters and u, v agree after every step, with and
    without DDP's buffer broadcast; seeding each rank differently breaks it (the control)."""
    out = tmp_path / "result.json"
    run_processes(Path(__file__).with_name("sn_ddp_worker.py"), 2, [str(out)], timeout_s=300)
    result = json.loads(out.read_text())
    assert result["world_size"] == 2
    for run in ("broadcast", "no_broadcast"):
        assert result[run] == {"identical": [True] * 4, "u_moved": True}, run
    assert result["no_broadcast_seed_per_rank"]["identical"] == [False] * 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_power_iteration_and_sigma_stay_float32_under_autocast(dtype: torch.dtype) -> None:
    """On CUDA, autocast runs the power iteration's `mv` in half precision (~3 digits of sigma, carried over in
    u and v from step to step); the parametrization turns autocast off around it. CPU autocast leaves `mv`
    alone, so here the check is the parametrization in place and sigma bit-equal with and without autocast;
    scripts/gpu_check.py repeats it on a GPU."""
    from gan_dist.models.base import FullPrecisionSpectralNorm

    _, d = sn_models("dcgan")
    layers = [m for m in d.modules() if isinstance(m, WEIGHT_TYPES)]
    assert layers and all(isinstance(m.parametrizations.weight[0], FullPrecisionSpectralNorm) for m in layers)
    plain, under_autocast = copy.deepcopy(d).train(), copy.deepcopy(d).train()
    for layer_plain, layer_auto in zip(plain.modules(), under_autocast.modules(), strict=True):
        if not isinstance(layer_plain, WEIGHT_TYPES):
            continue
        expected = layer_plain.weight  # one power iteration, float32
        with torch.autocast("cpu", dtype=dtype):
            got = layer_auto.weight
        assert got.dtype == torch.float32
        assert torch.equal(got, expected)
        assert torch.equal(layer_auto.parametrizations.weight[0]._u, layer_plain.parametrizations.weight[0]._u)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (autocast lowers mv there)")
def test_sigma_is_the_same_with_and_without_cuda_autocast() -> None:
    _, d = sn_models("dcgan")
    plain, under_autocast = copy.deepcopy(d).cuda().train(), copy.deepcopy(d).cuda().train()
    layer = next(m for m in plain.modules() if isinstance(m, nn.Conv2d))
    other = next(m for m in under_autocast.modules() if isinstance(m, nn.Conv2d))
    expected = layer.weight
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = other.weight
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=1e-6, atol=0)
