"""Plots of an evaluation summary (``summary.json`` of :func:`autoseg.evaluation.evaluate.evaluate_folders`).

Classes are rows, named on the axis, so a plot stays readable with a hundred classes or more:
rows are sorted by median Dice (worst first, what needs looking at) and split over side-by-side
panel columns of at most :data:`MAX_ROWS_PER_PANEL` rows. The find-best chart
(:mod:`autoseg.postprocessing.report`) lays out its classes the same way.
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Mapping, Sequence

import numpy as np

from autoseg.atomic import atomic_path
from autoseg.evaluation.preview import label_colours

BOXPLOT_NAME = "boxplot.png"
# Rows of one panel column: at 0.24 inch a row, 35 rows keep 8-point names apart in a 10-inch-high picture.
MAX_ROWS_PER_PANEL = 35
ROW_INCHES = 0.24


def metric_values(summary: dict, label: str | int, metric: str) -> list[float]:
    """The finite values of ``metric`` for one class over the summary's cases. NaN or infinite
    values (a summary from another tool, or a class never present) cannot be drawn and are left out."""
    values = []
    for case in summary.get("per_case", []):
        value = case.get("metrics", {}).get(str(label), {}).get(metric)
        if value is not None and math.isfinite(float(value)):
            values.append(float(value))
    return values


def class_name(label_names: Mapping[str, str] | None, value: str | int) -> str:
    """``liver (1)`` where the class has a name, else ``label 1``."""
    name = (label_names or {}).get(str(value))
    return f"{name} ({value})" if name else f"label {value}"


def row_groups(n: int, max_rows: int = MAX_ROWS_PER_PANEL) -> list[range]:
    """``n`` rows split into the fewest groups of at most ``max_rows``, of sizes within one of each other."""
    if n <= 0:
        return [range(0)]
    size = math.ceil(n / math.ceil(n / max_rows))
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def worst_first(keys: Sequence[str], values: Mapping[str, Sequence[float]]) -> list[str]:
    """``keys`` by the median of their values, lowest first; keys without values last; ties by key."""
    def rank(k: str) -> tuple:
        v = values.get(k) or []
        return (0, float(np.median(v)), _numeric(k)) if len(v) else (1, 0.0, _numeric(k))

    return sorted(keys, key=rank)


def _numeric(key: str) -> tuple:
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)


def horizontal_boxes(ax, data: list[list[float]], positions: list[float], widths: float = 0.6) -> None:
    """Horizontal box plots (median, quartiles, whiskers at 1.5 IQR), whichever matplotlib keyword says so."""
    if "orientation" in inspect.signature(ax.boxplot).parameters:
        ax.boxplot(data, positions=positions, widths=widths, showfliers=False, orientation="horizontal")
    else:
        ax.boxplot(data, positions=positions, widths=widths, showfliers=False, vert=False)


def _class_panel(ax, keys: list[str], data: Mapping[str, list[float]], colours: Mapping[int, tuple],
                 rng: np.random.Generator, rows: int) -> None:
    drawn = [i for i, k in enumerate(keys) if data[k]]
    if drawn:
        horizontal_boxes(ax, [data[keys[i]] for i in drawn], [i + 1 for i in drawn])
        for i in drawn:
            values = data[keys[i]]
            ax.scatter(values, i + 1 + rng.uniform(-0.15, 0.15, len(values)), s=10, alpha=0.8, zorder=3,
                       color=[colours[int(keys[i])][:3]])
    for i, k in enumerate(keys):
        if not data[k]:
            ax.text(0.5, i + 1, "no values", transform=ax.get_yaxis_transform(), ha="center", va="center",
                    fontsize=7, color="grey")
    ax.set_yticks(range(1, len(keys) + 1))
    ax.set_ylim(max(rows, 1) + 0.5, 0.5)  # first row on top; short last groups align with the others
    ax.grid(axis="x", alpha=0.3)


def dice_hd95_boxplot(summary: dict, path: str | os.PathLike, label_names: Mapping[str, str] | None = None) -> None:
    """Per class one horizontal box over the cases, Dice beside HD95 (mm), with every case as a
    dot in the label's colour (that of the case pictures), so a few bad cases stand out from the
    box. Classes are named (``label_names``, default the summary's ``label_names``), sorted by
    median Dice, worst first, and split into panel columns of at most :data:`MAX_ROWS_PER_PANEL`.
    Written as PNG to ``path``, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = label_names if label_names is not None else summary.get("label_names") or {}
    labels = [str(v) for v in summary.get("label_values", [])]
    dice = {k: metric_values(summary, k, "Dice") for k in labels}
    hd95 = {k: metric_values(summary, k, "HD95") for k in labels}
    order = worst_first(labels, dice)
    groups = row_groups(len(order))
    rows = max(len(g) for g in groups)
    name_inches = 0.065 * max((len(class_name(names, k)) for k in labels), default=8)
    fig = Figure(figsize=(len(groups) * (5.5 + name_inches), max(3.0, 1.5 + ROW_INCHES * rows)), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 * len(groups), squeeze=False)[0]
    colours = label_colours([int(k) for k in labels])
    rng = np.random.default_rng(0)  # the dots' jitter: the same summary gives the same picture
    hd_top = max((v for k in labels for v in hd95[k]), default=0.0)
    for g, group in enumerate(groups):
        keys = [order[i] for i in group]
        ax_dice, ax_hd = axes[2 * g], axes[2 * g + 1]
        _class_panel(ax_dice, keys, dice, colours, rng, rows)
        _class_panel(ax_hd, keys, hd95, colours, rng, rows)
        ax_dice.set_yticklabels([class_name(names, k) for k in keys], fontsize=8)
        ax_hd.set_yticklabels([])
        ax_dice.set_xlim(-0.02, 1.02)
        ax_hd.set_xlim(0.0, hd_top * 1.05 if hd_top > 0 else 1.0)  # one scale in every column
        ax_dice.set_xlabel("Dice", fontsize=9)
        ax_hd.set_xlabel("HD95 (mm)", fontsize=9)
    num_cases = summary.get("num_cases", len(summary.get("per_case", [])))
    fig.suptitle(f"per class over {num_cases} case(s), worst median Dice first", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
