"""planners stage: a fingerprint in, plans.json out.

``get_planner(name)`` accepts a registered name (``"default"``) or a user's planner as
``package.module:ClassName`` or ``path/to/file.py:ClassName``, so ``--planner`` can name a
planner that lives outside autoseg.
"""
from __future__ import annotations

from autoseg.plugins import load_plugin

# name -> "module:Class"; imported only when asked for
REGISTERED_PLANNERS: dict[str, str] = {
    "default": "autoseg.planners.default:DefaultPlanner",
}


def get_planner(name: str) -> type:
    """The planner class for ``name``: a registered name or ``module:ClassName`` / ``file.py:ClassName``."""
    from autoseg.planners.base import Planner

    return load_plugin(name, "planner", Planner, REGISTERED_PLANNERS)
