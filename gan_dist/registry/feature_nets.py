"""Feature networks (`eval.feature_net`), declared: the space FID, KID, IS and precision/recall live in.

  ""            the dataset's default (DatasetSpec.default_feature_net)
  classifier    the dataset's own classifier: packaged for mnist / fashion_mnist, written beside a labeled
                dataset's shards by `gan-dist train-classifier` (gan_dist/metrics/features.py)
  inception     Inception-v3 of TF's 2015-12-05 graph (pool3, 2048 features), the network of published FID /
                KID / IS numbers (gan_dist/metrics/inception.py); weights sha256-verified (eval.inception_weights)
  PATH          a classifier's .safetensors (with its .json record) of your own

Each entry names the module that loads it: `load_feature_net(dataset, eval_config, device) -> (net,
record)`, the net giving `features_and_logits(images in [-1, 1]) -> ((B, F), (B, K))` and the record its
identity (sha256 of the weights) and protocol, which is printed and saved beside every number.
"""

from __future__ import annotations

from dataclasses import dataclass

from gan_dist.config import ConfigError

RESIZES = ("tf", "clean")  # eval.resize: how images reach a fixed-size network's input (see inception.py)
REFERENCE_SPLITS = ("test", "train")  # eval.reference_split


@dataclass(frozen=True)
class FeatureNetSpec:
    name: str  # eval.feature_net
    title: str
    module: str  # gan_dist.metrics.<file>: load_feature_net(dataset, eval_config, device)
    # Splits of the Inception Score: 1 = one split of all samples (the lower-variance estimate; the classifier's),
    # 10 = the original IS as torch-fidelity computes it (10 shuffled splits, mean and std).
    inception_score_splits: int = 1
    # eval.resize applies (the network has a fixed input size and images are resized to it).
    resizes: bool = False
    # Its classes are (or may be) the dataset's: the predicted-class histogram (classes_covered,
    # class_kl_uniform) is reported. Inception's 1008 ImageNet classes are not: no histogram.
    class_histogram: bool = True
    # Its weights may have to be fetched: the module has `ensure_weights(eval_config) -> path`, which training
    # calls at start-up (before anything is written) so that evaluation never fails mid-run.
    fetches_weights: bool = False
    # Features per image when the network fixes it (None: its weights' record says): eval.reference_stats is
    # checked against it at start-up.
    feature_dim: int | None = None


FEATURE_NETS: dict[str, FeatureNetSpec] = {
    spec.name: spec for spec in (
        FeatureNetSpec(name="classifier", title="the dataset's own classifier (LeNet, 128 features)",
                       module="gan_dist.metrics.features"),
        FeatureNetSpec(name="inception", title="Inception-v3 (TF 2015-12-05 graph, pool3: 2048 features)",
                       module="gan_dist.metrics.inception", inception_score_splits=10, resizes=True,
                       class_histogram=False, fetches_weights=True, feature_dim=2048),
    )
}
PATH_ENTRY = "classifier"  # what a path in eval.feature_net is: a classifier's weights


def is_path(value: str) -> bool:
    """eval.feature_net names a file rather than a registry entry."""
    return value not in FEATURE_NETS and value != "" and ("/" in value or value.endswith(".safetensors"))


def feature_net(value: str, default: str) -> FeatureNetSpec:
    """The entry eval.feature_net=`value` selects ("" -> `default`, the dataset's; a path -> classifier);
    ConfigError naming eval.feature_net otherwise."""
    name = default if value == "" else PATH_ENTRY if is_path(value) else value
    try:
        return FEATURE_NETS[name]
    except KeyError:
        raise ConfigError(f"key 'eval.feature_net': {value!r} is not one of {', '.join(FEATURE_NETS)} or a path "
                          "to a .safetensors file") from None
