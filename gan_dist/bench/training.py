"""`gan-dist bench`: training throughput of the framework against a bare PyTorch loop, measured in one run.

For each case (batch size x precision x data.loader x step mode x objective) the same model trains two
ways, both built and warmed up once and then timed in alternating chunks of `num_steps` steps (framework,
bare, bare, framework, ...; `repeats` rounds), so that the machine's drift hits both alike. The img/s columns
are each side's best chunk; the ratio is the median of the rounds' paired ratios (adjacent chunks), with
its range:
  - framework: the Trainer's step (`GANStep.run`, or its CUDA graph) fed by the real batch source
    (stream: WebDataset workers, pinned uint8, scaled on the device; memory: on-device gather), with the
    statistics accumulated on the device and read at the end of every chunk, as a log line would;
  - bare: the same G, D, Adam kernels and objective math in plain PyTorch (no Accelerate, no loader) on
    batches already on the device, compiled or captured when the framework is, with R1 on the same lazy
    schedule (loss.r1_every) so that both do the same work.
The ratio framework / bare is the framework's efficiency (1.0 = no overhead). Columns also give ms per
step, TFLOP/s (FLOPs of one step counted by torch.utils.flop_counter) and its share of the device's peak
where known, the bound (on CUDA: the share of the step the GPU is busy, from the profiler; host-bound
below 80%), and peak memory. `--train-runs` also times whole `gan-dist train` runs (start-up excluded),
e.g. the default recipe, and N CPU processes against 1 process of N threads.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gan_dist.config import Config, to_yaml
from gan_dist.data.datasets import resolve_dataset
from gan_dist.distributed import adam_implementation, adam_kwargs
from gan_dist.models.build import build_models
from gan_dist.objectives.objective import DPhaseInputs, build_objective
from gan_dist.registry.architectures import uses_channels_last
from gan_dist.registry.objectives import penalizes_gradients
from gan_dist.train.logger import StatsAccumulator
from gan_dist.train.trainer import Trainer

# Dense tensor-core peaks (FLOP/s) by device name and precision, for the "share of peak" column: bf16/fp16,
# and TF32 for float32 runs (torch uses TF32 there: gan_dist.distributed.configure_backends). Datasheet values.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
PEAK_TF32_FLOPS = {"H200": 494e12, "H100": 494e12, "A100": 156e12, "L40S": 181e12, "L4": 60e12, "A10": 62e12}


@dataclass(frozen=True)
class BenchCase:
    batch_size: int
    precision: str  # no | bf16 | fp16
    loader: str  # stream | memory
    mode: str  # eager | compile | cuda_graph
    objective: str  # loss.name
    channels_last: bool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _variant(config: Config, **changes: Any) -> Config:
    variant = copy.deepcopy(config)
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        setattr(getattr(variant, section), key, value)
    return variant


def case_config(config: Config, case: BenchCase, device: str) -> Config:
    """The config of one case: its batch, precision, loader, mode and objective; a critic without
    BatchNorm (LayerNorm, the penalized configs' choice) when the case's loss penalizes input gradients."""
    variant = _variant(
        config, train__batch_size_per_process=case.batch_size, train__mixed_precision=case.precision,
        train__channels_last=case.channels_last, data__loader=case.loader, loss__name=case.objective,
        train__compile=case.mode == "compile", train__cuda_graph=case.mode == "cuda_graph",
        dist__cpu=device == "cpu")
    if penalizes_gradients(variant.loss) and variant.model.d_norm == "batch":
        variant.model.d_norm = "layer"
    return variant


def _autocast(device: torch.device, precision: str, cache_enabled: bool = True) -> Any:
    """The bare loop's autocast; without its cast cache when the step is captured in a CUDA graph (cached
    casts would be freed at the context's exit while the graph still writes them)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache_enabled)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16, cache_enabled=cache_enabled)
    return nullcontext()


def _bare_step(config: Config, device: torch.device, image_shape: tuple[int, int, int],
               num_classes: int) -> tuple[Callable[[torch.Tensor, torch.Tensor], None], list[torch.Tensor]]:
    """The step in plain PyTorch, and pre-made real batches on the device."""
    train_cfg, optim_cfg = config.train, config.optim
    torch.manual_seed(config.run.seed)
    G, D = build_models(config.model, image_shape, num_classes)
    G, D = G.to(device), D.to(device)
    channels_last = uses_channels_last(config.model, train_cfg.channels_last)
    if channels_last:
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    kernels = adam_kwargs(adam_implementation(optim_cfg.implementation, device))
    extra = {"capturable": True} if train_cfg.cuda_graph else {}
    betas = (optim_cfg.beta1, optim_cfg.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=optim_cfg.lr_g, betas=betas, **kernels, **extra)
    opt_d = torch.optim.Adam(D.parameters(), lr=optim_cfg.lr_d, betas=betas, **kernels, **extra)
    G_call, D_call = (torch.compile(G), torch.compile(D)) if train_cfg.compile else (G, D)
    objective = build_objective(config.loss)
    batch_size = train_cfg.batch_size_per_process
    reals = [torch.rand(batch_size, *image_shape, device=device) * 2 - 1 for _ in range(4)]  # (B, C, H, W)
    if channels_last:
        reals = [real.contiguous(memory_format=torch.channels_last) for real in reals]
    labels = torch.randint(max(num_classes, 1), (batch_size,), device=device)
    autocast = _autocast(device, train_cfg.mixed_precision, cache_enabled=not train_cfg.cuda_graph)
    scaler = torch.amp.GradScaler(device.type, enabled=train_cfg.mixed_precision == "fp16")
    g_params = list(G.parameters())
    cond = num_classes > 0
    d_steps = [0]  # D steps taken: lazy R1 (loss.r1_every) on the framework's schedule, for equal work

    def step(real: torch.Tensor, real_labels: torch.Tensor) -> None:
        for _ in range(train_cfg.d_steps_per_g):
            z = torch.randn(batch_size, config.model.latent_dim, device=device)
            fake_labels = torch.randint(num_classes, (batch_size,), device=device) if cond else None
            with autocast:
                fake = G_call(z, fake_labels).float()  # as the framework (Accelerate returns fp32 outputs)
                mix = torch.rand(batch_size, device=device) if objective.needs_mix else None
                loss, _ = objective.d_phase(D_call, DPhaseInputs(real, real_labels if cond else None,
                                                                 fake.detach(), fake_labels, mix,
                                                                 d_step_index=d_steps[0]))
            scaler.scale(loss).backward()
            scaler.step(opt_d)
            scaler.update()
            opt_d.zero_grad(set_to_none=True)
            d_steps[0] += 1
        with autocast:
            loss, _ = objective.g_phase(D_call, fake, fake_labels)
        scaler.scale(loss).backward(inputs=g_params)
        scaler.step(opt_g)
        scaler.update()
        opt_g.zero_grad(set_to_none=True)

    if not train_cfg.cuda_graph:
        return (lambda real, real_labels: step(real, real_labels)), [*reals, labels]
    # The bare loop captured the same way: warm up on a side stream, record once, replay.
    static_real, static_labels = reals[0].clone(), labels.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step(static_real, static_labels)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static_real, static_labels)

    def replay(real: torch.Tensor, real_labels: torch.Tensor) -> None:
        static_real.copy_(real)
        graph.replay()

    return replay, [*reals, labels]


