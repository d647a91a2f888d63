"""The GPU check: correctness checks with thresholds and the throughput table, as phases, each in a fresh
process under its own timeout, each appending its result to OUT/report.jsonl as it ends. Exits 1 when a
check fails, a phase crashes or runs out of time. Runs on a CPU too (`--device cpu --small`: what CI runs),
where the CUDA-only phases are recorded as skipped.

    python scripts/gpu_check.py --out gpu_check                       # on a GPU machine, <= 8 minutes
    python scripts/gpu_check.py --out gpu_check --phases env,sync     # a subset
    python scripts/gpu_check.py --out /tmp/check --device cpu --small

Phases, in order (a phase is skipped when the time left, --budget-s, is shorter than its timeout):
  env         the device, torch, CUDA, bf16 support
  sync        the step under torch.cuda.set_sync_debug_mode("error") (no host sync), two recipes
  numerics    spectral norm's sigma with and without autocast; fp16 with WGAN-GP and R1 trains without a
              false "diverged" and with finite statistics
  resume      N steps straight = N/2 + resume + N/2 in deterministic mode, bf16 and fp16 (Radford's DCGAN:
              deterministic CUDA kernels): G, D, G_ema and both optimizers' state bit-equal
  cuda_graph  the captured step against the eager one from the same start (float32, deterministic): G, D,
              G_ema and optimizer state within 1e-4; a mid-run checkpoint load drops the graph (invalidate)
              and continues exactly as the uninterrupted graph run
  bench       the seed DCGAN, framework vs a bare loop of the same model, batch 32 / 256 / 1024 / 4096,
              eager and CUDA graph in bf16, eager in fp16; >= 3 interleaved rounds of >= 1 s chunks; kernels
              per step from the profiler; share of the dense tensor-core peak of the precision
  compile     train.compile=true with R1 (inductor), a short run
The data is a synthetic MNIST-shaped set written into OUT/shards (no internet, no real dataset: throughput
does not depend on pixel values). A machine without webdataset/omegaconf needs their wheels (launch/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

PHASES = ("env", "sync", "numerics", "resume", "cuda_graph", "bench", "compile")
TIMEOUTS_S = {"env": 60, "sync": 90, "numerics": 90, "resume": 90, "cuda_graph": 90, "bench": 240, "compile": 150}
CUDA_ONLY = ("sync", "numerics", "cuda_graph", "compile")
GRAPH_TOLERANCE = 1e-4  # max |eager - graph| over every tensor of G, D, G_ema and the optimizers (float32)


# -- helpers (run inside a phase's process) --------------------------------------------------------------

def synthetic_shards(out: Path, num_train: int, num_test: int) -> Path:
    """MNIST-shaped random shards (28x28 grayscale, labels 0-9), written once into out/shards."""
    import numpy as np

    from gan_dist.data.shards import write_shards
    from gan_dist.data.sources import ImageArrays

    directory = out / "shards"
    if (directory / "manifest.json").is_file():
        return directory
    rng = np.random.default_rng(0)
    arrays = ImageArrays(train_images=rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
                         train_labels=rng.integers(0, 10, num_train).astype(np.int64),
                         test_images=rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
                         test_labels=rng.integers(0, 10, num_test).astype(np.int64), source="synthetic")
    write_shards(directory, arrays, samples_per_shard=5000)
    return directory


def config(args: argparse.Namespace, name: str, *overrides: str) -> Any:
    from gan_dist.configure import load_config

    return load_config(None, [
        f"data.root={args.out / 'shards'}", "data.auto_prepare=false", "data.loader=memory",
        f"run.out_dir={args.out / 'runs'}", f"run.name={name}", "log.tracker=none", "log.progress_bar=false",
        "log.log_every=10", "log.sample_every=0", "eval.eval_every=-1", "checkpoint.every=0",
        f"dist.cpu={'true' if args.device == 'cpu' else 'false'}", *overrides])


def final_tensors(run_dir: Path) -> dict[str, Any]:
    """G, D, G_ema and both optimizers' tensors of a run's newest checkpoint."""
    from safetensors.torch import load_file

    from gan_dist.checkpoint import complete_checkpoints

    _, path = complete_checkpoints(run_dir)[-1]
    tensors = {}
    for name in ("G", "D", "G_ema", "optimizer_G", "optimizer_D"):
        if (path / f"{name}.safetensors").is_file():
            tensors.update({f"{name}.{k}": v for k, v in load_file(str(path / f"{name}.safetensors")).items()})
    return tensors


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Max |a - b| over shared tensors, the names that differ, and whether both sets are finite."""
    diffs = {name: (value.double() - b[name].double()).abs().max().item() if value.numel() else 0.0
             for name, value in a.items()}
    return {"tensors": len(a), "same_names": set(a) == set(b), "max_abs_diff": max(diffs.values(), default=0.0),
            "differing": sorted(name for name, d in diffs.items() if d > 0)[:10],
            "finite": all(bool(value.float().isfinite().all()) for value in [*a.values(), *b.values()])}


