"""`gan-dist bench`: training images/s of the framework against a bare PyTorch loop, in one run.

For each (batch size, precision, channels_last) the same model is trained for the same number of
steps two ways, interleaved (bare, framework, bare, framework) so that drift of the machine hits both:
  - framework: `Trainer.train_step` fed by the real WebDataset stream (loader, Accelerate, stats);
  - bare: the same G/D/Adam/loss math in plain PyTorch on batches already in memory.
The ratio framework / bare is the framework's efficiency (1.0 = no overhead; the bare loop does not
even load data). Optionally also N processes vs 1 process with N threads, through real training runs.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from gan_dist.config import Config, to_yaml
from gan_dist.losses import discriminator_loss, generator_loss
from gan_dist.models import build_models


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop_images_per_s(config: Config, num_steps: int, warmup_steps: int, device: torch.device) -> float:
    """The seed's step in plain PyTorch: no Accelerate, no loader (batches pre-made in memory)."""
    train_cfg, optim_cfg = config.train, config.optim
    torch.manual_seed(config.run.seed)
    G, D = build_models(config.model)
    G, D = G.to(device), D.to(device)
    channels_last = train_cfg.channels_last and config.model.name != "mlp"
    if channels_last:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    betas = (optim_cfg.beta1, optim_cfg.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=optim_cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=optim_cfg.lr_d, betas=betas)
    batch_size = train_cfg.batch_size_per_process
    reals = [torch.rand(batch_size, 1, 28, 28, device=device) * 2 - 1 for _ in range(8)]  # (B, 1, 28, 28)
    if channels_last:
        reals = [real.contiguous(memory_format=torch.channels_last) for real in reals]
    precision = train_cfg.mixed_precision
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else torch.autocast(device.type, dtype=torch.float16) if precision == "fp16" else nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step(real: torch.Tensor) -> None:
        z = torch.randn(batch_size, config.model.latent_dim, device=device)
        with autocast:
            fake = G(z)
            real_logits, fake_logits = D(real), D(fake.detach())
        d_loss, _ = discriminator_loss(real_logits, fake_logits)
        scaler.scale(d_loss).backward()
        scaler.step(opt_d)
        scaler.update()
        opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        with autocast:
            g_logits = D(fake)
        g_loss, _ = generator_loss(g_logits)
        scaler.scale(g_loss).backward()
        scaler.step(opt_g)
        scaler.update()
        opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(True)

    for index in range(warmup_steps):
        step(reals[index % len(reals)])
    _sync(device)
    start = time.perf_counter()
    for index in range(num_steps):
        step(reals[index % len(reals)])
    _sync(device)
    return num_steps * batch_size / (time.perf_counter() - start)


def framework_images_per_s(config: Config, num_steps: int, warmup_steps: int) -> tuple[float, torch.device]:
    """Trainer.train_step fed by the real training stream, with the per-step stats it accumulates."""
    from gan_dist.data.loader import train_batches
    from gan_dist.data.shards import train_urls
    from gan_dist.train import Trainer

    trainer = Trainer(config)
    try:
        device = trainer.accelerator.device
        batches = train_batches(config.data, train_urls(config.data), config.train.batch_size_per_process,
                                seed=config.run.seed, rank=0, world_size=1)
        stat_sums: dict[str, torch.Tensor] = {}

        def step() -> None:
            real, _labels = next(batches)
            for key, value in trainer.train_step(real).items():
                stat_sums[key] = stat_sums.get(key, 0.0) + value

        for _ in range(warmup_steps):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(num_steps):
            step()
        torch.stack(list(stat_sums.values())).sum().item()  # the host sync a log line would do
        _sync(device)
        elapsed_s = time.perf_counter() - start
    finally:
        trainer.close()
    return num_steps * config.train.batch_size_per_process / elapsed_s, device


def _variant(config: Config, **changes: Any) -> Config:
    variant = copy.deepcopy(config)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        setattr(getattr(variant, section), key, value)
    return variant


