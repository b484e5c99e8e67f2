"""planners stage: a fingerprint in, plans.json out.

``get_planner(name)`` accepts a registered name (``"default"``) or a user's planner as
``package.module:ClassName`` or ``path/to/file.py:ClassName``, so ``--planner`` can name a
planner that lives outside autoseg.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

# name -> "module:Class"; imported only when asked for
REGISTERED_PLANNERS: dict[str, str] = {
    "default": "autoseg.planners.default:DefaultPlanner",
}


def _load_class(target: str, requested: str):
    from autoseg.cli import UserError

    module_part, sep, class_name = target.rpartition(":")
    if not sep or not module_part or not class_name:
        known = ", ".join(sorted(REGISTERED_PLANNERS))
        raise UserError(f"unknown planner '{requested}'; use one of: {known}, or module:ClassName / path/to/file.py:ClassName")
    path = Path(module_part).expanduser()
    if module_part.endswith(".py") or path.is_file():
        if not path.is_file():
            raise UserError(f"planner '{requested}': file {path} does not exist")
        module_name = f"autoseg_user_planner_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise UserError(f"planner '{requested}': importing {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as e:
            raise UserError(f"planner '{requested}': module '{module_part}' not found ({e}); "
                            "is it on PYTHONPATH, or give a file path (path/to/file.py:ClassName)") from e
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserError(f"planner '{requested}': {module_part} has no attribute '{class_name}'")
    return cls


def get_planner(name: str):
    """The planner class for ``name``: a registered name or ``module:ClassName`` / ``file.py:ClassName``."""
    from autoseg.cli import UserError
    from autoseg.planners.base import Planner

    cls = _load_class(REGISTERED_PLANNERS.get(name, name), name)
    if not (isinstance(cls, type) and issubclass(cls, Planner)):
        raise UserError(f"planner '{name}' is not a subclass of autoseg.planners.base.Planner")
    return cls