def count_flops(config: Config, device: torch.device, image_shape: tuple[int, int, int], num_classes: int) -> float:
    """FLOPs of one bare eager step (matmuls and convolutions, forward and backward, penalties' double
    backward included; lazy R1 averaged over its cycle), with torch.utils.flop_counter's per-op formulas.

    A dispatch mode of our own rather than FlopCounterMode: that one tracks modules with backward hooks,
    which torch.autograd.grad (the gradient penalties) refuses."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class CountFlops(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                self.total += count(*args, **kwargs, out_val=out)
            return out

    eager = _variant(config, train__compile=False, train__cuda_graph=False)
    step, tensors = _bare_step(eager, device, image_shape, num_classes)
    step(tensors[0], tensors[-1])  # lazy state first
    # Lazy R1 (every loss.r1_every-th D step) makes steps unequal: average over one whole schedule cycle.
    loss, d_steps_per_g = eager.loss, eager.train.d_steps_per_g
    cycle = loss.r1_every // math.gcd(loss.r1_every, d_steps_per_g) if loss.r1_gamma > 0 else 1
    counter = CountFlops()
    with counter:
        for _ in range(cycle):
            step(tensors[0], tensors[-1])
    return float(counter.total) / cycle


class BareRunner:
    """The bare loop of `config`'s model and objective on batches already on the device."""

    def __init__(self, config: Config, device: torch.device, image_shape: tuple[int, int, int], num_classes: int):
        self.device = device
        self._step, tensors = _bare_step(config, device, image_shape, num_classes)
        self._reals, self._labels = tensors[:-1], tensors[-1]
        self._index = 0

    def run(self, num_steps: int) -> None:
        for _ in range(num_steps):
            self._step(self._reals[self._index % len(self._reals)], self._labels)
            self._index += 1
        _sync(self.device)


