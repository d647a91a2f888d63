"""The step: phase isolation, image accounting with d_steps_per_g and accumulation, exact resume on both
loaders, no host sync inside the step, fused and foreach Adam agreeing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from gan_dist.checkpoint import complete_checkpoints
from gan_dist.configure import load_config
from gan_dist.train.trainer import EXIT_STOPPED_EARLY, Trainer, train


def config_for(shards: Path, out_dir: Path, *overrides: str):
    return load_config("configs/debug.yaml", [f"data.root={shards}", f"run.out_dir={out_dir}", "run.name=r",
                                              "log.sample_every=0", *overrides])


@pytest.mark.parametrize("overrides", [
    [],
    ["loss.name=wgan_gp", "model.d_norm=layer", "train.d_steps_per_g=2"],
    ["model.conditioning=acgan", "loss.name=hinge", "model.spectral_norm=true", "model.d_norm=none"],
])
def test_the_g_phase_changes_no_d_parameter_and_the_d_phase_no_g_parameter(mnist_shards, tmp_path, overrides):
    trainer = Trainer(config_for(mnist_shards, tmp_path, *overrides))
    try:
        G, D = trainer.networks.G, trainer.networks.D
        snapshot = lambda module: [p.detach().clone() for p in module.parameters()]  # noqa: E731
        seen: dict[str, object] = {}

        def after_d_step(optimizer, args, kwargs) -> None:
            seen.setdefault("G_after_d", snapshot(G))
            seen["D_after_d"] = snapshot(D)

        def before_g_step(optimizer, args, kwargs) -> None:
            seen["D_grads_in_g_phase"] = [p.grad for p in D.parameters()]

        trainer.networks.opt_d.optimizer.register_step_post_hook(after_d_step)
        trainer.networks.opt_g.optimizer.register_step_pre_hook(before_g_step)
        G_before, D_before = snapshot(G), snapshot(D)
        batches = trainer.batch_source()
        trainer.step.run(batches)
        batches.close()
        # D phase: G untouched; D moved. G phase: D untouched, with no gradient at all; G moved.
        assert all(torch.equal(a, b) for a, b in zip(seen["G_after_d"], G_before, strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(seen["D_after_d"], D_before, strict=True))
        assert all(grad is None for grad in seen["D_grads_in_g_phase"])
        assert all(torch.equal(a, b) for a, b in zip(snapshot(D), seen["D_after_d"], strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(snapshot(G), G_before, strict=True))
    finally:
        trainer.close()


class _SpyAugment(torch.nn.Module):
    """The run's augmentation, recording what it was given and what it returned, per call."""

    def __init__(self, augment: torch.nn.Module) -> None:
        super().__init__()
        self.augment, self.calls = augment, []

    def forward(self, images: torch.Tensor, draws) -> torch.Tensor:
        out = self.augment(images, draws)
        self.calls.append((images, out))
        return out


