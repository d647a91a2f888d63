"""Sample-quality metrics in the feature space of a small classifier trained on the dataset itself.

  classifier.py  the LeNet-like network for any (C, H, W) and K classes (128-d penultimate layer) and
                 `gan-dist train-classifier`
  features.py    which network a dataset gets (packaged weights, a folder's own, eval.feature_net),
                 refused when their sha256 differs from the record; FeatureNetworkMissing otherwise
  fid.py         Fréchet distance (float64, eigenvalue-based trace of the matrix square root), intra-FID
  prdc.py        precision/recall (k=3) and density/coverage (k=5) on k-NN balls
  classes.py     classifier Inception Score, the predicted-class histogram, class accuracy
  evaluate.py    `Evaluator` (collective; used by the trainer) and `gan-dist eval`

Nothing heavy is imported here: import the submodules.
"""
