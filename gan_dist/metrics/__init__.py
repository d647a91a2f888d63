"""Sample-quality metrics in the feature space of a small MNIST classifier shipped with the package.

  classifier.py  the LeNet-like network (128-d penultimate layer) and `gan-dist train-classifier`
  features.py    loading the packaged weights, refused when their sha256 differs from the record
  fid.py         Fréchet distance (float64, eigenvalue-based trace of the matrix square root)
  prdc.py        precision/recall (k=3) and density/coverage (k=5) on k-NN balls
  classes.py     classifier Inception Score and the predicted-class histogram
  evaluate.py    `Evaluator` (collective; used by the trainer) and `gan-dist eval`

Nothing heavy is imported here: import the submodules.
"""
