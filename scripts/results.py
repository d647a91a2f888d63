"""Reproduce the README's results table and sample figure (anyone can rerun it; CPU or GPU).

    python scripts/results.py --out results                     # keras_dcgan, dcgan, mlp at 50/2000/4000 steps
    python scripts/results.py --out results --models keras_dcgan --steps 1 50 2000 4000 10000
    python scripts/results.py --out results --report-only       # re-evaluate and re-print existing runs

For each model it trains one run (the model's config in configs/ at batch 32, one process) in segments:
train.num_steps = each milestone with checkpoint.resume=auto, so the run continues where it stopped
and leaves a checkpoint at every milestone. Each milestone's exported generator (G_ema when trained) is
evaluated with `gan_dist.metrics.evaluate` on --num generated images against the MNIST test split, next
to the real-data floor (as many real train images vs the test split). Writes OUT/results.md (the table
for the README), OUT/results.json, and OUT/samples.png: the trainer's fixed-noise 5x5 grids at
--grid-steps (default 1, 50, 2000), one row per model, like the Keras tutorial's figure.

CPU cost (2 cores): keras_dcgan ~4000 steps in about 10-15 minutes, dcgan and mlp less; each
evaluation of 10,000 images about 20 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_CONFIGS = {
    "keras_dcgan": "configs/mnist_dcgan.yaml",
    "dcgan": "configs/mnist_radford_dcgan.yaml",
    "mlp": "configs/mnist_mlp.yaml",
}
COLUMNS = (("fid", "FID", "{:.2f}"), ("inception_score", "IS", "{:.2f}"), ("precision", "precision", "{:.3f}"),
           ("recall", "recall", "{:.3f}"), ("density", "density", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("classes_covered", "classes", "{:.0f}"))


def run_overrides(out: Path, model: str, steps: int, extra: list[str]) -> list[str]:
    """A run with checkpoints only at the end of each segment, no in-training eval, no tracker.

    The configs' own batch sizes differ (mlp 64, dcgan 128); the table compares all models at batch 32.
    """
    return [f"run.out_dir={out / 'runs'}", f"run.name={model}", f"train.num_steps={steps}",
            "checkpoint.resume=auto", "checkpoint.every=0", "checkpoint.keep_last=100", "eval.eval_every=-1",
            "log.tracker=none", "log.progress_bar=false",
            # The same schedule for every model (the tutorial's): batch 32, a grid every 50 iterations.
            "train.batch_size_per_process=32", "log.sample_every=50", *extra]


def train_to(out: Path, model: str, steps: int, extra: list[str]) -> None:
    from gan_dist.config import load_config
    from gan_dist.train import train

    config = load_config(REPO_ROOT / MODEL_CONFIGS[model], run_overrides(out, model, steps, extra))
    status = train(config)
    if status != 0:
        raise SystemExit(f"training {model} to step {steps} exited with {status}")


def evaluate_checkpoint(out: Path, model: str, step: int, num: int, seed: int, extra: list[str]) -> dict:
    from gan_dist.checkpoint import step_dir_name
    from gan_dist.config import load_config
    from gan_dist.metrics.evaluate import eval_command

    checkpoint = out / "runs" / model / "checkpoints" / step_dir_name(step)
    json_path = out / "eval" / f"{model}_step{step}.json"
    if json_path.is_file():
        cached = json.loads(json_path.read_text())
        if cached.get("num_images") == num and cached.get("seed") == seed:
            return cached
    if not checkpoint.is_dir():
        raise SystemExit(f"{checkpoint} is missing: run without --report-only to train {model} to step {step}")
    # Data locations come from this script's config (the model's config + the overrides), never from the
    # checkpoint's generator.yaml.
    config = load_config(REPO_ROOT / MODEL_CONFIGS[model], [*extra, f"eval.num_samples={num}"])
    return eval_command(config, checkpoint=str(checkpoint), out_json=str(json_path), seed=seed)


def markdown_table(rows: list[dict], floor: dict, num: int) -> str:
    header = ["model", "iterations", "images seen", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], str(row["step"]), f"{row['images_seen']:,}",
                 *(fmt.format(row["metrics"][key]) for key, _, fmt in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["real train images (floor)", "", "", *(fmt.format(floor[key]) for key, _, fmt in COLUMNS)]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        f"\n\n{num:,} generated images per row, against the 10,000 MNIST test images in the feature space of "
        "the packaged MNIST classifier (gan_dist/metrics/weights). FID: lower is better; IS, precision, "
        "recall, density, coverage: higher is better (density can exceed 1); classes: digits that get >= 2% "
        f"of the classifier's predictions. Floor: {num:,} real train images. Reproduce: "
        "`python scripts/results.py`.\n")


def sample_figure(out: Path, models: list[str], steps: list[int]) -> Path:
    """The trainer's fixed-noise grids, one row per model, one column per step, labelled."""
    from PIL import Image, ImageDraw

    grids = {(m, s): Image.open(out / "runs" / m / "samples" / f"step_{s:08d}.png").convert("L")
             for m in models for s in steps}
    width, height = next(iter(grids.values())).size
    label_w, label_h, pad = 90, 18, 6
    figure = Image.new("L", (label_w + len(steps) * (width + pad), label_h + len(models) * (height + pad)), 255)
    draw = ImageDraw.Draw(figure)
    for j, step in enumerate(steps):
        draw.text((label_w + j * (width + pad) + 4, 2), f"iteration {step}", fill=0)
    for i, model in enumerate(models):
        draw.text((4, label_h + i * (height + pad) + height // 2), model, fill=0)
        for j, step in enumerate(steps):
            figure.paste(grids[model, step], (label_w + j * (width + pad), label_h + i * (height + pad)))
    path = out / "samples.png"
    figure.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--models", nargs="+", default=list(MODEL_CONFIGS), choices=list(MODEL_CONFIGS))
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 2000, 4000],
                        help="milestones (iterations at batch 32) that get a table row")
    parser.add_argument("--grid-steps", type=int, nargs="+", default=[1, 50, 2000],
                        help="iterations whose sample grids make the figure (multiples of log.sample_every, or 1)")
    parser.add_argument("--num", type=int, default=10000, help="generated images per evaluation")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the evaluation")
    parser.add_argument("--report-only", action="store_true", help="do not train; evaluate existing checkpoints")
    parser.add_argument("overrides", nargs="*", default=[], help="extra key=value config overrides for training")
    args = parser.parse_args(argv)
    out: Path = args.out
    steps = sorted(set(args.steps))
    batch = 32  # the configs' train.batch_size_per_process, one process (for runs without meta.json)
    if not args.report_only:
        for model in args.models:
            for step in steps:
                train_to(out, model, step, args.overrides)
    rows, floor = [], None
    for model in args.models:
        for step in steps:
            result = evaluate_checkpoint(out, model, step, args.num, args.seed, args.overrides)
            floor = result["floor"]
            meta = out / "runs" / model / "checkpoints" / f"step_{step:08d}" / "meta.json"
            images_seen = json.loads(meta.read_text())["images_seen"] if meta.is_file() else step * batch
            rows.append({"model": model, "step": step, "images_seen": images_seen, "metrics": result["metrics"]})
    table = markdown_table(rows, floor or {}, args.num)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"rows": rows, "floor": floor, "num": args.num}, indent=2))
    print(table)
    grid_steps = [s for s in args.grid_steps if all(
        (out / "runs" / m / "samples" / f"step_{s:08d}.png").is_file() for m in args.models)]
    if grid_steps:
        print(f"wrote {sample_figure(out, args.models, grid_steps)} (iterations {grid_steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
