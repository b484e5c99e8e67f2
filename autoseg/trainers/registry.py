"""Find a trainer class by name, so users add trainers without editing autoseg.

``get_trainer`` accepts a registered name (``unet``, ``resenc_unet``), an importable
``package.module:ClassName``, or a file ``path/to/my_trainer.py:ClassName``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

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


class TrainerNotFound(Exception):
    pass


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


def _load_from_file(path: Path, attr: str):
    if not path.is_file():
        raise TrainerNotFound(f"trainer file {path} does not exist")
    mod_name = f"autoseg_user_trainer_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def get_trainer(name: str) -> "type[Trainer]":
    """The trainer class for ``name`` (registered name, ``module:Class`` or ``file.py:Class``)."""
    from autoseg.trainers.base import Trainer

    _load_builtins()
    if name in _TRAINERS:
        return _TRAINERS[name]
    if ":" in name:
        target, attr = name.rsplit(":", 1)
        if target.endswith(".py") or "/" in target or "\\" in target:
            module = _load_from_file(Path(target).expanduser(), attr)
        else:
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError as e:
                raise TrainerNotFound(f"cannot import module '{target}' for trainer '{name}' ({e})") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise TrainerNotFound(f"'{target}' has no class '{attr}'")
        if not (isinstance(cls, type) and issubclass(cls, Trainer)):
            raise TrainerNotFound(f"'{name}' is not a subclass of autoseg.trainers.base.Trainer")
        return cls
    raise TrainerNotFound(f"unknown trainer '{name}'; registered: {', '.join(sorted(_TRAINERS))}, "
                          "or give 'module:Class' / 'path/to/file.py:Class'")
