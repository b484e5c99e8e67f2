"""Plots of an evaluation summary (``summary.json`` of :func:`autoseg.evaluation.evaluate.evaluate_folders`)."""
from __future__ import annotations

import math
import os
from typing import Mapping

import numpy as np

from autoseg.atomic import atomic_path
from autoseg.evaluation.preview import label_colours

BOXPLOT_NAME = "boxplot.png"


def metric_values(summary: dict, label: str | int, metric: str) -> list[float]:
    """The finite values of ``metric`` for one class over the summary's cases. NaN or infinite
    values (a summary from another tool, or a class never present) cannot be drawn and are left out."""
    values = []
    for case in summary.get("per_case", []):
        value = case.get("metrics", {}).get(str(label), {}).get(metric)
        if value is not None and math.isfinite(float(value)):
            values.append(float(value))
    return values


def dice_hd95_boxplot(summary: dict, path: str | os.PathLike, label_names: Mapping[str, str] | None = None) -> None:
    """Two panels, Dice and HD95 (mm): per class one box over the cases with every case as a
    dot in the label's colour (that of the case pictures), so a few bad cases stand out from the
    box. Written as PNG to ``path``, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = [str(v) for v in summary.get("label_values", [])]
    names = [f"{label_names[k]} ({k})" if label_names and label_names.get(k) else f"label {k}" for k in labels]
    fig = Figure(figsize=(max(6.0, 2.0 + 1.4 * len(labels)), 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colours = label_colours([int(k) for k in labels])
    rng = np.random.default_rng(0)  # the dots' jitter: the same summary gives the same picture
    for ax, metric, unit in ((axes[0], "Dice", ""), (axes[1], "HD95", " (mm)")):
        data = [metric_values(summary, k, metric) for k in labels]
        drawn = [i for i, d in enumerate(data) if d]
        if drawn:
            ax.boxplot([data[i] for i in drawn], positions=[i + 1 for i in drawn], widths=0.5, showfliers=False)
            for i in drawn:
                ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(data[i])), data[i], s=12, alpha=0.8, zorder=3,
                           color=[colours[int(labels[i])][:3]])
        for i, d in enumerate(data):
            if not d:
                ax.text(i + 1, 0.5, "no values", transform=ax.get_xaxis_transform(), ha="center", va="center",
                        fontsize=8, color="grey")
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(names, fontsize=8, rotation=30 if len(labels) > 6 else 0)
        ax.set_xlim(0.5, max(len(labels), 1) + 0.5)
        ax.set_ylabel(metric + unit)
        ax.set_title(metric, fontsize=10)
        if metric == "Dice":
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.set_ylim(bottom=0.0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"per class over {summary.get('num_cases', len(summary.get('per_case', [])))} case(s)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
