"""The only argument parser: `gan-dist prepare-data | bench-data | train | sample | eval | train-classifier | bench`.

Each subcommand parses, loads the typed config where it takes one, and calls one function. Heavy
imports (torch, accelerate, webdataset) happen inside the handlers so `gan-dist --help` is instant.
Exit codes (README "Failure behaviour"):
  0   done (or nothing to do: the run had already reached train.num_steps)
  1   an expected failure, in one line naming the file or key: missing or corrupt data, a stalled shard
      source, a damaged or mismatched checkpoint given explicitly, a missing run folder or weights file
  2   bad usage or config (a wrong key, type or value; a combination that cannot work): nothing written
  3   `train` diverged (a non-finite loss or parameter): nothing after it was saved
  75  `train` stopped early by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL: requeue it)
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
    from gan_dist.config import DATA_SOURCES, DATASET_NAMES, MAX_IMAGE_SIZE, DataConfig
    from gan_dist.data.datasets import dataset_dir, dataset_spec
    from gan_dist.data.shards import manifest_report, prepare_from_config
    from gan_dist.data.sources import DataError

    if args.dataset not in DATASET_NAMES:
        raise ConfigError(f"--dataset {args.dataset!r} is not one of {', '.join(DATASET_NAMES)}")
    spec = dataset_spec(args.dataset)
    if not (args.source in DATA_SOURCES or (args.source.startswith(("idx:", "folder:"))
                                            and len(args.source.split(":", 1)[1]) > 0)):
        raise ConfigError(f"--source {args.source!r} is not one of auto, idx:DIR, torchvision, wheel, folder:DIR")
    if not spec.accepts_source(args.source):
        raise ConfigError(f"--source {args.source!r} does not apply to --dataset {spec.name} "
                          f"({' | '.join(spec.sources)})")
    if args.samples_per_shard <= 0:
        raise ConfigError(f"--samples-per-shard must be > 0, got {args.samples_per_shard}")
    if spec.kind != "folder" and (args.channels not in (None, 1) or args.image_size not in (None, 28)):
        raise ConfigError(f"--channels and --image-size apply to --dataset folder ({spec.name} is 1x28x28)")
    if args.channels not in (None, 1, 3):
        raise ConfigError(f"--channels must be 1 or 3, got {args.channels}")
    if args.image_size is not None and not 8 <= args.image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"--image-size must be in [8, {MAX_IMAGE_SIZE}], got {args.image_size}")
    if not 0.0 < args.test_fraction < 1.0:
        raise ConfigError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    data = DataConfig(dataset=spec.name, source=args.source, channels=args.channels, image_size=args.image_size,
                      test_fraction=args.test_fraction, samples_per_shard=args.samples_per_shard,
                      on_corrupt=args.on_corrupt, root=args.out or "")
    try:
        out_dir = dataset_dir(data)
        manifest = prepare_from_config(data, out_dir)
    except DataError as error:
        print(f"gan-dist prepare-data: {error}", file=sys.stderr)
        return 1
    print(manifest_report(manifest, spec.title, out_dir))
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
    from gan_dist.sampling import sample_command

    if args.num <= 0:
        raise ConfigError(f"--num must be > 0, got {args.num}")
    sample_command(run_dir=args.run, checkpoint=args.checkpoint, num_images=args.num, out_png=args.out,
                   out_npz=args.npz, seed=args.seed, use_ema=not args.no_ema, class_index=args.class_index)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    # Data locations and evaluation settings come from the caller's config, never from the checkpoint's
    # generator.yaml (untrusted: a `pipe:` URL there would run a shell command).
    config_path, overrides = _split_config_and_overrides(args)
    if args.num is not None:
        overrides.append(f"eval.num_samples={args.num}")
    if args.batch_size is not None:
        overrides.append(f"eval.batch_size={args.batch_size}")
    config = load_config(config_path, overrides)
    from gan_dist.metrics.evaluate import eval_command

    eval_command(config, run_dir=args.run, checkpoint=args.checkpoint, out_json=args.out, seed=args.seed,
                 use_ema=not args.no_ema)
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    if args.epochs <= 0:
        raise ConfigError(f"--epochs must be > 0, got {args.epochs}")
    config_path, overrides = _split_config_and_overrides(args)
    if args.dataset is not None:
        overrides.append(f"data.dataset={args.dataset}")
    config = load_config(config_path, overrides)
    from gan_dist.metrics.classifier import train_classifier_command

    train_classifier_command(config, out=args.out, num_epochs=args.epochs, seed=args.seed)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    config_path, overrides = _split_config_and_overrides(args)
    config = load_config(config_path, overrides)
    from gan_dist.bench import bench_train_runs, bench_training

    if args.steps > 0:
        bench_training(config, batch_sizes=args.batch_sizes, num_steps=args.steps, warmup_steps=args.warmup,
                       precisions=args.precisions, loaders=args.loaders, modes=args.modes,
                       objectives=args.objectives or [config.loss.name], channels_last=args.channels_last,
                       device=args.device, repeats=args.repeats, out_json=args.out)
    if args.train_runs:
        bench_train_runs(config, num_steps=args.train_runs, process_counts=tuple(args.processes or [1]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gan-dist", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a GAN (any number of processes: run under `accelerate launch`)")
    _add_config_args(p)
    p.add_argument("--resume", default=None,
                   help="'auto' (newest complete checkpoint of the run, if any) or a checkpoint folder")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("prepare-data", help="write a dataset as WebDataset tar shards + manifest.json")
    p.add_argument("--dataset", default="mnist", help="mnist | fashion_mnist | folder (default: mnist)")
    p.add_argument("--source", default="auto",
                   help="mnist: auto | idx:DIR | torchvision | wheel; fashion_mnist: auto | idx:DIR | torchvision; "
                        "folder: folder:DIR (default: auto)")
    p.add_argument("--out", default=None,
                   help="output folder (default: $GAN_DIST_DATA_DIR/<dataset> or ~/.cache/gan_dist/<dataset>; "
                        "a folder dataset adds <folder name>-<hash of its settings>)")
    p.add_argument("--channels", type=int, default=None, help="folder: 1 (grayscale) or 3 (RGB; default)")
    p.add_argument("--image-size", type=int, default=None,
                   help="folder: pixels per side of the square images (default 32): shorter side resized, then a "
                        "center crop")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="folder: expected share of each class held out as the test split (default 0.1)")
    p.add_argument("--on-corrupt", choices=["raise", "warn"], default="raise",
                   help="folder: unreadable image files refuse the folder (raise) or are listed and skipped (warn)")
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
    p.add_argument("--npz", default=None, help="also write the images as uint8 (N, H, W[, C]) (and labels) here")
    p.add_argument("--class", dest="class_index", type=int, default=None,
                   help="a conditional generator: only this class (default: one row per class)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw G even when an EMA was trained")
    p.set_defaults(handler=_cmd_sample)

    p = sub.add_parser("eval", help="FID / IS / precision-recall / coverage (+ class accuracy, intra-FID) of a "
                                     "trained generator")
    _add_config_args(p)  # the data to evaluate against and eval.*; only the model comes from the checkpoint
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", default=None, help="run folder (uses its newest exported generator)")
    source.add_argument("--checkpoint", default=None, help="checkpoint folder or generator.safetensors")
    p.add_argument("--num", type=int, default=None,
                   help="generated images (eval.num_samples, default 10000), split across processes; the floor "
                        "uses as many real train images")
    p.add_argument("--out", default=None,
                   help="JSON output (default: RUN/eval_step_N.json, or beside the checkpoint)")
    p.add_argument("--seed", type=int, default=0, help="noise seed: same samples for any process count")
    p.add_argument("--batch-size", type=int, default=None,
                   help="generation / feature batch per process (eval.batch_size, default 500)")
    p.add_argument("--no-ema", action="store_true", help="use the raw G even when an EMA was trained")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("train-classifier", help="train the feature network the metrics use for a dataset")
    _add_config_args(p)
    p.add_argument("--dataset", default=None,
                   help="shorthand for data.dataset=NAME: mnist | fashion_mnist | folder (with data.source=folder:DIR)")
    p.add_argument("--out", default=None,
                   help="weights file (default: the packaged weights' path for mnist / fashion_mnist, "
                        "feature_net.safetensors beside the shards for a folder)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the train split (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, dropout and shuffling seed")
    p.set_defaults(handler=_cmd_train_classifier)

    p = sub.add_parser("bench", help="training images/s vs a bare PyTorch loop of the same model and objective")
    _add_config_args(p)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    p.add_argument("--precisions", nargs="+", default=["no", "bf16"], choices=["no", "bf16", "fp16"])
    p.add_argument("--loaders", nargs="+", default=["stream", "memory"], choices=["stream", "memory"])
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile", "cuda_graph"],
                   help="the step as is, torch.compile'd, or captured in a CUDA graph (CUDA, memory loader)")
    p.add_argument("--objectives", nargs="+", default=None, choices=["ns", "lsgan", "wgan_gp", "hinge"],
                   help="loss.name values to compare (default: the config's)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (conv models)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=60, help="timed steps per chunk (0: skip the step table)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds of one framework and one bare chunk, interleaved: the best chunk's img/s and "
                        "the median paired ratio are reported")
    p.add_argument("--train-runs", type=int, default=0, metavar="STEPS",
                   help="also time whole `gan-dist train` runs of this many steps (the config as given)")
    p.add_argument("--processes", type=int, nargs="*", default=[],
                   help="with --train-runs: also N CPU processes vs 1 process of N threads")
    p.add_argument("--out", default=None, help="also write the step table as JSON here")
    p.set_defaults(handler=_cmd_bench)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, but `key=value` overrides (and the config file) may also come after options such as
    `--resume auto`: argparse stops filling positionals at the first option, and parse_intermixed_args
    does not support subcommands."""
    args, extras = parser.parse_known_args(argv)
    if extras and hasattr(args, "overrides"):
        rest = list(extras)
        if args.config is None and rest and "=" not in rest[0] and not rest[0].startswith("-"):
            args.config = rest.pop(0)
        unknown = [item for item in rest if item.startswith("-") or "=" not in item]
        if not unknown:
            args.overrides = [*args.overrides, *rest]
            return args
        extras = unknown
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"gan-dist {args.command}: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except FileNotFoundError as error:  # a run folder, checkpoint or weights file that is not there
        print(f"gan-dist {args.command}: {error}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        # Errors the user can act on, in one line (names the file or key): damaged checkpoints, data problems.
        from gan_dist.checkpoint import CheckpointError
        from gan_dist.data.sources import DataError

        if not isinstance(error, (CheckpointError, DataError)):
            raise
        print(f"gan-dist {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