def _profile_steps(run_steps: Callable[[int], None], device: torch.device,
                   ms_per_step: float) -> tuple[float | None, float | None]:
    """(share of a step the GPU spends in kernels: the profiler's device time / wall time, kernels launched
    per step) over 5 steps; (None, None) on CPUs."""
    if device.type != "cuda":
        return None, None
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run_steps(5)
            _sync(device)
        events = [event for event in prof.events() if str(getattr(event, "device_type", "")).endswith("CUDA")]
        busy_us = sum(getattr(event, "self_device_time_total", 0.0) for event in prof.key_averages())
        return busy_us / 1000 / 5 / ms_per_step, len(events) / 5
    except Exception:  # noqa: BLE001 - a profiler problem must not lose the benchmark
        return None, None


class FrameworkRunner:
    """The Trainer's step fed by the real batch source, statistics summed on the device and read after every
    `run` (the host sync a log line does). Close it: it owns loader workers."""

    def __init__(self, config: Config):
        self.trainer = Trainer(config)
        try:
            self.device = self.trainer.accelerator.device
            self._stats_sum = StatsAccumulator(self.device)
            self._batches = self.trainer.batch_source()
        except BaseException:
            self.trainer.close()
            raise

    def run(self, num_steps: int) -> None:
        for _ in range(num_steps):
            for stats in self.trainer.step.run(self._batches):
                self._stats_sum.add(stats, self.trainer.counters.step)
        self._stats_sum.read()
        _sync(self.device)

    def close(self) -> None:
        self._batches.close()
        self.trainer.close()


