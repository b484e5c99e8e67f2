"""Find a trainer class by name, so users add trainers without editing autoseg.

``get_trainer`` accepts a registered name (``unet``, ``resenc_unet``), an importable
``package.module:ClassName``, or a file ``path/to/my_trainer.py:ClassName``.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable, TypeVar

from autoseg.errors import TrainerNotFound
from autoseg.plugins import load_plugin

if TYPE_CHECKING:
    from autoseg.trainers.base import Trainer

T = TypeVar("T")
_TRAINERS: dict[str, type] = {}
# Adding an architecture: its trainer module and one line here.
_BUILTIN_MODULES = (
    "autoseg.trainers.unet",
    "autoseg.trainers.resenc_unet",
    "autoseg.trainers.hybrid",
    "autoseg.trainers.unet_2p5d",
    "autoseg.trainers.atlas_istn",
)


def register_trainer(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`~autoseg.trainers.base.Trainer` subclass available by ``name``."""

    def deco(cls: T) -> T:
        if name in _TRAINERS and _TRAINERS[name] is not cls:
            raise ValueError(f"trainer name '{name}' is already registered by {_TRAINERS[name].__module__}")
        _TRAINERS[name] = cls
        cls.trainer_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def _load_builtins() -> None:
    for m in _BUILTIN_MODULES:
        importlib.import_module(m)


def available_trainers() -> list[str]:
    _load_builtins()
    return sorted(_TRAINERS)


def get_trainer(name: str) -> "type[Trainer]":
    """The trainer class for ``name`` (registered name, ``module:Class`` or ``file.py:Class``)."""
    from autoseg.trainers.base import Trainer

    _load_builtins()
    return load_plugin(name, "trainer", Trainer, _TRAINERS, error=TrainerNotFound)
