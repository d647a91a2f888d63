"""The only argument parser and every command handler: `gan-dist prepare-data | bench-data | train | sample |
interpolate | export | eval | train-classifier | bench`.

Each handler parses, loads the typed config where it takes one, calls the library and reports. The
handlers import torch and the package's heavy modules inside themselves, so that `gan-dist --help` and a
config error answer at once (torch alone costs seconds to import).
Exit codes (README "Failure behaviour"):
  0   done (or nothing to do: the run had already reached train.num_steps)
  1   an expected failure, in one line naming the file or key: missing or corrupt data, a stalled shard
      source, a damaged or mismatched checkpoint given explicitly, a missing run folder or weights file,
      a run folder another training holds, a full disk or quota (the path, the free space, the size needed),
      a feature network's weights refused (sha256, not plain tensors), checked before training starts
  2   bad usage or config (a wrong key, type or value; a combination that cannot work): nothing written
  3   `train` diverged (a non-finite loss or parameter): nothing after it was saved
  75  `train` stopped early by SIGUSR1/SIGTERM after writing its checkpoint (EX_TEMPFAIL: requeue it)
  130 stopped by Ctrl-C (SIGINT): `train` after writing its checkpoint; a second Ctrl-C (or one outside the
      training loop) stops at once, without a new checkpoint
Under `accelerate launch` / torchrun the launcher's own status is what a scheduler sees: 1 whenever a rank exits
non-zero (75 included), 128 + N when the launcher itself got signal N (143 for SIGTERM: it forwards the signal
and the ranks checkpoint first); README "Failure behaviour".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from gan_dist.config import Config, DataConfig, ModelConfig
from gan_dist.configure import ConfigError, load_config, validate
from gan_dist.registry.datasets import DATASETS, dataset_spec
from gan_dist.registry.objectives import OBJECTIVES

EXIT_CONFIG_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
MAX_SAMPLE_NUM = 10_000_000  # `sample --num`: the .npz is streamed, but 10 M images is already ~8 GB at 28x28
GRID_MAX_IMAGES = 1024  # `sample`'s PNG shows at most this many images (the first ones): a readable grid
SAMPLE_CHUNK_ROWS = 512  # images generated and written per chunk; a multiple of 16 (see _noise_chunks)
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
    from gan_dist.files import DiskFullError, disk_full_error, is_disk_full

    out_dir = None
    try:
        out_dir = dataset_dir(data)
        manifest = prepare_from_config(data, out_dir)
    except DataError as error:
        print(f"gan-dist prepare-data: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if is_disk_full(error) and not isinstance(error, DiskFullError):  # main() says it in one line
            raise disk_full_error(error, error.filename or out_dir) from None  # the shard folder at least
        raise
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


def _load_for_command(args: argparse.Namespace) -> Any:
    """The api.Generator that --run [--checkpoint best|last|step_N] or --checkpoint PATH names."""
    from gan_dist.api import load_generator

    if args.run is None and args.checkpoint is None:
        raise ConfigError("give --run RUN_DIR (a run or exported folder) or --checkpoint PATH")
    if args.run is None and not Path(args.checkpoint).exists() and (
            args.checkpoint in ("best", "last") or args.checkpoint.startswith("step_")):
        raise ConfigError(f"--checkpoint {args.checkpoint} picks one of a run's generators: give --run RUN_DIR too")
    if args.run is not None:
        return load_generator(args.run, args.checkpoint, use_ema=not args.no_ema)
    return load_generator(args.checkpoint, use_ema=not args.no_ema)


@contextmanager
def _sigterm_stops(what: str) -> Iterator[None]:
    """SIGTERM inside: exit 143 (128 + SIGTERM) through the exception path, so that temp files are removed (its
    default action would kill the process where it stands, leaving them), saying `what` in one line."""
    import signal

    def stop(signum: int, frame: object) -> None:
        print(f"gan-dist: terminated (SIGTERM) {what}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _noise_chunks(num_images: int, latent_dim: int, seed: int, chunk_rows: int):
    """(start, z) chunks whose concatenation is `sampling.latent_noise(num_images, latent_dim, seed)` bit for
    bit, drawn one chunk at a time from the same generator (memory stays flat for any num_images).

    torch's CPU normal sampler fills 16 values at a time and, when a tensor's size is not a multiple of 16,
    redraws its last 16; so successive draws continue one stream when every chunk but the last holds a
    multiple of 16 values (chunk_rows is a multiple of 16) and the last one at least 16, or is the whole
    tensor (tests/test_sample_cli.py checks the equality)."""
    import torch

    assert chunk_rows % 16 == 0, chunk_rows
    generator = torch.Generator().manual_seed(seed)
    bounds = [*range(0, num_images, chunk_rows), num_images]
    if len(bounds) > 2 and (bounds[-1] - bounds[-2]) * latent_dim < 16:
        del bounds[-2]  # the short tail joins the chunk before it
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        yield start, torch.randn(end - start, latent_dim, generator=generator)


def _cmd_sample(args: argparse.Namespace) -> int:
    """A grid PNG and optionally the raw uint8 images (and their labels) in an .npz.

    --seeds: one image per seed (api.Generator.sample); a conditional G without --class gets one row per
    class and one column per seed. --seed (the default): the noise of all samples drawn from one generator,
    as before; a conditional G without --class gets the training grid's layout (one row per class,
    round(sqrt(num)) columns, each column one z across all classes: N = classes x columns); otherwise num
    samples in a square grid, all of class --class when it is given. --num with --npz (no --truncation) is
    generated and written chunk by chunk (SAMPLE_CHUNK_ROWS images at a time, up to MAX_SAMPLE_NUM: 50,000
    samples for an outside FID tool), atomically; its PNG shows the first GRID_MAX_IMAGES."""
    import numpy as np
    import torch

    from gan_dist.files import atomic_write, write_npz
    from gan_dist.sampling import (
        check_image_count,
        class_labels,
        grid_inputs,
        grid_pixel_scale,
        images_to_uint8,
        parse_seeds,
        save_grid_png,
    )

    if args.num is not None and not 0 < args.num <= MAX_SAMPLE_NUM:
        raise ConfigError(f"--num must be in [1, {MAX_SAMPLE_NUM:,}], got {args.num}")
    if args.seeds is not None and (args.num is not None or args.seed is not None):
        raise ConfigError("--seeds names the samples itself: drop --num / --seed (or drop --seeds)")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    G = _load_for_command(args)
    info = G.info
    num_images, class_index = args.num or 25, args.class_index
    num_classes = G.num_classes
    if class_index is not None:
        G.check_class(class_index, "--class")
    psi = G.check_truncation(args.truncation, "--truncation")
    if seeds is None and args.npz and psi == 1.0:
        return _sample_streamed(args, G.module, info, num_images, class_index)
    # How many images, in what grid: checked before any noise is drawn (sampling.MAX_IMAGE_VALUES, MAX_GRID_PIXELS).
    per_class_rows = bool(num_classes) and class_index is None
    if seeds is not None:
        flag, count = "--seeds", len(seeds) * (num_classes if per_class_rows else 1)
        grid_columns = len(seeds) if per_class_rows else None
    else:
        flag = "--num"
        grid_columns = max(1, round(num_images ** 0.5)) if per_class_rows else None
        count = num_classes * grid_columns if per_class_rows else num_images
    check_image_count(count, G.image_shape, flag)
    grid_pixel_scale(count, G.image_shape, grid_columns, 0, flag)
    columns = None
    if seeds is not None:
        if num_classes and class_index is None:  # one row per class, one column per seed
            images = torch.cat([G.sample(seed=seeds, class_=k, truncation=psi, output="float")
                                for k in range(num_classes)])
            labels = class_labels(len(seeds) * num_classes, num_classes).view(len(seeds), num_classes).T.reshape(-1)
            columns = len(seeds)
        else:
            images = G.sample(seed=seeds, class_=class_index, truncation=psi, output="float")
            labels = None if not num_classes else class_labels(len(seeds), num_classes, class_index)
        images = images.cpu()
        num_images = len(images)
    else:
        seed = 0 if args.seed is None else args.seed
        if num_classes and class_index is None:
            z, labels, columns = grid_inputs(G.module, num_images, seed)
            z = G.noise(len(z) // num_classes, seed, psi).repeat(num_classes, 1) if psi != 1.0 else z
            num_images = len(z)
        else:
            z, labels = G.noise(num_images, seed, psi), class_labels(num_images, num_classes, class_index)
        w_psi = psi if G.latent_space == "w" else 1.0
        images = G.generate(z, labels, truncation=w_psi, device="cpu", batch_size=500)  # (N, C, H, W) CPU
    save_grid_png(images, Path(args.out), columns=columns)
    what = f"class {class_index}" if class_index is not None else ("one row per class" if columns else "")
    if psi != 1.0:
        what = f"{what}, truncation {psi:g}" if what else f"truncation {psi:g}"
    print(f"wrote {args.out}: {num_images} samples of {info.model.name} ({info.dataset}) at step {info.step}"
          f"{f', {what}' if what else ''}")
    if args.npz:
        payload = {"images": images_to_uint8(images)}
        if labels is not None:
            payload["labels"] = labels.numpy()
        if seeds is not None:
            payload["seeds"] = np.asarray(seeds * (num_classes if columns else 1), dtype=np.int64)
        members = [(name, array.dtype, array.shape, iter([array])) for name, array in payload.items()]
        with _sigterm_stops(f"while writing {args.npz}: nothing was written there"):
            atomic_write(Path(args.npz), lambda stream: write_npz(stream, members))
        print(f"wrote {args.npz}: images uint8 {tuple(payload['images'].shape)}"
              f"{', labels int64' if labels is not None else ''}{', seeds int64' if seeds is not None else ''}")
    return 0


def _sample_streamed(args: argparse.Namespace, G: Any, info: Any, num_images: int, class_index: int | None) -> int:
    """`sample --num N --npz FILE` without truncation: the images of `--seed` (the same as the in-memory path's,
    bit for bit: tests/test_sample_cli.py) generated and written chunk by chunk, atomically (a kill leaves no
    file); the PNG shows at most the first GRID_MAX_IMAGES (the first columns of every class row for a
    conditional layout)."""
    import numpy as np
    import torch

    from gan_dist.files import atomic_write, write_npz
    from gan_dist.sampling import images_to_uint8, latent_noise, num_classes_of, sample_images, save_grid_png

    num_classes = num_classes_of(G)
    seed = 0 if args.seed is None else args.seed
    latent_dim = G.latent_dim
    layout = bool(num_classes) and class_index is None  # the training grid's layout: rows = classes
    if layout:
        columns = max(1, round(num_images ** 0.5))
        num_images = num_classes * columns
        z_row = latent_noise(columns, latent_dim, seed)  # (columns, latent_dim): column j's z in every row

        def chunks(limit: int):
            for start in range(0, limit, SAMPLE_CHUNK_ROWS):
                index = torch.arange(start, min(start + SAMPLE_CHUNK_ROWS, limit))
                yield z_row[index % columns], index // columns  # sample i: class i // columns, z of column i % columns
    else:
        columns = None

        def chunks(limit: int):
            for _, z in _noise_chunks(limit, latent_dim, seed, SAMPLE_CHUNK_ROWS):
                labels = None if class_index is None else torch.full((len(z),), class_index, dtype=torch.int64)
                yield z, labels

    def images(limit: int):
        for z, labels in chunks(limit):
            yield sample_images(G, z, labels, device="cpu", batch_size=500)  # (n, C, H, W) float32

    # The grid: the first GRID_MAX_IMAGES images (conditional layout: the first columns of every class row).
    if layout:
        grid_columns = max(1, min(columns, GRID_MAX_IMAGES // num_classes))
        z = z_row[:grid_columns].repeat(num_classes, 1)
        labels = torch.arange(num_classes, dtype=torch.int64).repeat_interleave(grid_columns)
        grid = sample_images(G, z, labels, device="cpu", batch_size=500)
    else:
        grid_columns = None
        grid = torch.cat(list(images(min(num_images, GRID_MAX_IMAGES))))
    save_grid_png(grid, Path(args.out), columns=grid_columns)
    what = f"class {class_index}" if class_index is not None else ("one row per class" if layout else "")
    shown = f" (the grid shows the first {len(grid)} of {num_images})" if len(grid) < num_images else ""
    print(f"wrote {args.out}: {len(grid) if shown else num_images} samples of {info.model.name} ({info.dataset}) "
          f"at step {info.step}{f', {what}' if what else ''}{shown}")
    if args.npz:
        channels, height, width = grid.shape[1:]
        shape = (num_images, height, width) if channels == 1 else (num_images, height, width, channels)
        members = [("images", np.uint8, shape, (images_to_uint8(batch) for batch in images(num_images)))]
        if num_classes:
            label_chunks = (np.arange(start, min(start + SAMPLE_CHUNK_ROWS, num_images)) // columns if layout
                            else np.full(min(SAMPLE_CHUNK_ROWS, num_images - start), class_index)
                            for start in range(0, num_images, SAMPLE_CHUNK_ROWS))
            members.append(("labels", np.int64, (num_images,), (chunk.astype(np.int64) for chunk in label_chunks)))
        with _sigterm_stops(f"while writing {args.npz}: nothing was written there"):
            atomic_write(Path(args.npz), lambda stream: write_npz(stream, members))
        print(f"wrote {args.npz}: images uint8 {shape}{', labels int64' if num_classes else ''}")
    return 0


def _cmd_interpolate(args: argparse.Namespace) -> int:
    """A latent walk through --seeds (and --classes) as a GIF, an MP4, a PNG grid (a row per transition) or a
    folder of PNG frames."""
    import numpy as np

    from gan_dist.sampling import (
        MAX_WALK_FRAMES,
        check_fps,
        check_frames_output,
        check_image_count,
        check_pixel_scale,
        check_walk,
        parse_seeds,
        save_frames,
    )

    seeds = parse_seeds(args.seeds)
    classes = parse_seeds(args.classes, "--classes") if args.classes is not None else None
    check_fps(args.fps)
    check_pixel_scale(args.pixel_scale)
    G = _load_for_command(args)
    if classes is not None:
        for class_index in classes:
            G.check_class(class_index, "--classes")
    psi = G.check_truncation(args.truncation, "--truncation")
    key_seeds, key_classes = G.keyframes(seeds, classes)
    out = Path(args.out)
    # The size of what will be held and written, from the numbers, before any frame is made.
    if out.suffix.lower() == ".png":  # one row per transition, both keyframes included
        pairs = [(k, k + 1) for k in range(len(key_seeds) - 1)] + ([(len(key_seeds) - 1, 0)] if args.loop else [])
        check_walk(2, args.frames, False, G.image_shape, "--frames")
        total = len(pairs) * (args.frames + 1)
        if total > MAX_WALK_FRAMES:
            raise ConfigError(f"--frames {args.frames:,}: {len(pairs):,} rows of {args.frames + 1:,} frames would be "
                              f"{total:,} frames, over {MAX_WALK_FRAMES:,}; give fewer frames or fewer keyframes")
        check_image_count(total, G.image_shape, "--frames")
        check_frames_output(total, G.image_shape, out, args.pixel_scale, columns=args.frames + 1)
        frames = np.concatenate([G.interpolate(
            [key_seeds[a], key_seeds[b]], args.frames, truncation=psi,
            classes=None if key_classes is None else [key_classes[a], key_classes[b]]).cpu().numpy()
            for a, b in pairs])
        written = save_frames(frames, out, columns=args.frames + 1, pixel_scale=args.pixel_scale)
    else:
        total = check_walk(len(key_seeds), args.frames, args.loop, G.image_shape, "--frames")
        check_frames_output(total, G.image_shape, out, args.pixel_scale)
        frames = G.interpolate(key_seeds, args.frames, classes=key_classes, truncation=psi, loop=args.loop)
        written = save_frames(frames.cpu().numpy(), out, fps=args.fps, pixel_scale=args.pixel_scale)
    print(f"wrote {out}: {written}, {len(key_seeds)} keyframes ({'slerp in z' if G.latent_space == 'z' else 'lerp in w'}"
          f"{f', truncation {psi:g}' if psi != 1.0 else ''}) of {G.info.model.name} ({G.info.dataset}) at step "
          f"{G.info.step}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """A shareable folder (Hugging Face Hub layout + model card) from a run, optionally pushed to the Hub."""
    from gan_dist.api import ExportError, export_model, hub_token, push_to_hub

    try:
        token = hub_token() if args.push_to_hub else None  # before anything is written
        exported = export_model(args.run, args.out, checkpoint=args.checkpoint, force=args.force,
                                repo_id=args.push_to_hub)
        metrics = ", ".join(f"{key} {value:.4g}" for key, value in sorted(exported.metrics.items())) or "no metrics"
        print(f"wrote {exported.folder}: the generator of {exported.label} (step {exported.step}; {metrics}), "
              "config.json, README.md (model card), sample_grid.png")
        if args.push_to_hub:
            url = push_to_hub(exported.folder, args.push_to_hub, token=token, private=args.private)
            print(f"pushed to https://huggingface.co/{args.push_to_hub} ({url})")
    except ExportError as error:
        print(f"gan-dist export: {error}", file=sys.stderr)
        return 1
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
    for key in ("intra_fid_note", "floor_intra_fid_note"):
        if result.get(key):
            print(f"note ({key.removesuffix('_note').replace('_', ' ')}): {result[key]}")
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
    from gan_dist.metrics.classes import classes_without_samples
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
    missing = classes_without_samples(test_y, dataset.num_classes)
    names = [str(dataset.class_names[c]) if c < len(dataset.class_names) else str(c) for c in missing]
    covers = f" (over {dataset.num_classes - len(missing)} of {dataset.num_classes} classes)" if missing else ""
    print(f"train-classifier: test accuracy {test_accuracy:.4%}{covers} after {args.epochs} epochs "
          f"({train_seconds / 60:.1f} min)", flush=True)
    if missing:
        print(f"train-classifier: note: {len(missing)} class(es) have no test image, so the accuracy says nothing "
              f"about them: {', '.join(names)} (too few images to hold one out: add images, or raise "
              "data.test_fraction)", flush=True)
    minimum = dataset.spec.min_classifier_accuracy
    if minimum is not None and test_accuracy < minimum:
        print(f"train-classifier: WARNING: below the {minimum:.0%} the metrics assume for {dataset.name}; "
              "train longer (--epochs)", flush=True)
    info = {"dataset": dataset.name, "image_shape": list(dataset.image_shape),
            "class_names": list(dataset.class_names), "test_accuracy": round(test_accuracy, 6),
            "num_train": len(train_x), "num_test": len(test_x), "epochs": args.epochs, "seed": args.seed,
            "command": reproduce_command(config.data, args.epochs, args.seed), "torch": torch.__version__,
            "num_threads": torch.get_num_threads(), "train_seconds": round(train_seconds, 1),
            "dataset_fingerprint": dataset.fingerprint, "classes_without_test_images": names}
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


def _add_generator_args(parser: argparse.ArgumentParser) -> None:
    """--run / --checkpoint / --no-ema of the commands that use a trained generator."""
    parser.add_argument("--run", default=None,
                        help="run folder (default: its last generator) or a folder written by `gan-dist export`")
    parser.add_argument("--checkpoint", default=None,
                        help="with --run: best | last | step_N; alone: a checkpoint folder or generator.safetensors")
    parser.add_argument("--no-ema", action="store_true", help="use the raw G even when an EMA was trained")


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
    _add_generator_args(p)
    p.add_argument("--num", type=int, default=None, help="samples (default 25); not with --seeds")
    p.add_argument("--out", default="samples.png")
    p.add_argument("--npz", default=None, help="also write the images as uint8 (N, H, W[, C]) (and labels) here")
    p.add_argument("--class", dest="class_index", type=int, default=None,
                   help="a conditional generator: only this class (default: one row per class)")
    p.add_argument("--seeds", default=None,
                   help="one image per seed, e.g. 0-63, 3,17,42 or 0-9,20: the same image for a seed whatever else is "
                        "asked (as the Python API's seed=)")
    p.add_argument("--seed", type=int, default=None,
                   help="without --seeds: the noise of all --num samples from one generator seeded with this "
                        "(default 0; the images of earlier versions)")
    p.add_argument("--truncation", type=float, default=1.0,
                   help="psi (default 1: none): a w generator moves w toward its tracked mean w; a z generator "
                        "draws z from psi x a normal truncated at 2 (BigGAN's trick), psi in [0, 1]")
    p.set_defaults(handler=_cmd_sample)

    p = sub.add_parser("interpolate", help="a latent walk through seeds (and classes) as a GIF, MP4 or PNG frames")
    _add_generator_args(p)
    p.add_argument("--seeds", required=True, help="keyframes, e.g. 3,17,42 (one seed: walk between --classes)")
    p.add_argument("--classes", default=None,
                   help="a conditional generator: the class of each keyframe (one: for all; default seed %% classes)")
    p.add_argument("--frames", type=int, default=30, help="frames per transition between keyframes (default 30; at most 10,000 in a walk)")
    p.add_argument("--loop", action="store_true", help="walk back to the first keyframe (a seamless loop)")
    p.add_argument("--truncation", type=float, default=1.0, help="psi, as `sample --truncation`")
    p.add_argument("--out", default="walk.gif",
                   help="walk.gif (animated GIF), walk.mp4 (needs PyAV: pip install 'gan_dist[video]'), "
                        "walk.png (one grid: a row per transition) or a folder (PNG frames)")
    p.add_argument("--fps", type=float, default=30.0, help="frames per second of a GIF or MP4 (default 30)")
    p.add_argument("--pixel-scale", type=int, default=0,
                   help="upscale frames by nearest neighbour, 1..32 (default: to at least 96 px; 28 px -> x4)")
    p.set_defaults(handler=_cmd_interpolate)

    p = sub.add_parser("export", help="a shareable folder (Hugging Face Hub layout, model card) of a run's generator")
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--out", required=True, help="folder to write (refused when it exists and is not empty)")
    p.add_argument("--checkpoint", default=None,
                   help="best | last | step_N (default: best when the run tracked a best FID, else last)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID",
                   help="also upload the folder to this Hugging Face Hub model repo (needs a token: hf auth login)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.set_defaults(handler=_cmd_export)

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


def _is_main_rank() -> bool:
    """Rank 0 of an `accelerate launch` (or a single process): errors every rank agreed on are said once."""
    import os

    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"gan-dist {args.command}: config error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one outside its loop
        after = ("; checkpoints are written atomically: continue from the newest complete one with --resume auto"
                 if args.command == "train" else "")
        print(f"gan-dist {args.command}: interrupted (Ctrl-C), stopped at once{after}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except FileNotFoundError as error:  # a run folder, checkpoint or weights file that is not there
        print(f"gan-dist {args.command}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        from gan_dist.files import DiskFullError, disk_full_message, is_disk_full

        if not is_disk_full(error):
            raise
        # A DiskFullError was agreed by every rank (the same line on each): said once.
        if not isinstance(error, DiskFullError) or _is_main_rank():
            message = str(error) if isinstance(error, DiskFullError) else disk_full_message(error)
            print(f"gan-dist {args.command}: {message}", file=sys.stderr, flush=True)
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


def end_process(exit_code: int) -> NoReturn:
    """Exit with `exit_code`. A process launched as one of several (WORLD_SIZE > 1) flushes its output and ends
    with os._exit, without the interpreter's teardown: torch's DDP keeps the gloo process group alive after
    destroy_process_group, and one of its worker threads may release a finished collective's tensors while the
    interpreter finalizes; taking the GIL from that thread then aborts the rank (SIGABRT, "terminate called
    without an active exception"), and torchrun reports the finished job as failed (docs/design-notes.md,
    "Ending a rank"). Everything the package writes is closed before this point."""
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1") or "1") > 1:
        import logging

        logging.shutdown()
        os._exit(exit_code)
    sys.exit(exit_code)


def console_main() -> NoReturn:
    """The `gan-dist` console script and `python -m gan_dist`: main(), then end_process with its status."""
    try:
        exit_code = main()
    except SystemExit as exit_request:  # argparse's usage errors and --help
        code = exit_request.code
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:  # outside main's own handling (e.g. while the package imports)
        exit_code = EXIT_INTERRUPTED
    except BaseException:  # an unexpected error: its traceback, then the same ending
        traceback.print_exc()
        exit_code = 1
    end_process(exit_code)


if __name__ == "__main__":
    console_main()
