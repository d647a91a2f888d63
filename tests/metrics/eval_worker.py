"""Run by tests/metrics/test_evaluate.py under 1 or 2 real processes (torchrun, gloo on CPU).

argv: SHARDS_DIR CACHE_DIR OUT_JSON NUM_SAMPLES BATCH_SIZE. Evaluates a freshly initialised keras_dcgan
G and a conditional one (seeded, identical on every rank) and writes, from the main process, the metrics
(FID, KID, IS, ...), the floor, the protocol and a fingerprint of the gathered features. With an empty
CACHE_DIR the reference and the floor are read distributed (each rank its share of the shards).
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch
from accelerate import Accelerator

from gan_dist.configure import load_config
from gan_dist.data.datasets import resolve_dataset
from gan_dist.metrics.evaluate import Evaluator
from gan_dist.models.build import build_generator
from gan_dist.registry.datasets import MNIST

MNIST_SHAPE = MNIST.image_shape  # (1, 28, 28)


def main() -> None:
    shards, cache, out, num_samples, batch_size = sys.argv[1:6]
    config = load_config(None, [f"data.root={shards}", f"eval.num_samples={num_samples}",
                                f"eval.batch_size={batch_size}"])
    accelerator = Accelerator(cpu=True)
    with accelerator.local_main_process_first():
        dataset = resolve_dataset(config.data)
    torch.manual_seed(0)
    G = build_generator(config.model, MNIST_SHAPE)
    conditional_G = build_generator(dataclasses.replace(config.model, conditioning="concat"), dataset.image_shape,
                                    dataset.num_classes)
    evaluator = Evaluator(config, accelerator, dataset, cache_dir=cache)
    metrics = evaluator.evaluate(G, seed=123)
    features, _, _ = evaluator.generated_features(G, seed=123)  # (N, D) gathered on every rank
    conditional = evaluator.evaluate(conditional_G, seed=5)
    _, _, requested = evaluator.generated_features(conditional_G, seed=5)  # (N,) gathered on every rank
    all_ranks = accelerator.gather(torch.tensor([metrics["fid"]]))  # every rank returned the same dict
    if accelerator.is_main_process:
        metrics.pop("eval_seconds")
        conditional.pop("eval_seconds")
        record = {"world_size": accelerator.num_processes, "metrics": metrics, "floor": evaluator.floor(),
                  "protocol": evaluator.protocol(), "tag": evaluator.protocol_tag(),
                  "fid_per_rank": all_ranks.tolist(), "num_features": len(features),
                  "sorted_norms": features.double().norm(dim=1).sort().values.tolist(),
                  "conditional": conditional, "requested_counts": torch.bincount(requested).tolist()}
        with open(out, "w") as handle:
            json.dump(record, handle)
    # Destroy the process group before exit: a rank leaving with gloo still set up can abort
    # ("terminate called without an active exception").
    accelerator.end_training()


if __name__ == "__main__":
    main()