def time_interleaved(framework: FrameworkRunner, bare: BareRunner, num_steps: int,
                     rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per chunk of num_steps for each side, in rounds that alternate which side goes first."""
    framework_s, bare_s = [], []
    for round_index in range(rounds):
        for side in ((framework, bare) if round_index % 2 == 0 else (bare, framework)):
            start = time.perf_counter()
            side.run(num_steps)
            (framework_s if side is framework else bare_s).append(time.perf_counter() - start)
    return framework_s, bare_s


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def peak_flops(device_name: str, precision: str) -> float | None:
    """The device's dense tensor-core peak for `precision` (TF32's for float32 runs); None when unknown."""
    table = PEAK_FLOPS if precision in ("bf16", "fp16") else PEAK_TF32_FLOPS
    return next((flops for name, flops in table.items() if name in device_name), None)


HEADER = (f"{'batch':>5} {'prec':>4} {'loader':>6} {'mode':>10} {'loss':>7} {'framework img/s':>15} "
          f"{'bare img/s':>10} {'ratio':>5} {'range':>11} {'ms/step':>7} {'TFLOP/s':>7} {'% peak':>6} {'bound':>6} {'mem MiB':>7}")


def _row_line(row: dict[str, Any]) -> str:
    peak = f"{100 * row['peak_share']:.1f}" if row["peak_share"] is not None else "-"
    return (f"{row['batch_size']:>5} {row['precision']:>4} {row['loader']:>6} {row['mode']:>10} {row['objective']:>7} "
            f"{row['framework_images_per_s']:>15.1f} {row['bare_images_per_s']:>10.1f} {row['ratio']:>5.3f} "
            f"{row['ratio_range'][0]:>5.3f}-{row['ratio_range'][1]:<5.3f} "
            f"{row['ms_per_step']:>7.2f} {row['tflops']:>7.3f} {peak:>6} {row['bound']:>6} {row['memory_mb']:>7.0f}")


def _measure_case(config: Config, case: BenchCase, num_steps: int, warmup_steps: int, rounds: int,
                  device: torch.device, image_shape: tuple[int, int, int], min_chunk_s: float = 0.0) -> dict[str, Any]:
    """One row: both sides built and warmed up once, then timed interleaved (see the module docstring).
    With min_chunk_s, the chunks grow until one takes at least that long (a GPU step can take microseconds)."""
    framework = FrameworkRunner(config)
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        framework.run(max(warmup_steps, 1))
        # the framework's own peak (the bare loop is not built yet); on CPUs the process's peak RSS
        memory_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mb()
        num_classes = framework.trainer.num_classes
        bare = BareRunner(config, device, image_shape, num_classes)
        bare.run(max(warmup_steps, 1))
        if min_chunk_s > 0:
            start = time.perf_counter()
            framework.run(num_steps)
            pilot_s = time.perf_counter() - start
            num_steps = max(num_steps, math.ceil(num_steps * min_chunk_s / max(pilot_s, 1e-6)))
        framework_s, bare_s = time_interleaved(framework, bare, num_steps, rounds)
        ms_per_step = 1000 * min(framework_s) / num_steps
        busy, kernels = _profile_steps(framework.run, device, ms_per_step)
        _, bare_kernels = _profile_steps(bare.run, device, 1000 * min(bare_s) / num_steps)
        adam = framework.trainer.adam_implementation
    finally:
        framework.close()
    images = num_steps * config.train.batch_size_per_process * config.train.d_steps_per_g
    paired = sorted(bare / fw for fw, bare in zip(framework_s, bare_s, strict=True))  # framework / bare img/s
    flops = count_flops(config, device, image_shape, num_classes)
    tflops = flops * 1000 / ms_per_step / 1e12
    device_name = _device_name(device)
    peak = peak_flops(device_name, case.precision)
    return {**asdict(case), "device": device_name,
            "framework_images_per_s": images / min(framework_s), "bare_images_per_s": images / min(bare_s),
            "ratio": statistics.median(paired), "ratio_range": [paired[0], paired[-1]],
            "ms_per_step": ms_per_step, "flops_per_step": flops, "tflops": tflops,
            "peak_share": tflops * 1e12 / peak if peak else None,
            "bound": "cpu" if busy is None else ("device" if busy >= 0.8 else "host"),
            "gpu_busy_share": busy, "kernels_per_step": kernels, "bare_kernels_per_step": bare_kernels,
            "steps_per_chunk": num_steps, "chunk_seconds": [framework_s, bare_s], "memory_mb": memory_mb,
            "adam": adam}


def bench_training(config: Config, batch_sizes: list[int], num_steps: int, warmup_steps: int,
                   precisions: list[str], loaders: list[str], modes: list[str], objectives: list[str],
                   channels_last: bool = False, device: str = "auto", repeats: int = 2,
                   out_json: str | None = None, min_chunk_s: float = 0.0) -> list[dict[str, Any]]:
    """Print (and return) one row per case: framework and bare img/s, ratio, ms/step, TFLOP/s, bound, memory."""
    dataset = resolve_dataset(config.data)  # shards once, before any timing
    run_dir = tempfile.mkdtemp(prefix="gan_dist_bench_")
    config = _variant(config, log__tracker="none", log__progress_bar=False, run__name="bench", run__out_dir=run_dir,
                      eval__eval_every=-1)
    use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    torch_device = torch.device("cpu" if use_cpu else "cuda")
    print(f"{config.model.name} on {dataset.describe()}, chunks of {num_steps} timed steps after {warmup_steps} "
          f"warm-up, {repeats} interleaved round(s); device {_device_name(torch_device)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads")
    print(HEADER, flush=True)
    rows = []
    for batch_size in batch_sizes:
        for precision in precisions:
            for loader in loaders:
                for mode in modes:
                    for objective in objectives:
                        case = BenchCase(batch_size, precision, loader, mode, objective, channels_last)
                        if mode == "cuda_graph" and (use_cpu or loader != "memory"):
                            continue  # a graph replays device buffers: CUDA and the memory loader only
                        variant = case_config(config, case, "cpu" if use_cpu else "cuda")
                        if variant.train.compile:
                            torch._dynamo.reset()  # fresh caches per case: rebuilt models would hit recompile limits
                        row = _measure_case(variant, case, num_steps, warmup_steps, repeats, torch_device,
                                            dataset.image_shape, min_chunk_s)
                        row["model"] = config.model.name
                        rows.append(row)
                        print(_row_line(row), flush=True)
                        if out_json:
                            Path(out_json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def bench_train_runs(config: Config, num_steps: int, process_counts: tuple[int, ...] = (1,),
                     overrides: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Whole `gan-dist train` runs (the loop's throughput from done.json: logging, grids and checkpoints
    included, start-up excluded). With N > 1 in process_counts: N CPU processes (gloo, 1 thread each)
    against 1 process of N threads, at the same global batch."""
    results = []
    for count in process_counts:
        pairs = ((1, count), (count, 1)) if count > 1 else ((1, torch.get_num_threads()),)
        for processes, threads in pairs:
            out_dir = Path(tempfile.mkdtemp(prefix="gan_dist_bench_run_"))
            global_batch = config.train.batch_size_per_process
            variant = _variant(config, train__num_steps=num_steps, run__out_dir=str(out_dir), run__name="run",
                               train__batch_size_per_process=global_batch // processes, log__tracker="none",
                               eval__eval_every=-1, log__progress_bar=False)
            variant.dist.cpu = processes > 1 or variant.dist.cpu
            config_path = out_dir / "config.yaml"
            config_path.write_text(to_yaml(variant))
            # `--cpu` with several processes starts only one; --multi_gpu plus dist.cpu=true forms the gloo group.
            command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
            if processes > 1:
                command.append("--multi_gpu")
            command += ["-m", "gan_dist", "train", str(config_path), *overrides]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            if processes > 1:
                env["ACCELERATE_USE_CPU"] = "1"
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
            done = json.loads((out_dir / "run" / "done.json").read_text())
            record = {"processes": processes, "threads": threads, "global_batch": global_batch,
                      "steps": num_steps, "images_per_s": done["images_per_s"], "peak_rss_mb": done["peak_rss_mb"]}
            results.append(record)
            print(f"gan-dist train, {processes} process(es) x {threads} thread(s), global batch {global_batch}, "
                  f"{num_steps} steps: {done['images_per_s']:.1f} img/s (loop incl. logging, grids, checkpoints), "
                  f"peak RSS {done['peak_rss_mb']['process']:.0f} MiB", flush=True)
    return results
