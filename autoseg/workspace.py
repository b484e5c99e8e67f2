"""Where autoseg keeps a dataset's fingerprint, plans, splits, preprocessed data and results.

No environment variable is required: every command takes ``--workspace``; without it,
``AUTOSEG_HOME`` is used if set, else ``~/autoseg_workspace``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = Path.home() / "autoseg_workspace"


def workspace_root(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the workspace folder: argument, then ``AUTOSEG_HOME``, then ``~/autoseg_workspace``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("AUTOSEG_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_HOME


@dataclass(frozen=True)
class DatasetWorkspace:
    """The folder of one dataset inside the workspace; every path autoseg uses comes from here."""

    root: Path

    @classmethod
    def create(cls, workspace: str | os.PathLike | None, dataset_name: str) -> "DatasetWorkspace":
        return cls(workspace_root(workspace) / dataset_name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def source_file(self) -> Path:
        """Records which raw folder this workspace was made from."""
        return self.root / "dataset_source.json"

    @property
    def fingerprint_file(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def plans_file(self) -> Path:
        return self.root / "plans.json"

    @property
    def splits_file(self) -> Path:
        return self.root / "splits.json"

    @property
    def best_configuration_file(self) -> Path:
        return self.root / "best_configuration.json"

    def preprocessed_dir(self, data_identifier: str) -> Path:
        return self.root / "preprocessed" / data_identifier

    def results_dir(self, trainer: str, configuration: str) -> Path:
        return self.root / "results" / f"{trainer}__{configuration}"

    def fold_dir(self, trainer: str, configuration: str, fold: int | str) -> Path:
        return self.results_dir(trainer, configuration) / f"fold_{fold}"


def resolve_dataset(dataset: str, workspace: str | os.PathLike | None) -> DatasetWorkspace:
    """Accept either a dataset name in the workspace or the path of a raw dataset folder."""
    p = Path(dataset).expanduser()
    name = p.resolve().name if p.exists() else dataset
    return DatasetWorkspace.create(workspace, name)
