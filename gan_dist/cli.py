"""The only argument parser and every command handler: `gan-dist prepare-data | bench-data | train | sample |
eval | train-classifier | bench`.

Each handler parses, loads the typed config where it takes one, calls the library and reports. The
handlers import torch and the package's heavy modules inside themselves, so that `gan-dist --help` and a
config error answer at once (torch alone costs seconds to import).
Exit codes (README "Failure behaviour"):
  0   done (or nothing to do: the run had already reached train.num_steps)
  1   an expected failure, in one line naming the file or key: missing or corrupt data, a stalled shard
      source, a damaged or mismatched checkpoint given explicitly, a missing run folder or weights file, a
      feature network's weights refused (sha256, not plain tensors), checked before training starts
  2   bad usage or config (a wrong key, type or value; a combination that cannot work): nothing written
  3   `train` diverged (a non-finite loss or parameter): nothing after it was saved
  75  `train` stopped early by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL: requeue it)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gan_dist.config import Config, DataConfig, ModelConfig
from gan_dist.configure import ConfigError, load_config, validate
from gan_dist.registry.datasets import DATASETS, dataset_spec
from gan_dist.registry.objectives import OBJECTIVES

EXIT_CONFIG_ERROR = 2
# prepare-data's flags, by the data.* key they set (its errors name the flag)
PREPARE_DATA_FLAGS = {"data.dataset": "--dataset", "data.source": "--source", "data.channels": "--channels",
                      "data.image_size": "--image-size", "data.test_fraction": "--test-fraction",
                      "data.samples_per_shard": "--samples-per-shard", "data.on_corrupt": "--on-corrupt",
                      "data.crop": "--crop", "data.verify_checksums": "--verify-checksums"}


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
    from gan_dist.train.trainer import dry_run, train

    return dry_run(config) if args.dry_run else train(config)


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    from gan_dist.data.shards import dataset_dir, manifest_report, prepare_from_config
    from gan_dist.data.sources import DataError

    data = DataConfig(dataset=args.dataset, source=args.source, channels=args.channels, image_size=args.image_size,
                      test_fraction=args.test_fraction, samples_per_shard=args.samples_per_shard,
                      on_corrupt=args.on_corrupt, root=args.out or "", crop=args.crop,
                      verify_checksums=args.verify_checksums)
    try:
        # The data section's own checks (the same as `train`'s), with a model that builds any size (mlp).
        validate(Config(data=data, model=ModelConfig(name="mlp")), "command line")
        spec = dataset_spec(data.dataset)
        if "auto" not in spec.sources and data.source == "auto":
            raise ConfigError(f"key 'data.source': data.dataset={spec.name} is read from "
                              f"{' | '.join(spec.sources)}; give it")
    except ConfigError as error:  # name the flags this command was given, not the config keys
        message = str(error).removeprefix("command line: ")
        for key, flag in PREPARE_DATA_FLAGS.items():
            message = message.replace(f"key '{key}'", flag).replace(f"{key}=", f"{flag} ").replace(key, flag)
        raise ConfigError(message) from None
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
    from gan_dist.bench.data import bench_data
    from gan_dist.data.sources import DataError

    try:
        bench_data(config, num_batches=args.num_batches, workers=args.workers)
    except DataError as error:
        print(f"gan-dist bench-data: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    """A grid PNG and optionally the raw uint8 images (and their labels) in an .npz.

    A conditional G without --class gets the training grid's layout (one row per class, round(sqrt(num))
    columns, each column one z across all classes: N = classes x columns); otherwise num samples in a
    square grid, all of class --class when it is given."""
    import numpy as np

    from gan_dist.checkpoint import load_generator
    from gan_dist.sampling import (
        class_labels,
        grid_inputs,
        images_to_uint8,
        latent_noise,
        num_classes_of,
        sample_images,
        save_grid_png,
    )

    if args.num <= 0:
        raise ConfigError(f"--num must be > 0, got {args.num}")
    G, info = load_generator(args.run, args.checkpoint, use_ema=not args.no_ema)
    num_images, class_index = args.num, args.class_index
    num_classes = num_classes_of(G)
    if class_index is not None and num_classes == 0:
        raise ConfigError(f"--class {class_index}: this generator is unconditional (model.conditioning="
                          f"{info.model.conditioning}); train with model.conditioning=concat|acgan|projection")
    if class_index is not None and not 0 <= class_index < num_classes:
        raise ConfigError(f"--class {class_index}: the generator knows classes 0..{num_classes - 1} "
                          f"({info.dataset})")
    columns = None
    if num_classes and class_index is None:
        z, labels, columns = grid_inputs(G, num_images, args.seed)
        num_images = len(z)
    else:
        z, labels = latent_noise(num_images, G.latent_dim, args.seed), class_labels(num_images, num_classes,
                                                                                    class_index)
    images = sample_images(G, z, labels, device="cpu", batch_size=500)  # (N, C, H, W) on the CPU
    save_grid_png(images, Path(args.out), columns=columns)
    what = f"class {class_index}" if class_index is not None else ("one row per class" if columns else "")
    print(f"wrote {args.out}: {num_images} samples of {info.model.name} ({info.dataset}) at step {info.step}"
          f"{f', {what}' if what else ''}")
    if args.npz:
        payload = {"images": images_to_uint8(images)}
        if labels is not None:
            payload["labels"] = labels.numpy()
        np.savez_compressed(args.npz, **payload)
        print(f"wrote {args.npz}: images uint8 {tuple(payload['images'].shape)}"
              f"{', labels int64' if labels is not None else ''}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """Metrics of a trained generator (G_ema when trained), printed and written as JSON (to --out, else
    RUN/eval_step_N.json, else beside the checkpoint). Data locations and eval.* come from the caller's
    config, never from the generator's record (untrusted: a `pipe:` URL there would run a shell command)."""
    config_path, overrides = _split_config_and_overrides(args)
    if args.num is not None:
        overrides.append(f"eval.num_samples={args.num}")
    if args.batch_size is not None:
        overrides.append(f"eval.batch_size={args.batch_size}")
    if args.ref_stats is not None:
        overrides.append(f"eval.reference_stats={args.ref_stats}")
    config = load_config(config_path, overrides)
    from gan_dist.checkpoint import load_generator
    from gan_dist.metrics.evaluate import evaluate_generator, format_table

    G, info = load_generator(run_dir=args.run, checkpoint=args.checkpoint, use_ema=not args.no_ema)
    result, is_main = evaluate_generator(config, G, info, seed=args.seed)
    result = {"run_dir": args.run, "checkpoint": args.checkpoint, **result}
    if not is_main:
        return 0
    if args.out:
        out = Path(args.out)
    elif args.run:
        out = Path(args.run) / f"eval_step_{info.step}.json"
    else:
        source = Path(args.checkpoint)
        out = source / "eval.json" if source.is_dir() else source.with_name(f"{source.stem}.eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    num_images = result["num_images"]
    conditional = f", conditional on {info.num_classes} classes (balanced labels)" if info.num_classes else ""
    floor = result["protocol"]["floor"]
    print(f"gan-dist eval: {args.run or args.checkpoint} (step {info.step}{conditional}) on {result['dataset']}, "
          f"{num_images} images, seed {args.seed}, {result['num_processes']} process(es); floor = "
          f"{floor['num_images']} real {floor['split']} images vs the same reference")
    print(result["protocol_line"])
    print(format_table(result["metrics"], result["floor"]))
    print(f"wrote {out}")
    return 0


def _cmd_train_classifier(args: argparse.Namespace) -> int:
    """Train the dataset's classifier (the metrics' feature space) on its train split, report the test accuracy
    and write the weights: to the dataset's default place (the packaged file for mnist / fashion_mnist, beside
    the shards for a folder) unless --out is given. An unlabeled dataset has nothing to learn: refused."""
    if args.epochs <= 0:
        raise ConfigError(f"--epochs must be > 0, got {args.epochs}")
    config_path, overrides = _split_config_and_overrides(args)
    if args.dataset is not None:
        overrides.append(f"data.dataset={args.dataset}")
    config = load_config(config_path, overrides)
    import time

    import torch

    from gan_dist.data.datasets import resolve_dataset
    from gan_dist.metrics.classifier import (
        accuracy,
        default_weights_path,
        load_split,
        reproduce_command,
        save_weights,
        train_classifier,
    )

    dataset = resolve_dataset(config.data)
    if dataset.num_classes == 0:
        raise ConfigError(
            f"data.dataset={dataset.name} (data.source={config.data.source}) has no labels, so there is no "
            "classifier to train. Evaluate with eval.feature_net=inception (the default of the unlabeled "
            "benchmarks) or a feature network of your own (eval.feature_net=PATH.safetensors with its .json "
            "record), or train without evaluation (eval.eval_every=-1)")
    default_path = default_weights_path(dataset)
    out_path = Path(args.out) if args.out else default_path
    if out_path is None:
        raise ConfigError("the shards are remote (data.train_urls / data.test_urls): pass --out PATH for the "
                          "weights and set eval.feature_net=PATH when training and evaluating")
    train_x, train_y = load_split(dataset, "train")
    test_x, test_y = load_split(dataset, "test")
    shape = "x".join(str(size) for size in dataset.image_shape)
    print(f"train-classifier: {dataset.name} ({shape}, {dataset.num_classes} classes): {len(train_x)} train / "
          f"{len(test_x)} test images", flush=True)
    start = time.perf_counter()
    model = train_classifier(train_x, train_y, num_epochs=args.epochs, seed=args.seed,
                             num_classes=dataset.num_classes)
    train_seconds = time.perf_counter() - start
    test_accuracy = accuracy(model, test_x, test_y)
    print(f"train-classifier: test accuracy {test_accuracy:.4%} after {args.epochs} epochs "
          f"({train_seconds / 60:.1f} min)", flush=True)
    minimum = dataset.spec.min_classifier_accuracy
    if minimum is not None and test_accuracy < minimum:
        print(f"train-classifier: WARNING: below the {minimum:.0%} the metrics assume for {dataset.name}; "
              "train longer (--epochs)", flush=True)
    info = {"dataset": dataset.name, "image_shape": list(dataset.image_shape),
            "class_names": list(dataset.class_names), "test_accuracy": round(test_accuracy, 6),
            "num_train": len(train_x), "num_test": len(test_x), "epochs": args.epochs, "seed": args.seed,
            "command": reproduce_command(config.data, args.epochs, args.seed), "torch": torch.__version__,
            "num_threads": torch.get_num_threads(), "train_seconds": round(train_seconds, 1),
            "dataset_fingerprint": dataset.fingerprint}
    save_weights(model, out_path, info)
    print(f"train-classifier: wrote {out_path} and {out_path.with_suffix('.json')}", flush=True)
    if default_path is not None and out_path.resolve() == default_path.resolve():
        print("train-classifier: evaluation finds it there (eval.feature_net='', the default)", flush=True)
    else:
        print(f"train-classifier: to evaluate with it, set eval.feature_net={out_path}", flush=True)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    config_path, overrides = _split_config_and_overrides(args)
    config = load_config(config_path, overrides)
    from gan_dist.bench.training import bench_train_runs, bench_training

    if args.steps > 0:
        bench_training(config, batch_sizes=args.batch_sizes, num_steps=args.steps, warmup_steps=args.warmup,
                       precisions=args.precisions, loaders=args.loaders, modes=args.modes,
                       objectives=args.objectives or [config.loss.name], channels_last=args.channels_last,
                       device=args.device, repeats=args.repeats, out_json=args.out, min_chunk_s=args.min_chunk_s)
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
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved config and the run record (device, precision, loader, global batch, "
                        "data shape, parameter counts), write nothing, exit 0")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("prepare-data", help="write a dataset as WebDataset tar shards + manifest.json")
    p.add_argument("--dataset", default=DataConfig().dataset,
                   help=f"{' | '.join(DATASETS)} (default: {DataConfig().dataset})")
    p.add_argument("--source", default="auto",
                   help="; ".join(f"{spec.name}: {' | '.join(spec.sources)}" for spec in DATASETS.values())
                        + " (default: auto)")
    p.add_argument("--out", default=None,
                   help="output folder (default: $GAN_DIST_DATA_DIR/<dataset> or ~/.cache/gan_dist/<dataset>; "
                        "a folder dataset adds <folder name>-<hash of its settings>)")
    p.add_argument("--channels", type=int, default=None, help="folder: 1 (grayscale) or 3 (RGB; default)")
    p.add_argument("--image-size", type=int, default=None,
                   help="folder: pixels per side of the square images (default 32): shorter side resized, then a "
                        "center crop; " + "; ".join(f"{name}: {' | '.join(map(str, spec.benchmark.image_sizes))}"
                                                    for name, spec in DATASETS.items()
                                                    if spec.benchmark and len(spec.benchmark.image_sizes) > 1)
                        + " (the first is the default)")
    p.add_argument("--crop", type=int, default=None,
                   help="; ".join(f"{name}: the central square cut before resizing, "
                                  f"{' | '.join(map(str, spec.benchmark.crops))} (default {spec.benchmark.crops[0]})"
                                  for name, spec in DATASETS.items() if spec.benchmark and spec.benchmark.crops))
    p.add_argument("--verify-checksums", action=argparse.BooleanOptionalAction, default=True,
                   help="the benchmarks: refuse an archive whose sha256 is not the official one (default); "
                        "--no-verify-checksums warns once, uses it and records the mismatch in manifest.json")
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

    p = sub.add_parser("eval", help="FID / KID / IS / precision-recall / coverage (+ class accuracy, intra-FID) of "
                                     "a trained generator, with their protocol")
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
    p.add_argument("--ref-stats", default=None, metavar="FILE.npz",
                   help="reference statistics instead of the reference split (eval.reference_stats): an .npz with "
                        "mu (D,), sigma (D, D) and optionally features (N, D) (for KID, precision/recall) and labels "
                        "(N,); read with allow_pickle=False. A cached reference-*.npz is one")
    p.add_argument("--no-ema", action="store_true", help="use the raw G even when an EMA was trained")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("train-classifier", help="train the feature network the metrics use for a dataset")
    _add_config_args(p)
    p.add_argument("--dataset", default=None, choices=list(DATASETS),
                   help="shorthand for data.dataset=NAME (a folder needs data.source=folder:DIR)")
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
    p.add_argument("--objectives", nargs="+", default=None, choices=list(OBJECTIVES),
                   help="loss.name values to compare (default: the config's)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (conv models)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=60, help="timed steps per chunk (0: skip the step table)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=2,
                   help="rounds of one framework and one bare chunk, interleaved: the best chunk's img/s and "
                        "the median paired ratio are reported")
    p.add_argument("--min-chunk-s", type=float, default=0.0,
                   help="grow each timed chunk until it takes at least this long (GPU steps can take microseconds)")
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
        # Errors the user can act on, in one line (names the file or key): damaged checkpoints, data problems,
        # a feature network's weights refused (sha256, not plain tensors).
        from gan_dist.checkpoint import CheckpointError
        from gan_dist.data.sources import DataError
        from gan_dist.metrics.features import WeightsIntegrityError

        if not isinstance(error, (CheckpointError, DataError, WeightsIntegrityError)):
            raise
        print(f"gan-dist {args.command}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