def train_status(cfg: Any) -> int:
    from gan_dist.train.trainer import train

    return train(cfg)


# -- phases --------------------------------------------------------------------------------------------

def phase_env(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    result: dict[str, Any] = {"torch": torch.__version__, "device": args.device, "passed": True}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        result.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_gib=props.total_memory / 2**30,
                      multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                      bf16=torch.cuda.is_bf16_supported(), nccl=torch.distributed.is_nccl_available())
        result["passed"] = bool(torch.cuda.is_available())
    return result


def phase_sync(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from gan_dist.train.logger import StatsAccumulator
    from gan_dist.train.trainer import Trainer

    recipes = {"seed_bf16": [], "projection_r1_ema": ["loss.name=hinge", "loss.r1_gamma=1", "model.d_norm=none",
                                                        "model.conditioning=projection", "train.ema_decay=0.99"]}
    results = {}
    for name, overrides in recipes.items():
        trainer = Trainer(config(args, f"sync_{name}", "train.mixed_precision=bf16", *overrides))
        try:
            batches = trainer.batch_source()
            accumulator = StatsAccumulator(trainer.accelerator.device)
            for stats in trainer.step.run(batches):  # warm-up: Adam's state, the accumulator's index
                accumulator.add(stats, trainer.counters.step)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for _ in range(5):
                    for stats in trainer.step.run(batches):
                        accumulator.add(stats, trainer.counters.step)
                results[name] = "no sync"
            except RuntimeError as error:
                results[name] = f"SYNC: {str(error).splitlines()[0]}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
            batches.close()
        finally:
            trainer.close()
    return {"recipes": results, "passed": all(value == "no sync" for value in results.values())}


def phase_numerics(args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import torch
    from torch import nn

    from gan_dist.config import ModelConfig
    from gan_dist.models.build import build_discriminator

    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(name="dcgan", d_width=64, spectral_norm=True, d_norm="none"), (3, 64, 64))
    D = D.cuda().train()
    plain, autocast = copy.deepcopy(D), copy.deepcopy(D)
    layer_plain = next(m for m in plain.modules() if isinstance(m, nn.Conv2d))
    layer_auto = next(m for m in autocast.modules() if isinstance(m, nn.Conv2d))
    expected = layer_plain.weight
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = layer_auto.weight
    sigma_diff = (got.double() - expected.double()).abs().max().item()
    runs = {}
    for name, overrides in {"wgan_gp": ["loss.name=wgan_gp", "model.d_norm=layer", "train.d_steps_per_g=2"],
                            "r1": ["loss.name=hinge", "loss.r1_gamma=10", "model.d_norm=none"]}.items():
        status = train_status(config(args, f"fp16_{name}", "train.mixed_precision=fp16", "train.num_steps=40",
                                     "log.log_every=5", *overrides))
        tensors = final_tensors(args.out / "runs" / f"fp16_{name}")
        runs[name] = {"exit": status, "finite": all(bool(t.float().isfinite().all()) for t in tensors.values())}
    passed = sigma_diff == 0.0 and got.dtype == torch.float32 and all(
        run["exit"] == 0 and run["finite"] for run in runs.values())
    return {"sn_weight_dtype_under_autocast": str(got.dtype), "sn_max_abs_diff": sigma_diff, "fp16_runs": runs,
            "passed": passed}


def phase_resume(args: argparse.Namespace) -> dict[str, Any]:
    precisions = ["bf16"] if args.device == "cpu" else ["bf16", "fp16"]
    steps = 4 if args.small else 30
    results = []
    for precision in precisions:
        # dcgan: transposed convolutions have deterministic CUDA kernels (nearest upsampling's backward may not)
        common = (f"train.mixed_precision={precision}", "run.deterministic=true", "train.ema_decay=0.99",
                  "model.name=dcgan")
        statuses = [train_status(config(args, f"straight_{precision}", f"train.num_steps={steps}", *common)),
                    train_status(config(args, f"split_{precision}", f"train.num_steps={steps // 2}", *common)),
                    train_status(config(args, f"split_{precision}", f"train.num_steps={steps}",
                                        "checkpoint.resume=auto", *common))]
        check = compare(final_tensors(args.out / "runs" / f"straight_{precision}"),
                        final_tensors(args.out / "runs" / f"split_{precision}"))
        results.append({"precision": precision, "steps": steps, "exits": statuses, **check,
                        "exact": check["max_abs_diff"] == 0.0 and check["same_names"]})
    return {"runs": results, "passed": all(r["exact"] and r["finite"] and r["exits"] == [0, 0, 0] for r in results)}


def phase_cuda_graph(args: argparse.Namespace) -> dict[str, Any]:
    from gan_dist.checkpoint import complete_checkpoints
    from gan_dist.train.trainer import Trainer

    steps = 20
    common = ("train.mixed_precision=no", "run.deterministic=true", "train.ema_decay=0.99", f"train.num_steps={steps}",
              "model.name=dcgan")
    statuses = [train_status(config(args, "eager", *common)),
                train_status(config(args, "graph", *common, "train.cuda_graph=true"))]
    graph_vs_eager = compare(final_tensors(args.out / "runs" / "eager"), final_tensors(args.out / "runs" / "graph"))
    # A mid-run load into a running graph: checkpoint at 10, 5 more steps, load step 10, the same 5 again.
    trainer = Trainer(config(args, "graph_reload", *common, "train.cuda_graph=true"))
    try:
        trainer._start_logging()  # the statistics that save_checkpoint checks
        batches = trainer.batch_source()
        for _ in range(10):
            trainer.step.run(batches)
        trainer.save_checkpoint(10)
        for _ in range(5):
            trainer.step.run(batches)
        after_first = {k: v.detach().clone() for k, v in trainer.networks.G.state_dict().items()}
        batches.close()
        [(_, path)] = [(step, p) for step, p in complete_checkpoints(trainer.run.path) if step == 10]
        trainer.load_checkpoint(path)
        batches = trainer.batch_source()  # resumes at the checkpoint's sample
        for _ in range(5):
            trainer.step.run(batches)
        after_reload = {k: v.detach().clone() for k, v in trainer.networks.G.state_dict().items()}
        batches.close()
    finally:
        trainer.close()
    reload = compare(after_first, after_reload)
    passed = (statuses == [0, 0] and graph_vs_eager["finite"] and graph_vs_eager["same_names"]
              and graph_vs_eager["max_abs_diff"] <= GRAPH_TOLERANCE and reload["max_abs_diff"] <= GRAPH_TOLERANCE)
    return {"steps": steps, "exits": statuses, "graph_vs_eager": graph_vs_eager, "reload_then_continue": reload,
            "tolerance": GRAPH_TOLERANCE, "passed": passed}


def phase_bench(args: argparse.Namespace) -> dict[str, Any]:
    from gan_dist.bench.training import bench_training

    base = config(args, "bench")
    if args.small:
        cases = [([16], ["bf16"], ["eager"])]
        steps, warmup, rounds, min_chunk_s = 3, 1, 1, 0.0
    else:
        modes = args.bench_modes.split(",")
        cases = [([32, 256, 1024, 4096], ["bf16"], modes)] + ([] if os.environ.get("GPU_CHECK_NCHW") else [([32, 4096], ["fp16"], ["eager"])])
        steps, warmup, rounds, min_chunk_s = 20, 20, 3, 1.0
    rows = []
    for batch_sizes, precisions, modes in cases:
        rows += bench_training(base, batch_sizes=batch_sizes, num_steps=steps, warmup_steps=warmup,
                               precisions=precisions, loaders=["memory"], modes=modes, objectives=["ns"],
                               channels_last=args.device == "cuda" and not os.environ.get("GPU_CHECK_NCHW"),
                               device=args.device, repeats=rounds,
                               out_json=str(args.out / "bench.json"), min_chunk_s=min_chunk_s)
    (args.out / "bench.json").write_text(json.dumps(rows, indent=2) + "\n")
    within = [row["ratio"] >= 0.9 for row in rows]
    return {"rows": len(rows), "best_images_per_s": max(row["framework_images_per_s"] for row in rows),
            "framework_within_10_percent_of_bare": all(within), "passed": bool(rows)}


def phase_compile(args: argparse.Namespace) -> dict[str, Any]:
    status = train_status(config(args, "compiled_r1", "train.compile=true", "train.mixed_precision=bf16",
                                 "loss.name=hinge", "loss.r1_gamma=1", "loss.r1_every=2", "model.d_norm=none",
                                 "train.num_steps=20"))
    tensors = final_tensors(args.out / "runs" / "compiled_r1")
    finite = all(bool(t.float().isfinite().all()) for t in tensors.values())
    return {"exit": status, "finite": finite, "passed": status == 0 and finite}


# -- the runner ------------------------------------------------------------------------------------------

def run_phase(args: argparse.Namespace) -> int:
    """Inside a phase's own process: run it, write OUT/phase_<name>.json (even on a crash)."""
    started = time.perf_counter()
    try:
        result = globals()[f"phase_{args.phase}"](args)
    except Exception as error:  # noqa: BLE001 - reported in the phase's result, the runner decides
        result = {"passed": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    result = {"phase": args.phase, "seconds": round(time.perf_counter() - started, 1), **result}
    (args.out / f"phase_{args.phase}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def run_all(args: argparse.Namespace) -> int:
    phases = args.phases.split(",") if args.phases else list(PHASES)
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        raise SystemExit(f"--phases: unknown {', '.join(unknown)} (choose from {', '.join(PHASES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / "report.jsonl"
    started = time.perf_counter()
    synthetic_shards(args.out, *((600, 200) if args.small else (20000, 2000)))
    summary: dict[str, str] = {}
    for phase in phases:
        timeout = TIMEOUTS_S[phase] * (3 if args.device == "cpu" else 1)
        left = args.budget_s - (time.perf_counter() - started)
        if args.device == "cpu" and phase in CUDA_ONLY:
            result = {"phase": phase, "skipped": "needs CUDA", "passed": True}
        elif left < min(timeout, 30):
            result = {"phase": phase, "skipped": f"budget: {left:.0f} s left", "passed": False}
        else:
            (args.out / f"phase_{phase}.json").unlink(missing_ok=True)
            command = [sys.executable, __file__, "--phase", phase, "--out", str(args.out), "--device", args.device]
            command += (["--small"] if args.small else []) + ["--bench-modes", args.bench_modes]
            log = open(args.out / "phases.log", "a")  # noqa: SIM115 - closed below, also on timeout
            log.write(f"\n===== {phase} =====\n")
            log.flush()
            try:
                # cuBLAS reads its workspace setting when CUDA starts: deterministic runs need it set before.
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=min(timeout, left), cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
                path = args.out / f"phase_{phase}.json"
                result = json.loads(path.read_text()) if path.is_file() else {
                    "phase": phase, "passed": False, "error": "the phase's process died (see phases.log)"}
            except subprocess.TimeoutExpired:
                result = {"phase": phase, "passed": False, "error": f"timed out after {min(timeout, left):.0f} s"}
            finally:
                log.close()
        with open(report_path, "a") as handle:
            handle.write(json.dumps(result, default=str) + "\n")
        summary[phase] = "skipped" if "skipped" in result and result["passed"] else (
            "pass" if result.get("passed") else "FAIL")
        print(f"{phase:>10}: {summary[phase]} {json.dumps({k: v for k, v in result.items() if k not in ('traceback', 'phase')}, default=str)[:400]}",
              flush=True)
    total = time.perf_counter() - started
    (args.out / "report.json").write_text(json.dumps({"summary": summary, "seconds": round(total, 1),
                                                      "device": args.device}, indent=2) + "\n")
    print(f"gpu_check: {sum(v == 'pass' for v in summary.values())} passed, "
          f"{sum(v == 'FAIL' for v in summary.values())} failed, {sum(v == 'skipped' for v in summary.values())} "
          f"skipped in {total:.0f} s; report {report_path}")
    return 1 if "FAIL" in summary.values() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny data and few steps (the CPU/CI mode)")
    parser.add_argument("--phases", default="", help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--budget-s", type=float, default=480.0, help="whole-script budget (phases beyond it skip)")
    parser.add_argument("--bench-modes", default="eager,cuda_graph", help="bench: eager, cuda_graph, compile")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = parser.parse_args(argv)
    if args.phase:
        return run_phase(args)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here (use --device cpu --small for the CPU mode)")
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
