"""Run by tests/metrics/test_inception.py under 1 or 2 real processes (torchrun, gloo on CPU): the Evaluator with
eval.feature_net=inception on a random network of the real architecture.

argv: SHARDS_DIR CACHE_DIR OUT_JSON WEIGHTS_PATH WEIGHTS_SHA256 NUM_SAMPLES BATCH_SIZE KID_SUBSET_SIZE. The
weights are not the official file, so this test-only script sets inception.EXPECTED_SHA256 to their digest
(what production code never does: there is no config key for it), and KID's subset size to one smaller than
the tiny sets (1000 would take every sample in every subset: a std of 0). Writes, from the main process, the
metrics, the floor, the protocol and its tag.
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from torch import nn

from gan_dist.configure import load_config
from gan_dist.data.datasets import resolve_dataset
from gan_dist.metrics import evaluate, inception
from gan_dist.metrics.evaluate import Evaluator

BANK_SIZE = 10
LATENT_DIM = 4


def bank_images(size: int = 32, seed: int = 7) -> torch.Tensor:
    """uint8 (BANK_SIZE, 3, size, size): smooth colour fields with some noise, each one distinct."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(BANK_SIZE, 3, 4, 4, generator=g)
    fields = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (fields * 200 + torch.rand(BANK_SIZE, 3, size, size, generator=g) * 55).round().clamp(0, 255).to(torch.uint8)


def bank_index(z: torch.Tensor) -> torch.Tensor:
    """Which bank image noise rows z (B, LATENT_DIM) draw: a function of each row alone."""
    return (z[:, 0].abs() * 1e4).long() % BANK_SIZE


class BankG(nn.Module):
    """A stand-in generator whose images are exact uint8 values in [-1, 1] (x / 127.5 - 1), chosen by the noise:
    what it draws does not depend on the batch it is in, and the Inception input quantizes back exactly."""

    latent_dim = LATENT_DIM
    num_classes = 0

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bank", bank_images().float() / 127.5 - 1.0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.bank[bank_index(z).to(self.bank.device)]


def main() -> None:
    shards, cache, out, weights, sha, num_samples, batch_size, kid_subset_size = sys.argv[1:9]
    inception.EXPECTED_SHA256 = sha  # the random network's digest: a test of the machinery, not an Inception FID
    evaluate.KID_SUBSET_SIZE = int(kid_subset_size)
    config = load_config(None, ["data.dataset=cifar10", f"data.root={shards}", "data.verify_checksums=false",
                                "eval.feature_net=inception", f"eval.inception_weights={weights}",
                                f"eval.num_samples={num_samples}", f"eval.batch_size={batch_size}"])
    accelerator = Accelerator(cpu=True)
    dataset = resolve_dataset(config.data, prepare=False)
    evaluator = Evaluator(config, accelerator, dataset, cache_dir=cache)
    metrics = evaluator.evaluate(BankG(), seed=3)
    if accelerator.is_main_process:
        metrics.pop("eval_seconds")
        record = {"world_size": accelerator.num_processes, "metrics": metrics, "floor": evaluator.floor(),
                  "protocol": evaluator.protocol(), "tag": evaluator.protocol_tag()}
        with open(out, "w") as handle:
            json.dump(record, handle)
    accelerator.end_training()


if __name__ == "__main__":
    main()
