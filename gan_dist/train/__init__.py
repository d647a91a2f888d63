"""Training: `train(config)` builds a `Trainer` and runs it, on 1 CPU process or many GPUs on many nodes.

  accelerator.py  the Accelerator, precision, Adam's kernels, the run record (shared with evaluation)
  step.py         one G step with its D steps (phases, accumulation, EMA, on-device noise)
  logger.py       device-side statistics, divergence detection, the console line
  cadence.py      when to log, sample, evaluate, checkpoint and vote on a stop
  run_dir.py      the run folder: resume selection, safe checkpoints, best FID, done marker
  trainer.py      the Trainer that builds these parts, and its loop
"""

from gan_dist.train.trainer import EXIT_DIVERGED, EXIT_STOPPED_EARLY, Trainer, train

__all__ = ["EXIT_DIVERGED", "EXIT_STOPPED_EARLY", "Trainer", "train"]
