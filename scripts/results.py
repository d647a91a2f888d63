"""Reproduce the README's results: the table, the sample figures and the quality-vs-time plot (CPU or GPU).

    python scripts/results.py --out results                                  # keras_dcgan, dcgan, mlp at 50/2000/4000
    python scripts/results.py --out results --models lsgan hinge_sn cgan acgan projection --steps 4000
    python scripts/results.py --out results --models wgan_gp --steps 1000    # 5 critic steps per G step
    python scripts/results.py --out results --report-only                    # re-print existing runs
    python scripts/results.py --plot results/runs/keras_dcgan results/runs/fast --out docs/fid_vs_time.png

Training: one run per recipe (its config in configs/, one process) in segments: train.num_steps = each
milestone with checkpoint.resume=auto, so the run continues where it stopped and leaves a checkpoint at
every milestone; it evaluates every --eval-every steps and at each milestone (--num generated images,
G_ema when trained), and logs each evaluation with its wall-clock time in RUN/evals.jsonl. A milestone
without a logged evaluation is evaluated from its checkpoint. The seed models (keras_dcgan, dcgan, mlp)
are compared at the tutorial's schedule (batch 32, a grid every 50 iterations); the other recipes run
their configs as written. Writes OUT/results.md (the table for the README), OUT/results.json, and
OUT/samples.png: the trainer's fixed-noise grids at --grid-steps, one row per recipe (one row per class
for a conditional G, inside its grid).

--plot draws FID against wall-clock minutes and against images seen for the given runs, from their own
evals.jsonl (needs matplotlib: pip install -e ".[plot]").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# recipe -> (config, overrides that put it on the comparison's schedule)
SEED_SCHEDULE = ["train.batch_size_per_process=32", "log.sample_every=50"]
RECIPES = {
    "keras_dcgan": ("configs/mnist_dcgan.yaml", SEED_SCHEDULE),
    "dcgan": ("configs/mnist_radford_dcgan.yaml", SEED_SCHEDULE),
    "dcgan_own": ("configs/mnist_radford_dcgan.yaml", []),
    "mlp": ("configs/mnist_mlp.yaml", SEED_SCHEDULE),
    "mlp_own": ("configs/mnist_mlp.yaml", []),
    "lsgan": ("configs/mnist_lsgan.yaml", []),
    "hinge_sn": ("configs/mnist_hinge_sn.yaml", []),
    "wgan_gp": ("configs/mnist_wgan_gp.yaml", []),
    "cgan": ("configs/mnist_cgan.yaml", []),
    "acgan": ("configs/mnist_acgan.yaml", []),
    "projection": ("configs/mnist_projection.yaml", []),
    "fast": ("configs/mnist_fast.yaml", []),
    "fashion": ("configs/fashion_mnist_dcgan.yaml", []),
    "fashion_hinge_sn": ("configs/fashion_mnist_hinge_sn.yaml", []),
}
COLUMNS = (("fid", "FID", "{:.2f}"), ("inception_score", "IS", "{:.2f}"), ("precision", "precision", "{:.3f}"),
           ("recall", "recall", "{:.3f}"), ("density", "density", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("classes_covered", "classes", "{:.0f}"), ("class_accuracy", "class acc.", "{:.3f}"),
           ("intra_fid", "intra-FID", "{:.2f}"))


def run_overrides(out: Path, recipe: str, steps: int, num: int, eval_every: int, extra: list[str]) -> list[str]:
    """A segment of the recipe's run: to `steps`, resuming, evaluating and logging, no tracker."""
    return [f"run.out_dir={out / 'runs'}", f"run.name={recipe}", f"train.num_steps={steps}",
            "checkpoint.resume=auto", "checkpoint.every=0", "checkpoint.keep_last=100",
            f"eval.eval_every={eval_every}", f"eval.num_samples={num}", "log.tracker=none",
            "log.progress_bar=false", *RECIPES[recipe][1], *extra]


def load_recipe(recipe: str, overrides: list[str]):
    from gan_dist.configure import load_config

    return load_config(REPO_ROOT / RECIPES[recipe][0], overrides)


def train_to(out: Path, recipe: str, steps: int, num: int, eval_every: int, extra: list[str]) -> None:
    from gan_dist.train.trainer import train

    status = train(load_recipe(recipe, run_overrides(out, recipe, steps, num, eval_every, extra)))
    if status != 0:
        raise SystemExit(f"training {recipe} to step {steps} exited with {status}")


