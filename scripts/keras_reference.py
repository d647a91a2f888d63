"""The seed: the classic Keras DCGAN tutorial's training loop, timed, to compare gan_dist's speed with it.

The model, optimizer and loop as the tutorial writes them (docs/design-notes.md, "Reference shapes of the
seed DCGAN"): G Dense(100 -> 128*7*7) ... tanh, D Conv(32, s2) ... Dense(1, sigmoid), Adam(2e-4, 0.5), binary
cross-entropy, batch 32; each iteration trains D on a real and a fake half-batch (train_on_batch) and then
the combined model (D frozen) on a full batch of noise, with MNIST scaled to [-1, 1]. Only the speed is
measured here (images/s of real images seen, as gan_dist counts them: 32 per iteration), after warm-up.

Needs TensorFlow 2 with tf-keras, which gan_dist does not depend on; run it in its own environment:

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf-keras pillow
    /tmp/tfvenv/bin/python scripts/keras_reference.py --iterations 300 --warmup 30

MNIST comes from the shards gan_dist prepared (`--data`, default ~/.cache/gan_dist/mnist), read with the
standard library only, so this environment needs nothing of gan_dist's.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf-keras: the Keras 2 API the tutorial was written for
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def load_train_images(shard_dir: Path, limit: int) -> np.ndarray:  # noqa: F821
    """Up to `limit` train images (N, 28, 28, 1) in [-1, 1] from gan_dist's MNIST shards."""
    import numpy as np
    from PIL import Image

    images = []
    for shard in sorted(shard_dir.glob("mnist-train-*.tar")):
        with tarfile.open(shard) as archive:
            for member in archive:
                if member.name.endswith(".png"):
                    data = archive.extractfile(member).read()
                    images.append(np.array(Image.open(io.BytesIO(data)), dtype=np.uint8))
                    if len(images) >= limit:
                        break
        if len(images) >= limit:
            break
    if not images:
        raise SystemExit(f"no mnist-train-*.tar shards in {shard_dir}: run `gan-dist prepare-data` first")
    x = np.stack(images).astype("float32") / 127.5 - 1.0
    return x[..., None]


def build_models(latent_dim: int = 100):
    """The tutorial's G, D and combined model (Keras 2 API, as written)."""
    from tensorflow.keras.layers import (
        Activation,
        BatchNormalization,
        Conv2D,
        Dense,
        Dropout,
        Flatten,
        Input,
        LeakyReLU,
        Reshape,
        UpSampling2D,
        ZeroPadding2D,
    )
    from tensorflow.keras.models import Model, Sequential
    from tensorflow.keras.optimizers.legacy import Adam

    # The tutorial shares one Adam between D and the combined model; today's Keras 2 optimizers refuse a
    # second set of variables ("The optimizer cannot recognize variable ..."), the legacy one (Keras 2's
    # original optimizer, what the tutorial ran on) keeps slots per variable and accepts it.
    optimizer = Adam(0.0002, 0.5)
    D = Sequential([
        Conv2D(32, kernel_size=3, strides=2, input_shape=(28, 28, 1), padding="same"), LeakyReLU(alpha=0.2),
        Dropout(0.25),
        Conv2D(64, kernel_size=3, strides=2, padding="same"), ZeroPadding2D(padding=((0, 1), (0, 1))),
        BatchNormalization(momentum=0.8), LeakyReLU(alpha=0.2), Dropout(0.25),
        Conv2D(128, kernel_size=3, strides=2, padding="same"), BatchNormalization(momentum=0.8),
        LeakyReLU(alpha=0.2), Dropout(0.25),
        Conv2D(256, kernel_size=3, strides=1, padding="same"), BatchNormalization(momentum=0.8),
        LeakyReLU(alpha=0.2), Dropout(0.25),
        Flatten(), Dense(1, activation="sigmoid"),
    ])
    D.compile(loss="binary_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    G = Sequential([
        Dense(128 * 7 * 7, activation="relu", input_dim=latent_dim), Reshape((7, 7, 128)),
        UpSampling2D(), Conv2D(128, kernel_size=3, padding="same"), BatchNormalization(momentum=0.8),
        Activation("relu"),
        UpSampling2D(), Conv2D(64, kernel_size=3, padding="same"), BatchNormalization(momentum=0.8),
        Activation("relu"),
        Conv2D(1, kernel_size=3, padding="same"), Activation("tanh"),
    ])
    z = Input(shape=(latent_dim,))
    D.trainable = False
    combined = Model(z, D(G(z)))
    combined.compile(loss="binary_crossentropy", optimizer=optimizer)
    return G, D, combined


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path.home() / ".cache" / "gan_dist" / "mnist")
    parser.add_argument("--iterations", type=int, default=300, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=30, help="untimed iterations first (graph building)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed windows; the best is reported")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    x_train = load_train_images(args.data, 60000)
    G, D, combined = build_models()
    batch, latent_dim = args.batch_size, 100
    valid, fake = np.ones((batch, 1)), np.zeros((batch, 1))
    rng = np.random.default_rng(0)

    def iteration() -> None:
        # The tutorial's loop body: D on a real and a generated half of the batch, then G through D.
        index = rng.integers(0, x_train.shape[0], batch)
        noise = rng.normal(0, 1, (batch, latent_dim))
        generated = G.predict(noise, verbose=0)
        D.train_on_batch(x_train[index], valid)
        D.train_on_batch(generated, fake)
        combined.train_on_batch(noise, valid)

    for _ in range(args.warmup):
        iteration()
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.iterations):
            iteration()
        rates.append(args.iterations * batch / (time.perf_counter() - start))
    import tf_keras

    result = {"keras": f"tf-keras {tf_keras.__version__}",
              "tensorflow": tf.__version__, "batch_size": batch, "iterations": args.iterations,
              "images_per_s": max(rates), "all_images_per_s": rates,
              "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                          "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
