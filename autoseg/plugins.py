"""Plug-ins: a class named by a registered name, ``package.module:Class`` or ``path/to/file.py:Class``.

Trainers, planners and network architectures are all found this way, so a user extends
autoseg from their own code without editing it, and every kind of plug-in reports a bad
name with the same messages.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Mapping

from autoseg.errors import PluginNotFound


def _is_file_target(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target or Path(target).expanduser().is_file()


def _import_file(path: Path, kind: str, requested: str, error: type[PluginNotFound]) -> ModuleType:
    if not path.is_file():
        raise error(f"{kind} '{requested}': file {path} does not exist")
    module_name = f"autoseg_user_{kind}_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[module_name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:
        del sys.modules[module_name]
        raise error(f"{kind} '{requested}': importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def load_plugin(name: str, kind: str, base: type, registered: Mapping[str, type | str] | None = None,
                error: type[PluginNotFound] = PluginNotFound) -> type:
    """The class ``name`` stands for: a key of ``registered`` (a class, or a ``module:Class``
    string imported only now), else ``module:Class`` / ``file.py:Class``; it must subclass ``base``."""
    registered = registered or {}
    target = registered.get(name, name)
    if isinstance(target, type):
        cls = target
    else:
        module_part, sep, attr = target.rpartition(":")
        if not sep or not module_part or not attr:
            raise error(f"unknown {kind} '{name}'; registered: {', '.join(sorted(registered))}, "
                        "or give 'module:Class' / 'path/to/file.py:Class'")
        if _is_file_target(module_part):
            module = _import_file(Path(module_part).expanduser(), kind, name, error)
        else:
            try:
                module = importlib.import_module(module_part)
            except ModuleNotFoundError as e:
                raise error(f"{kind} '{name}': module '{module_part}' not found ({e}); is it on PYTHONPATH, "
                            "or give a file path (path/to/file.py:Class)") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise error(f"{kind} '{name}': {module_part} has no attribute '{attr}' (no class of that name)")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(f"{kind} '{name}' is not a subclass of {base.__module__}.{base.__qualname__}")
    return cls
