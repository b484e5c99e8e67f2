"""The errors autoseg raises for problems a user can fix.

Every stage raises these and never imports the command line; ``autoseg.cli`` catches
:class:`UserError` (which all of them are) and prints the message without a traceback.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


class UserError(Exception):
    """A problem the user can fix (bad input, missing files, bad arguments); printed without a traceback."""


@dataclass
class Problem:
    """One thing wrong with a dataset, located as precisely as possible."""

    message: str
    case_id: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.case_id is not None:
            where.append(f"case {self.case_id}")
        if self.file is not None:
            where.append(str(self.file))
        return (": ".join([", ".join(where), self.message]) if where else self.message)


class DatasetError(UserError):
    """The dataset cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem], root: str | os.PathLike | None = None):
        self.problems = problems
        self.root = root
        head = f"dataset {root} has {len(problems)} problem(s):" if root else f"{len(problems)} problem(s):"
        super().__init__("\n".join([head] + [f"  - {p}" for p in problems]))


class ImageReadError(UserError):
    """A file could not be read as an image; the message names the file."""


class PluginNotFound(UserError):
    """A ``module:Class`` or ``file.py:Class`` plug-in (trainer, planner, architecture) cannot be loaded."""


class TrainerNotFound(PluginNotFound):
    """No trainer by that name, module or file."""


class SplitError(UserError):
    """Splits cannot be made or a fold does not exist; the message says why."""


class EvaluationError(UserError):
    """Reference and prediction folders cannot be compared; the message names the files."""


class CheckpointError(UserError):
    """A checkpoint cannot be loaded safely or at all (code in it, truncated, not a checkpoint)."""


class BusyError(UserError):
    """Another process holds the lock on this work (the same fold, the dataset's preprocessing); the
    message names it: pid, host, since when, its command."""


class OutputError(UserError, OSError):
    """A file cannot be written (no space left, read-only file system, permission denied, quota).

    Also an :class:`OSError`, so code that tolerates a failed optional write still does; the
    message names the file and the cause, and the earlier file of that name is left intact.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.filename = None if path is None else os.fspath(path)
        self.errno = errno

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):  # across processes (preprocessing workers) with its file and errno
        return type(self), (str(self), self.filename, self.errno)
