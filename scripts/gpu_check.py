"""One prepared GPU check: a CUDA smoke test (fp16 and bf16 training, a checkpoint, an exact resume, the
CUDA-graph step against the eager one) and the throughput table, in a few minutes. Runs on a CPU too,
with small settings (`--device cpu --small`, what CI exercises), where fp16 and CUDA graphs are skipped.

    python scripts/gpu_check.py --out gpu_check                 # on a GPU machine (no internet needed)
    python scripts/gpu_check.py --out /tmp/check --device cpu --small

The data is a synthetic MNIST-shaped set (random digits-sized images, 10 labels) written as shards in the
output folder, so the check needs neither the internet nor the real dataset; throughput does not depend on
pixel values. Writes OUT/report.json and prints a summary; the bench table goes to OUT/bench.json.
A GPU machine without webdataset/omegaconf/wandb needs their wheels installed first (see the device notes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def synthetic_shards(out: Path, num_train: int, num_test: int) -> Path:
    """MNIST-shaped random shards (28x28 grayscale, labels 0-9), written once."""
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


def _config(shards: Path, out: Path, name: str, device: str, *overrides: str):
    from gan_dist.configure import load_config

    return load_config(REPO_ROOT / "configs" / "mnist_dcgan.yaml", [
        f"data.root={shards}", "data.auto_prepare=false", f"run.out_dir={out / 'runs'}", f"run.name={name}",
        "log.tracker=none", "log.progress_bar=false", "log.log_every=10", "log.sample_every=0",
        "eval.eval_every=-1", "checkpoint.every=0", f"dist.cpu={'true' if device == 'cpu' else 'false'}",
        *overrides])


def _final_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    from gan_dist.checkpoint import complete_checkpoints

    _, path = complete_checkpoints(run_dir)[-1]
    tensors = {}
    for name in ("G", "D", "optimizer_G", "optimizer_D"):
        tensors.update({f"{name}.{k}": v for k, v in load_file(str(path / f"{name}.safetensors")).items()})
    return tensors


def resume_check(shards: Path, out: Path, device: str, precision: str, steps: int) -> dict:
    """N steps straight vs N/2 steps, a checkpoint, a new process-local Trainer resuming to N: equal?"""
    from gan_dist.train.trainer import train

    common = (f"train.mixed_precision={precision}", "run.deterministic=true", "data.loader=memory",
              "train.ema_decay=0.99")
    start = time.perf_counter()
    assert train(_config(shards, out, f"straight_{precision}", device, f"train.num_steps={steps}", *common)) == 0
    assert train(_config(shards, out, f"split_{precision}", device, f"train.num_steps={steps // 2}", *common)) == 0
    assert train(_config(shards, out, f"split_{precision}", device, f"train.num_steps={steps}",
                         "checkpoint.resume=auto", *common)) == 0
    straight = _final_tensors(out / "runs" / f"straight_{precision}")
    split = _final_tensors(out / "runs" / f"split_{precision}")
    differing = [name for name, value in straight.items() if not value.equal(split[name])]
    max_diff = max(((value.float() - split[name].float()).abs().max().item() for name, value in straight.items()),
                   default=0.0)
    finite = all(value.float().isfinite().all().item() for value in straight.values())
    return {"precision": precision, "steps": steps, "exact": not differing, "tensors_differing": len(differing),
            "max_abs_diff": max_diff, "finite": finite, "seconds": time.perf_counter() - start}


def cuda_graph_check(shards: Path, out: Path, steps: int) -> dict:
    """The CUDA-graph step against the eager one from the same start: losses and parameters close."""
    from gan_dist.train.trainer import train

    common = ("train.mixed_precision=bf16", "data.loader=memory", f"train.num_steps={steps}", "train.ema_decay=0.99")
    assert train(_config(shards, out, "eager", "cuda", *common)) == 0
    assert train(_config(shards, out, "graph", "cuda", *common, "train.cuda_graph=true")) == 0
    eager, graph = _final_tensors(out / "runs" / "eager"), _final_tensors(out / "runs" / "graph")
    diffs = {name: (value.float() - graph[name].float()).abs().max().item() for name, value in eager.items()}
    return {"steps": steps, "max_abs_diff": max(diffs.values()), "finite": all(
        value.float().isfinite().all().item() for value in graph.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny data and few steps (the CPU/CI mode)")
    args = parser.parse_args(argv)
    import torch

    from gan_dist.bench.training import bench_training

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --small for the CPU mode)")
    shards = synthetic_shards(out, *((600, 200) if args.small else (60000, 10000)))
    report: dict = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                    "torch": torch.__version__}
    precisions = ["bf16"] if args.device == "cpu" else ["fp16", "bf16"]
    steps = 4 if args.small else 40
    report["resume"] = [resume_check(shards, out, args.device, precision, steps) for precision in precisions]
    if args.device == "cuda":
        report["cuda_graph"] = cuda_graph_check(shards, out, 30)
    bench_config = _config(shards, out, "bench", args.device)
    if args.small:
        rows = bench_training(bench_config, batch_sizes=[16], num_steps=3, warmup_steps=1, precisions=["bf16"],
                              loaders=["stream", "memory"], modes=["eager"], objectives=["ns"], device=args.device,
                              repeats=1, out_json=str(out / "bench.json"))
    else:
        rows = bench_training(bench_config, batch_sizes=[256, 1024, 4096], num_steps=50, warmup_steps=20,
                              precisions=["bf16"], loaders=["stream", "memory"], modes=["eager", "compile", "cuda_graph"],
                              objectives=["ns"], channels_last=True, device=args.device, repeats=1,
                              out_json=str(out / "bench.json"))
    report["bench"] = rows
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for check in report["resume"]:
        print(f"resume {check['precision']}: exact={check['exact']} (max |diff| {check['max_abs_diff']:.3g}), "
              f"finite={check['finite']}, {check['seconds']:.0f} s")
    if "cuda_graph" in report:
        print(f"cuda graph vs eager after {report['cuda_graph']['steps']} steps: max |diff| "
              f"{report['cuda_graph']['max_abs_diff']:.3g}, finite={report['cuda_graph']['finite']}")
    print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
