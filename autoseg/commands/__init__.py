"""One module per ``autoseg`` subcommand; each defines ``register(subparsers)``.

The checks below are those of options several commands share, made before any long work.
"""
from __future__ import annotations

from collections.abc import Sequence


def check_folds(flag: str, folds: Sequence[str | int] | None, allow_all: bool = True) -> None:
    """Folds are numbers 0, 1, ... (or ``all`` where a model trained on every case is meant)."""
    from autoseg.errors import UserError

    if folds is None:
        return
    bad = [str(f) for f in folds if not (str(f).isdigit() or (allow_all and str(f) == "all"))]
    if bad or not folds:
        kinds = "fold numbers (0-4) or 'all'" if allow_all else "fold numbers (0-4)"
        raise UserError(f"{flag}: folds are {kinds}, got {' '.join(bad) or 'none'}")


def check_at_least(flag: str, value: float | None, least: float) -> None:
    """``value`` (None: not given) is at least ``least``."""
    from autoseg.errors import UserError

    if value is not None and value < least:
        raise UserError(f"{flag} must be at least {least:g}, got {value:g}")


def check_positive(flag: str, value: float | None) -> None:
    """``value`` (None: not given) is a positive number."""
    from autoseg.errors import UserError

    if value is not None and not value > 0:
        raise UserError(f"{flag} must be positive, got {value:g}")