def bench_training(config: Config, batch_sizes: list[int], num_steps: int, warmup_steps: int,
                   precisions: list[str], out_json: str | None = None, repeats: int = 2,
                   channels_last_options: tuple[bool, ...] = (False, True),
                   process_counts: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Print (and return) images/s for each variant: framework, bare loop, ratio. See module docstring."""
    from gan_dist.data.shards import ensure_shards

    ensure_shards(config.data)
    config = _variant(config, log__tracker="none", log__progress_bar=False, run__name="bench",
                      run__out_dir=tempfile.mkdtemp(prefix="gan_dist_bench_"))
    rows = []
    print(f"model {config.model.name}, {num_steps} timed steps after {warmup_steps} warm-up, best of {repeats}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'batch':>5} {'precision':>9} {'ch_last':>7} {'framework img/s':>15} {'bare img/s':>10} {'ratio':>6}")
    for batch_size in batch_sizes:
        for precision in precisions:
            for channels_last in channels_last_options:
                variant = _variant(config, train__batch_size_per_process=batch_size,
                                   train__mixed_precision=precision, train__channels_last=channels_last)
                framework, bare = [], []
                for _ in range(repeats):
                    images_per_s, device = framework_images_per_s(variant, num_steps, warmup_steps)
                    framework.append(images_per_s)
                    bare.append(bare_loop_images_per_s(variant, num_steps, warmup_steps, device))
                row = {"model": config.model.name, "batch_size": batch_size, "precision": precision,
                       "channels_last": channels_last, "device": str(device),
                       "framework_images_per_s": max(framework), "bare_images_per_s": max(bare),
                       "ratio": max(framework) / max(bare)}
                rows.append(row)
                print(f"{batch_size:>5} {precision:>9} {str(channels_last):>7} {row['framework_images_per_s']:>15.1f} "
                      f"{row['bare_images_per_s']:>10.1f} {row['ratio']:>6.3f}", flush=True)
    for num_processes in process_counts:
        rows.append(bench_processes(config, num_processes))
        if out_json:
            Path(out_json).write_text(json.dumps(rows, indent=2) + "\n")
    if out_json:
        Path(out_json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def bench_processes(config: Config, num_processes: int, num_steps: int = 200) -> dict[str, Any]:
    """N CPU processes (gloo, 1 thread each) vs 1 process with N threads: whole `gan-dist train` runs,
    same global batch, images/s and peak RSS read from each run's done.json."""
    global_batch = config.train.batch_size_per_process
    results = {}
    for processes, threads in ((1, num_processes), (num_processes, 1)):
        out_dir = Path(tempfile.mkdtemp(prefix="gan_dist_bench_procs_"))
        variant = _variant(config, train__num_steps=num_steps, run__out_dir=str(out_dir), run__name="run",
                           train__batch_size_per_process=global_batch // processes, dist__cpu=True,
                           log__log_every=50, log__sample_every=0, eval__eval_every=-1, checkpoint__every=0)
        config_path = out_dir / "config.yaml"
        config_path.write_text(to_yaml(variant))
        # `--cpu` with several processes starts only one (it is not the multi-CPU path); --multi_gpu plus
        # dist.cpu=true forms the gloo group (see launch/accelerate/cpu_multi_process.yaml).
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if processes > 1:
            command.append("--multi_gpu")
        command += ["-m", "gan_dist", "train", str(config_path)]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ACCELERATE_USE_CPU": "1"}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
        done = json.loads((out_dir / "run" / "done.json").read_text())
        results[f"{processes}x{threads}"] = done
        print(f"{processes} process(es) x {threads} thread(s), global batch {global_batch}: "
              f"{done['images_per_s']:.1f} img/s, peak RSS main {done['peak_rss_mb']['process']:.0f} MiB, "
              f"loader workers {done['peak_rss_mb']['children']:.0f} MiB", flush=True)
    single, multi = results[f"1x{num_processes}"], results[f"{num_processes}x1"]
    return {"processes": num_processes, "one_process_images_per_s": single["images_per_s"],
            "multi_process_images_per_s": multi["images_per_s"],
            "ratio": multi["images_per_s"] / single["images_per_s"],
            "peak_rss_mb": {"one_process": single["peak_rss_mb"], "multi_process": multi["peak_rss_mb"]}}