def read_evals(run_dir: Path) -> dict[int, dict]:
    """The run's evaluations by step (a step evaluated twice keeps the later record)."""
    path = run_dir / "evals.jsonl"
    records = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records[int(record["step"])] = record
    return records


def milestone_result(out: Path, recipe: str, step: int, num: int, seed: int, extra: list[str]) -> dict:
    """Metrics, floor, images seen and minutes of a recipe at a milestone: from the run's own evaluation
    when it logged one with `num` samples, else by evaluating the milestone's checkpoint."""
    from gan_dist.checkpoint import load_generator, step_dir_name
    from gan_dist.metrics.evaluate import evaluate_generator

    run_dir = out / "runs" / recipe
    checkpoint = run_dir / "checkpoints" / step_dir_name(step)
    state_path = checkpoint / "train_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    logged = read_evals(run_dir).get(step)
    if logged is not None and logged.get("num_samples") == num and "floor" in logged:
        metrics, floor = logged["metrics"], logged["floor"]
        minutes = logged["elapsed_s"] / 60
    else:
        if not checkpoint.is_dir():
            raise SystemExit(f"{checkpoint} is missing: run without --report-only to train {recipe} to step {step}")
        # Data locations come from this script's config (the recipe's + the overrides), never from the
        # checkpoint's generator.yaml.
        config = load_recipe(recipe, [*RECIPES[recipe][1], *extra, f"eval.num_samples={num}"])
        G, info = load_generator(checkpoint=checkpoint)
        result, _ = evaluate_generator(config, G, info, seed=seed)
        (out / "eval").mkdir(parents=True, exist_ok=True)
        (out / "eval" / f"{recipe}_{step}.json").write_text(json.dumps(result, indent=2) + "\n")
        metrics, floor = result["metrics"], result["floor"]
        minutes = state.get("elapsed_s", float("nan")) / 60
    return {"recipe": recipe, "step": step, "images_seen": state.get("images_seen", logged and logged["images_seen"]),
            "minutes": minutes, "metrics": metrics, "floor": floor}


