"""A whole study as one resumable command: plan and preprocess, every configuration x fold as
independent jobs on an executor (this machine, or SLURM through submitit), find-best, predict.

The stage above :mod:`autoseg.trainers`; ``autoseg run`` and ``autoseg demo`` are its users.
"""
