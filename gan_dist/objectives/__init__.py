"""Objectives: the losses of D and G (one file per objective, declared in gan_dist/registry/objectives.py)
and `objective.py`, which adds the penalties and the ACGAN class loss and is what the step calls."""