@pytest.mark.parametrize("overrides", [
    ["augment.name=diffaugment"],
    ["augment.name=ada_fixed", "augment.p=0.8", "loss.name=hinge", "loss.r1_gamma=1.0", "model.d_norm=none"],
])
def test_d_sees_only_augmented_images_in_both_phases_and_g_learns_through_the_augmentation(
        mnist_shards, tmp_path, overrides):
    """Every tensor that reaches D in the D phase (real, fake, the R1 penalty's reals) and the G phase is an
    output of the augmentation (the same module, the same pipeline), never a raw image; in the G phase that
    output is a function of G's images with their graph, so G's (nonzero) gradient came through it."""
    trainer = Trainer(config_for(mnist_shards, tmp_path, "train.batch_size_per_process=8", *overrides))
    try:
        G, D, step = trainer.networks.G, trainer.networks.D, trainer.step
        spy = _SpyAugment(step.augment)
        for holder in (step.D_phase_d, step.D_phase_g, step.D_penalty):
            if getattr(holder, "augment", None) is not None:
                holder.augment = spy
        d_inputs: list[tuple[str, torch.Tensor]] = []
        phase = {"name": "d"}
        D.register_forward_pre_hook(lambda module, args: d_inputs.append((phase["name"], args[0])))

        def g_phase_begins(optimizer, args, kwargs) -> None:
            phase["name"] = "g"

        trainer.networks.opt_d.optimizer.register_step_post_hook(g_phase_begins)
        g_grads: dict[str, torch.Tensor] = {}

        def before_g_step(optimizer, args, kwargs) -> None:
            g_grads.update({name: p.grad.clone() for name, p in G.named_parameters() if p.grad is not None})

        trainer.networks.opt_g.optimizer.register_step_pre_hook(before_g_step)
        batches = trainer.batch_source()
        step.run(batches)
        batches.close()
        outputs = [out for _, out in spy.calls]
        assert {name for name, _ in d_inputs} == {"d", "g"}
        for name, seen in d_inputs:  # the very tensors the augmentation returned (the penalty's included)
            assert any(seen is out or (seen.shape == out.shape and torch.equal(seen.float(), out.float()))
                       for out in outputs), name
            raw = [images for images, _ in spy.calls]
            assert not any(seen.shape == r.shape and torch.equal(seen, r) for r in raw), name
        [(g_input, g_output)] = [(i, o) for i, o in spy.calls if o.requires_grad and i.grad_fn is not None
                                 and any(seen is o for name, seen in d_inputs if name == "g")]
        assert g_output.grad_fn is not None  # G's graph runs through the augmentation into D
        assert g_grads and any(g.abs().sum() > 0 for g in g_grads.values())
    finally:
        trainer.close()


def _final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    step, path = complete_checkpoints(run_dir)[-1]
    tensors = {}
    for name in ("G", "D", "G_ema", "optimizer_G", "optimizer_D"):
        tensors.update({f"{name}.{k}": v for k, v in load_file(str(path / f"{name}.safetensors")).items()})
    return tensors


def _stop_at(trainer: Trainer, step: int) -> None:
    """SIGUSR1 to this process once the trainer reaches `step`, as SLURM does before a time limit."""

    def watch() -> None:
        while trainer.counters.step < step:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=watch, daemon=True).start()


@pytest.mark.parametrize("loader", ["stream", "memory"])
def test_d_steps_and_accumulation_resume_exactly_and_count_images(mnist_shards, tiny_shards, tmp_path, loader):
    """d_steps_per_g=2 and 2 micro-batches: preempted + resumed == uninterrupted, bit for bit, and every
    real batch is counted (steps x d_steps x micro-batches x batch). The memory loader reads the 300-image
    synthetic set (the whole MNIST train split would be decoded at each of the three starts)."""
    common = ("train.num_steps=8", "checkpoint.every=100", "train.ema_decay=0.9", "run.deterministic=true",
              "train.d_steps_per_g=2", "train.gradient_accumulation_steps=2", f"data.loader={loader}",
              "loss.name=wgan_gp", "model.d_norm=layer", "data.num_workers=1")
    if loader == "memory":
        mnist_shards = tiny_shards
        common += ("data.auto_prepare=false", "data.samples_per_shard=50")
    assert train(config_for(mnist_shards, tmp_path / "straight", *common)) == 0
    trainer = Trainer(config_for(mnist_shards, tmp_path / "split", *common))
    _stop_at(trainer, 3)
    try:
        assert trainer.fit() == EXIT_STOPPED_EARLY
    finally:
        trainer.close()
    resumed = Trainer(config_for(mnist_shards, tmp_path / "split", *common, "checkpoint.resume=auto"))
    assert 3 <= resumed.counters.step < 8
    assert resumed.counters.batches == resumed.counters.step * 2 * 2
    try:
        assert resumed.fit() == 0
    finally:
        resumed.close()
    straight, split = _final_tensors(tmp_path / "straight" / "r"), _final_tensors(tmp_path / "split" / "r")
    assert straight.keys() == split.keys()
    for name, value in straight.items():
        assert torch.equal(value, split[name]), name
    done = json.loads((tmp_path / "split" / "r" / "done.json").read_text())
    assert done["images_seen"] == 8 * 2 * 2 * 8  # steps x d_steps_per_g x micro-batches x batch_size


