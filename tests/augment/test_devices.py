"""The properties the training step relies on, on every available device (CUDA tests skip without a GPU):
exact identity at p = 0, rank slicing of device generators, no host sync (and no CUDA synchronisation),
bitwise-repeatable gradients under torch.use_deterministic_algorithms, bf16 images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_dist.augment.ada import AdaptiveAugment
from gan_dist.augment.diffaugment import DiffAugment
from gan_dist.augment.draws import GeneratorDraws
from tests.augment.common import NoHostSync, r1_step

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
AUGMENTS = {"ada": lambda: AdaptiveAugment("bgc", p=0.8), "diffaugment": lambda: DiffAugment()}


def draws(device: str, seed: int = 0, rank: int = 0, world_size: int = 1) -> GeneratorDraws:
    return GeneratorDraws(torch.Generator(device=device).manual_seed(seed), rank, world_size)


def conv_discriminator(channels: int, device: str) -> nn.Module:
    """Convolutions only (a CUDA matmul under deterministic algorithms would need CUBLAS_WORKSPACE_CONFIG)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.Softplus(),
                         nn.Conv2d(4, 1, 3, stride=2, padding=1), nn.Flatten(1)).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_p_zero_is_exactly_the_identity_on_the_device(device):
    for shape in [(8, 1, 28, 28), (4, 3, 32, 32)]:
        x = torch.randn(shape, device=device)
        assert torch.equal(AdaptiveAugment("bgc", p=0.0).to(device)(x, draws(device)), x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", AUGMENTS)
def test_two_ranks_of_b_augment_as_one_process_of_2b_on_the_device(device, name):
    augment = AUGMENTS[name]().to(device)
    x = torch.randn(8, 3, 16, 16, device=device)
    whole = augment(x, draws(device, 3))
    halves = torch.cat([augment(x[4 * r:4 * (r + 1)], draws(device, 3, r, 2)) for r in range(2)])
    assert torch.equal(whole, halves)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", AUGMENTS)
def test_r1_and_the_controller_never_wait_for_the_device(device, name):
    """The dispatch detector, plus on CUDA torch's sync debug mode set to raise."""
    augment = AUGMENTS[name]().to(device)
    D = conv_discriminator(3, device)
    x = torch.randn(4, 3, 16, 16, device=device)
    source = draws(device)
    r1_step(D, augment, x, source)  # warm-up outside the checks
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        with NoHostSync():
            r1_step(D, augment, x, source)
            if isinstance(augment, AdaptiveAugment):
                augment.accumulate(D(augment(x, source)).detach())
                augment.adjust(lambda t: t, batch_size_global=4)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", AUGMENTS)
def test_gradients_repeat_bit_for_bit_under_deterministic_algorithms(device, name):
    """No op here lacks a deterministic implementation (gather's backward is a scatter-add)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            D = conv_discriminator(3, device)
            x = torch.randn(16, 3, 16, 16, device=device, generator=torch.Generator(device=device).manual_seed(1))
            grad, _ = r1_step(D, AUGMENTS[name]().to(device), x, draws(device, 2))
            runs.append([grad.detach()] + [p.grad for p in D.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    finally:
        torch.use_deterministic_algorithms(deterministic)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", AUGMENTS)
def test_bf16_images_stay_bf16_and_close_to_float32(device, name):
    augment = AUGMENTS[name]().to(device)
    x = torch.randn(8, 3, 16, 16, device=device)
    low = augment(x.bfloat16(), draws(device, 5))
    assert low.dtype == torch.bfloat16
    assert (low.float() - augment(x, draws(device, 5))).abs().max() < 0.1
