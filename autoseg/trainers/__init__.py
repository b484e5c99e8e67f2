"""Training: one shared loop (:mod:`base`), one small trainer class per architecture.

Kept free of torch imports so that light modules (splits, registry) load fast; use
:func:`get_trainer` to obtain a trainer class by name, ``module:Class`` or ``file.py:Class``.
"""
from autoseg.trainers.registry import available_trainers, get_trainer, register_trainer

__all__ = ["available_trainers", "get_trainer", "register_trainer"]