# Ops that make a CUDA device wait for the host to read a value, as far as a CPU run can see them: reading a
# scalar (.item(), bool(tensor); a CPU tensor's .tolist() reads memory without an op), comparing whole tensors, and ops whose output size depends on the
# data (nonzero, masked_select, unique, boolean-mask indexing, repeat_interleave without output_size). Copies
# to the host and torch.tensor(..., device=cuda) are invisible on a CPU: the CUDA test below sees them.
SYNCING_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.equal.default,
               torch.ops.aten.is_nonzero.default, torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
               torch.ops.aten._unique2.default, torch.ops.aten.unique_consecutive.default,
               torch.ops.aten.unique_dim.default}


class NoHostSync(TorchDispatchMode):
    """Fails on any op that makes the device wait for the host (see SYNCING_OPS)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNCING_OPS:
            raise AssertionError(f"host sync inside the step: {func}")
        if func is torch.ops.aten.index.Tensor and any(
                index is not None and index.dtype == torch.bool for index in args[1]):
            raise AssertionError(f"host sync inside the step: {func} with a boolean mask")
        if func is torch.ops.aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            raise AssertionError(f"host sync inside the step: {func} without output_size")
        return func(*args, **kwargs)


@pytest.mark.parametrize("overrides", [
    ["data.loader=memory"],
    ["data.loader=stream", "train.ema_decay=0.99", "optim.grad_clip_norm=1.0"],
    ["data.loader=memory", "loss.name=wgan_gp", "model.d_norm=layer", "train.d_steps_per_g=2"],
    ["data.loader=memory", "model.conditioning=projection", "loss.name=hinge", "loss.r1_gamma=1",
     "model.d_norm=none", "train.gradient_accumulation_steps=2"],
])
def test_the_step_never_reads_a_device_value_on_the_host(mnist_shards, tmp_path, overrides):
    trainer = Trainer(config_for(mnist_shards, tmp_path, *overrides))
    try:
        assert trainer.adam_implementation == "fused"  # foreach Adam reads its step counters with .item()
        batches = trainer.batch_source()
        trainer.step.run(batches)  # the first step creates Adam's state
        from gan_dist.train.logger import StatsAccumulator

        accumulator = StatsAccumulator(trainer.accelerator.device)
        with NoHostSync():
            for _ in range(3):
                for stats in trainer.step.run(batches):
                    accumulator.add(stats, trainer.counters.step)
        batches.close()
        means, _ = accumulator.read()  # the log cadence's single read
        assert "d_loss" in means and "g_loss" in means
    finally:
        trainer.close()


@pytest.mark.parametrize("syncing", [
    lambda x: x.sum().item(), lambda x: bool(x.sum()), lambda x: torch.nonzero(x),
    lambda x: x[x > 0], lambda x: torch.unique(x), lambda x: torch.repeat_interleave(x.long().abs()),
    lambda x: torch.equal(x, x)], ids=["item", "bool", "nonzero", "mask", "unique",
                                         "repeat_interleave", "equal"])
def test_the_sync_detector_catches_a_sync(syncing):
    with pytest.raises(AssertionError, match="host sync"), NoHostSync():
        syncing(torch.ones(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.set_sync_debug_mode)")
@pytest.mark.parametrize("overrides", [
    ["data.loader=memory", "dist.cpu=false"],
    ["data.loader=memory", "dist.cpu=false", "loss.name=hinge", "loss.r1_gamma=1", "model.d_norm=none",
     "model.conditioning=projection", "train.ema_decay=0.99"],
])
def test_the_cuda_step_never_syncs(mnist_shards, tmp_path, overrides):
    """On CUDA, torch flags every synchronizing call (copies to the host, .item(), pageable copies to the device,
    data-dependent shapes): after one warm-up step (Adam's state, the accumulator's index) none may happen."""
    from gan_dist.train.logger import StatsAccumulator

    trainer = Trainer(config_for(mnist_shards, tmp_path, *overrides))
    try:
        batches = trainer.batch_source()
        accumulator = StatsAccumulator(trainer.accelerator.device)
        for stats in trainer.step.run(batches):
            accumulator.add(stats, trainer.counters.step)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                for stats in trainer.step.run(batches):
                    accumulator.add(stats, trainer.counters.step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        batches.close()
    finally:
        trainer.close()


def test_fused_and_foreach_adam_train_the_same_model(mnist_shards, tmp_path):
    """mlp without dropout: every parameter gets a real gradient (in the Keras model, conv biases before
    BatchNorm get ~1e-10 gradients whose Adam updates are float noise, different for any two kernels)."""
    finals = {}
    for implementation in ("fused", "foreach"):
        overrides = ("train.num_steps=5", f"optim.implementation={implementation}", "run.deterministic=true",
                     f"run.name={implementation}", "model.name=mlp", "model.d_dropout=0.0",
                     "model.g_width=32", "model.d_width=32")
        assert train(config_for(mnist_shards, tmp_path, *overrides)) == 0
        step, path = complete_checkpoints(tmp_path / implementation)[-1]
        finals[implementation] = {**load_file(str(path / "G.safetensors")), **{
            f"D.{k}": v for k, v in load_file(str(path / "D.safetensors")).items()}}
        assert json.loads((tmp_path / implementation / "run.json").read_text())["adam_implementation"] == implementation
    for name, value in finals["fused"].items():
        torch.testing.assert_close(finals["foreach"][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_ada_p_and_the_path_length_mean_resume_exactly(mnist_shards, tmp_path):
    """stylegan2 at CPU width with ADA adjusting p every 2 D steps and lazy path-length regularization every 2
    G steps: stopped after step 4 and resumed, p, ADA's window and the running path length (extra_*.safetensors)
    and every weight equal the uninterrupted run's at step 8, bit for bit; p and pl_mean really moved."""
    overrides = ("model.name=stylegan2", "model.g_width=16", "model.d_width=16", "model.latent_dim=16",
                 "model.options.w_dim=16", "model.options.mapping_layers=2", "model.options.pl_every=2",
                 "model.options.pl_batch_shrink=2", "model.d_norm=none", "loss.r1_gamma=1.0", "loss.r1_every=2",
                 "augment.name=ada", "augment.p=0.3", "augment.interval=2", "augment.speed_kimg=1",
                 "train.num_steps=8", "checkpoint.every=4", "checkpoint.keep_last=3", "run.deterministic=true")
    assert train(config_for(mnist_shards, tmp_path, "run.name=straight", *overrides)) == 0
    assert train(config_for(mnist_shards, tmp_path, "run.name=split", *overrides, "train.num_steps=4")) == 0
    assert train(config_for(mnist_shards, tmp_path, "run.name=split", *overrides, "checkpoint.resume=auto")) == 0
    straight, split = (complete_checkpoints(tmp_path / name)[-1][1] for name in ("straight", "split"))
    for name in ("extra_augment", "extra_g_regularizer", "G", "D", "optimizer_G", "optimizer_D"):
        a, b = load_file(str(straight / f"{name}.safetensors")), load_file(str(split / f"{name}.safetensors"))
        assert a.keys() == b.keys(), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key}"
    augment = load_file(str(straight / "extra_augment.safetensors"))
    assert float(augment["p"]) != 0.3  # adjusted (by 16 / 1000 per adjustment, never exactly onto 0.3)
    regularizer = load_file(str(straight / "extra_g_regularizer.safetensors"))
    assert all(float(v.float().abs().sum()) > 0 for v in regularizer.values()), regularizer