def _cell(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    return fmt.format(value) if isinstance(value, (int, float)) else "-"


def markdown_table(rows: list[dict], num: int) -> str:
    header = ["recipe", "iterations", "images seen", "minutes", *(title for _, title, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    floors: dict[str, dict] = {}
    for row in rows:
        cells = [row["recipe"], str(row["step"]), f"{row['images_seen']:,}", f"{row['minutes']:.1f}",
                 *(_cell(row["metrics"], key, fmt) for key, _, fmt in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
        dataset = "fashion_mnist" if row["recipe"].startswith("fashion") else "mnist"
        floors.setdefault(dataset, row["floor"])
    for dataset, floor in floors.items():
        cells = [f"real train images ({dataset} floor)", "", "", "", *(_cell(floor, key, fmt) for key, _, fmt in COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        f"\n\n{num:,} generated images per row (G_ema when trained), against the test split in the feature space "
        "of the dataset's packaged classifier (gan_dist/metrics/weights). FID, intra-FID (per-class FID averaged "
        "over classes): lower is better; IS, precision, recall, density, coverage, class accuracy (the share of "
        "a conditional G's samples classified as the class asked for): higher is better; classes: classes that "
        f"get >= 2% of the classifier's predictions. Floor: {num:,} real train images. minutes: the run's "
        "wall-clock on 2 CPU cores, start-up and evaluations included. Reproduce: `python scripts/results.py`.\n")


def sample_figure(out: Path, recipes: list[str], steps: list[int]) -> Path:
    """The trainer's fixed-noise grids, one row per recipe, one column per step, labelled."""
    from PIL import Image, ImageDraw

    grids = {(r, s): Image.open(out / "runs" / r / "samples" / f"step_{s:08d}.png").convert("RGB")
             for r in recipes for s in steps}
    width = max(image.size[0] for image in grids.values())
    height = max(image.size[1] for image in grids.values())
    label_w, label_h, pad = 120, 22, 10
    figure = Image.new("RGB", (label_w + len(steps) * (width + pad), label_h + len(recipes) * (height + pad)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(figure)
    for j, step in enumerate(steps):
        draw.text((label_w + j * (width + pad) + 4, 4), f"iteration {step}", fill=(0, 0, 0))
    for i, recipe in enumerate(recipes):
        draw.text((4, label_h + i * (height + pad) + height // 2), recipe, fill=(0, 0, 0))
        for j, step in enumerate(steps):
            figure.paste(grids[recipe, step], (label_w + j * (width + pad), label_h + i * (height + pad)))
    path = out / "samples.png"
    figure.save(path)
    return path


def plot_runs(run_dirs: list[Path], out_png: Path, metric: str = "fid", floor: bool = True,
              images_only: list[Path] = ()) -> Path:
    """FID (or another metric) against wall-clock minutes and against images seen, one line per run,
    from each run's evals.jsonl; the real-data floor as a dashed line. Runs in `images_only` are drawn
    against images seen only (dotted): runs whose wall-clock is not comparable (e.g. measured while the
    machine was shared with other work)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plot]'") from error
    figure, (by_time, by_images) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    floor_value = None
    for run_dir in [*run_dirs, *images_only]:
        records = [read_evals(run_dir)[step] for step in sorted(read_evals(run_dir))]
        if not records:
            raise SystemExit(f"{run_dir}: no evals.jsonl (train with eval.eval_every > 0)")
        values = [record["metrics"][metric] for record in records]
        if run_dir in images_only:
            by_images.plot([r["images_seen"] for r in records], values, marker=".", linestyle=":", label=run_dir.name)
        else:
            by_time.plot([r["elapsed_s"] / 60 for r in records], values, marker="o", label=run_dir.name)
            by_images.plot([r["images_seen"] for r in records], values, marker="o", label=run_dir.name)
        floor_value = floor_value or records[-1].get("floor", {}).get(metric)
    for axis, label in ((by_time, "wall-clock minutes (2 CPU cores; start-up and evaluations included)"),
                        (by_images, "real images seen")):
        axis.set_xlabel(label)
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        if floor and floor_value:
            axis.axhline(floor_value, color="gray", linestyle="--", label="real data (floor)")
    by_time.set_ylabel(f"{metric.upper() if metric == 'fid' else metric} (log scale)")
    by_time.legend(loc="upper right", fontsize=8)
    by_images.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=110)
    return out_png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results")
    parser.add_argument("--models", nargs="+", default=["keras_dcgan", "dcgan", "mlp"], choices=list(RECIPES),
                        help="recipes (configs) to train and tabulate")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 2000, 4000], help="milestones with a table row")
    parser.add_argument("--grid-steps", type=int, nargs="+", default=[1, 50, 2000],
                        help="iterations whose sample grids make the figure (multiples of log.sample_every, or 1)")
    parser.add_argument("--num", type=int, default=10000, help="generated images per evaluation")
    parser.add_argument("--eval-every", type=int, default=1000, help="evaluations logged during training")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of checkpoint evaluations")
    parser.add_argument("--report-only", action="store_true", help="do not train; tabulate existing runs")
    parser.add_argument("--plot", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                        help="instead: plot FID vs minutes and vs images of these runs into --out (a .png)")
    parser.add_argument("--plot-images-only", type=Path, nargs="+", default=[], metavar="RUN_DIR",
                        help="with --plot: more runs, drawn against images seen only (wall-clock not comparable)")
    parser.add_argument("overrides", nargs="*", default=[], help="extra key=value config overrides")
    args = parser.parse_args(argv)
    if args.plot:
        out_png = args.out if args.out.suffix == ".png" else args.out / "fid_vs_time.png"
        print(f"wrote {plot_runs(args.plot, out_png, images_only=args.plot_images_only)}")
        return 0
    out: Path = args.out
    steps = sorted(set(args.steps))
    if not args.report_only:
        for recipe in args.models:
            for step in steps:
                train_to(out, recipe, step, args.num, args.eval_every, args.overrides)
    rows = [milestone_result(out, recipe, step, args.num, args.seed, args.overrides)
            for recipe in args.models for step in steps]
    table = markdown_table(rows, args.num)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"rows": rows, "num": args.num}, indent=2))
    print(table)
    grid_steps = [s for s in args.grid_steps if all(
        (out / "runs" / r / "samples" / f"step_{s:08d}.png").is_file() for r in args.models)]
    if grid_steps:
        print(f"wrote {sample_figure(out, args.models, grid_steps)} (iterations {grid_steps})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
