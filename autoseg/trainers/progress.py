"""Training log: one JSON record per epoch (``log.json``) and a curve plot (``progress.png``).

The smoothed pseudo-Dice (exponential moving average, 0.9 of the old value) is what picks
the best checkpoint: a single epoch's patch-based Dice is noisy.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoseg.atomic import atomic_path, read_json, write_json

EMA_MOMENTUM = 0.9


@dataclass
class EpochRecord:
    epoch: int
    iterations: int  # iterations done after this epoch (cumulative)
    train_loss: float
    val_loss: float | None
    pseudo_dice: list[float]  # per foreground class, from patch predictions
    mean_pseudo_dice: float | None
    smoothed_dice: float | None
    lr: float
    epoch_time_s: float
    iterations_per_s: float
    # steps whose gradient was not finite and were left out (no weight update); see train_step
    skipped_steps: int = 0


@dataclass
class ProgressLog:
    records: list[EpochRecord] = field(default_factory=list)
    best_smoothed_dice: float | None = None
    best_epoch: int | None = None

    def smoothed(self, mean_dice: float | None) -> float | None:
        """The EMA the next record would get for ``mean_dice``."""
        if mean_dice is None:
            return None
        prev = next((r.smoothed_dice for r in reversed(self.records) if r.smoothed_dice is not None), None)
        return mean_dice if prev is None else EMA_MOMENTUM * prev + (1 - EMA_MOMENTUM) * mean_dice

    def add(self, record: EpochRecord) -> bool:
        """Append; True when this epoch has the best smoothed Dice so far."""
        self.records.append(record)
        s = record.smoothed_dice
        if s is not None and (self.best_smoothed_dice is None or s > self.best_smoothed_dice):
            self.best_smoothed_dice, self.best_epoch = s, record.epoch
            return True
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"best_smoothed_dice": self.best_smoothed_dice, "best_epoch": self.best_epoch,
                "epochs": [asdict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProgressLog":
        return cls([EpochRecord(**r) for r in d.get("epochs", [])], d.get("best_smoothed_dice"), d.get("best_epoch"))

    def save(self, path: str | os.PathLike, header: dict[str, Any] | None = None) -> None:
        write_json(path, {**(header or {}), **self.to_dict()})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ProgressLog":
        return cls.from_dict(read_json(path))


def plot_progress(log: ProgressLog, path: str | os.PathLike, class_names: list[str] | None = None) -> None:
    """Losses, per-class pseudo-Dice (+ smoothed mean), learning rate and epoch time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = log.records
    if not recs:
        return
    ep = [r.epoch for r in recs]
    fig, axes = plt.subplots(3, 1, figsize=(9, 11), sharex=True)
    ax = axes[0]
    ax.plot(ep, [r.train_loss for r in recs], "b-", label="train loss")
    if any(r.val_loss is not None for r in recs):
        ax.plot(ep, [r.val_loss if r.val_loss is not None else float("nan") for r in recs], "r-", label="val loss")
    ax.set_ylabel("loss")
    ax.legend(loc="upper left")
    ax2 = ax.twinx()
    n_cls = max((len(r.pseudo_dice) for r in recs), default=0)
    for c in range(n_cls):
        name = class_names[c] if class_names and c < len(class_names) else f"class {c + 1}"
        ax2.plot(ep, [r.pseudo_dice[c] if c < len(r.pseudo_dice) else float("nan") for r in recs], ":", label=f"dice {name}")
    if any(r.smoothed_dice is not None for r in recs):
        ax2.plot(ep, [r.smoothed_dice if r.smoothed_dice is not None else float("nan") for r in recs], "g-", label="smoothed mean dice")
    ax2.set_ylabel("pseudo-Dice")
    ax2.set_ylim(0, 1)
    if n_cls:
        ax2.legend(loc="lower right", fontsize=8)
    axes[1].plot(ep, [r.epoch_time_s for r in recs], "k-")
    axes[1].set_ylabel("epoch time (s)")
    axes[2].plot(ep, [r.lr for r in recs], "m-")
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
