"""``best_configuration.json``: what find-best-configuration chose, and the scores it chose on.

find-best writes a :class:`Selection`; ``autoseg predict``, :func:`autoseg.predict` and the
report read it. The JSON schema is these dataclasses (``documentation/evaluation.md``).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.atomic import read_json, write_json
from autoseg.errors import UserError

if TYPE_CHECKING:
    from autoseg.workspace import DatasetWorkspace

# what find-best can rank on -> the candidate field holding that Dice
RANK_KEYS = {"postprocessed": "postprocessed_mean_dice", "raw": "mean_dice"}
DEFAULT_FOLDS = [0, 1, 2, 3, 4]


def class_label(label_names: dict[str, str], value: str | int) -> str:
    """``RV (1)`` where the dataset names its classes; ``label 1`` in selections written before
    find-best recorded the names."""
    name = label_names.get(str(value))
    return f"{name} ({value})" if name else f"label {value}"


@dataclass
class ModelRef:
    """One trained model: ``results/<trainer>__<configuration>/``."""

    trainer: str
    configuration: str

    @property
    def name(self) -> str:
        return f"{self.trainer}__{self.configuration}"


@dataclass
class Candidate:
    """A model or an ensemble of models, scored on cross-validation without and with its postprocessing."""

    name: str
    members: list[ModelRef]
    mean_dice: float
    per_class_dice: dict[str, float]
    postprocessing: dict
    postprocessed_mean_dice: float
    postprocessed_per_class_dice: dict[str, float]


@dataclass
class Selected:
    name: str
    configurations: list[ModelRef]
    postprocessing: dict
    folds: list[int] = field(default_factory=lambda: list(DEFAULT_FOLDS))


@dataclass
class Selection:
    """``selected`` is all that predict needs (a hand-written file may hold only that); the rest
    is what find-best measured."""

    selected: Selected
    ranked_on: str = "postprocessed"
    candidates: list[Candidate] = field(default_factory=list)
    dice_before_postprocessing: dict = field(default_factory=dict)
    dice_after_postprocessing: dict = field(default_factory=dict)
    num_cases: int = 0
    label_values: list[int] = field(default_factory=list)
    label_names: dict[str, str] = field(default_factory=dict)  # "value" -> name, foreground only
    warnings: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[ModelRef]:
        """The models predict runs: one, or the members of the chosen ensemble."""
        return list(self.selected.configurations)

    def ranked_candidates(self) -> list[Candidate]:
        """Candidates best first, by the Dice the selection ranked on."""
        key = RANK_KEYS[self.ranked_on]
        return sorted(self.candidates, key=lambda c: -getattr(c, key))

    def class_label(self, value: str | int) -> str:
        return class_label(self.label_names, value)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Selection":
        refs = lambda items: [ModelRef(str(m["trainer"]), str(m["configuration"])) for m in items]  # noqa: E731
        s = dict(d["selected"])
        selected = Selected(str(s["name"]), refs(s["configurations"]), dict(s["postprocessing"]),
                            [int(k) for k in s.get("folds") or DEFAULT_FOLDS])
        # selections written before candidates were postprocessed rank raw and score raw
        candidates = [Candidate(c["name"], refs(c["members"]), float(c["mean_dice"]), dict(c["per_class_dice"]),
                                dict(c.get("postprocessing", {})),
                                float(c.get("postprocessed_mean_dice", c["mean_dice"])),
                                dict(c.get("postprocessed_per_class_dice", c["per_class_dice"])))
                      for c in d.get("candidates", [])]
        return cls(selected, str(d.get("ranked_on", "raw")), candidates, dict(d.get("dice_before_postprocessing", {})),
                   dict(d.get("dice_after_postprocessing", {})), int(d.get("num_cases", 0)),
                   [int(v) for v in d.get("label_values", [])], dict(d.get("label_names", {})),
                   list(d.get("warnings", [])))

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Selection":
        """Read ``best_configuration.json``; a missing or malformed file is a :class:`UserError` naming it."""
        if not os.path.isfile(path):
            raise UserError(f"{path} does not exist: run 'autoseg find-best-configuration "
                            f"{Path(path).parent.name}' first, or choose a configuration with -c")
        try:
            selection = cls.from_dict(read_json(path))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: not a best-configuration file ({type(e).__name__}: {e}); "
                            "re-run 'autoseg find-best-configuration'") from None
        if not selection.selected.configurations:
            raise UserError(f"{path}: selects no configuration")
        return selection


def models_to_predict(ws: "DatasetWorkspace", configuration: str | None, trainer: str, folds: list[str] | None,
                    no_postprocessing: bool = False) -> tuple[list[tuple[str, str]], list[str], dict | None]:
    """(trainer, configuration) pairs, folds and postprocessing spec to predict with: the named
    configuration, else what best_configuration.json selected."""
    if configuration:
        return [(trainer, configuration)], folds or [str(k) for k in DEFAULT_FOLDS], None
    selection = Selection.load(ws.best_configuration_file)
    members = [(m.trainer, m.configuration) for m in selection.models]
    post = None if no_postprocessing else selection.selected.postprocessing
    return members, folds or [str(k) for k in selection.selected.folds], post
