"""Training: `trainer.train(config)` builds a `Trainer` and runs it, on 1 CPU process or many GPUs on many nodes.

  step.py         one G step with its D steps (phases, accumulation, EMA, on-device noise), the Networks record
  logger.py       device-side statistics, divergence detection, the console line
  cadence.py      when to log, sample, evaluate, checkpoint and vote on a stop
  lr_schedule.py  the learning rate at each step
  run_folder.py   the run folder: the record of each start, resume, checkpoints across ranks, best FID, done
  trainer.py      the Trainer that builds these, and its loop; `dry_run`
"""
