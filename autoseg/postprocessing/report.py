"""The find-best-configuration report: a Markdown table and a bar chart of cross-validation Dice."""
from __future__ import annotations

import os
from pathlib import Path

from autoseg.atomic import atomic_path
from autoseg.postprocessing.selection import Selection, class_label

REPORT_NAME = "find_best_report.md"
CHART_NAME = "find_best.png"


def write_chart(selection: Selection, path: str | os.PathLike) -> None:
    """Grouped bars: mean foreground Dice after and before postprocessing, and per-class Dice
    before it, for every candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cands = selection.candidates
    classes = list(cands[0].per_class_dice) if cands else []
    series = [("mean, postprocessed", [c.postprocessed_mean_dice for c in cands]),
              ("mean, raw", [c.mean_dice for c in cands])] + [
        (f"{selection.class_label(k)}, raw", [c.per_class_dice[k] for c in cands]) for k in classes]
    x = np.arange(len(cands))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cands) + 2), 4.5))
    for i, (label, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([c.name.replace(" + ", "\n+ ") for c in cands], fontsize=7, rotation=0)
    ax.set_ylabel("cross-validation Dice")
    low = min((v for _, vals in series for v in vals), default=0.0)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_title(f"selected: {selection.selected.name}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _steps(spec: dict, label_names: dict[str, str]) -> str:
    """The largest-component steps in a few words, e.g. ``foreground; RV (1), LV (3)``."""
    classes = ", ".join(class_label(label_names, v) for v in spec["per_class_largest_component"])
    steps = (["foreground"] if spec["foreground_largest_component"] else []) + ([classes] if classes else [])
    return "; ".join(steps) or "none"


def report_markdown(selection: Selection) -> str:
    sel = selection.selected
    cands = selection.candidates
    classes = list(cands[0].per_class_dice) if cands else []
    lines = [
        "# find-best-configuration",
        "",
        f"Cross-validation over folds {sel.folds} ({selection.num_cases} cases). "
        "Mean Dice = mean over cases per class, then over foreground classes.",
        "",
        f"Candidates are ranked on {selection.ranked_on} Dice; each one's postprocessing (largest connected "
        "component of the foreground and/or of single labels) is decided on its own predictions.",
        "",
        "| candidate | mean Dice, postprocessed | postprocessing | mean Dice, raw | "
        + " | ".join(f"{selection.class_label(k)}, raw" for k in classes) + " |",
        "|---|---|---|---|" + "---|" * len(classes),
    ]
    for c in selection.ranked_candidates():
        mark = " **(selected)**" if c.name == sel.name else ""
        lines.append(f"| {c.name}{mark} | {c.postprocessed_mean_dice:.4f} | {_steps(c.postprocessing, selection.label_names)} | "
                     f"{c.mean_dice:.4f} | " + " | ".join(f"{c.per_class_dice[k]:.4f}" for k in classes) + " |")
    pp = sel.postprocessing
    lines += [
        "",
        "## Postprocessing of the selected candidate",
        "",
        f"- keep largest foreground component: {'yes' if pp['foreground_largest_component'] else 'no'}",
        "- keep largest component per class: "
        + (", ".join(selection.class_label(str(v)) for v in pp["per_class_largest_component"]) or "none"),
        f"- mean Dice before: {selection.dice_before_postprocessing['mean']:.4f}, "
        f"after: {selection.dice_after_postprocessing['mean']:.4f}",
        "",
        f"![Dice per candidate]({CHART_NAME})",
        "",
    ]
    if selection.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in selection.warnings] + [""]
    return "\n".join(lines)


def write_report(selection: Selection, folder: str | os.PathLike) -> Path:
    """Write ``find_best_report.md`` and ``find_best.png`` into ``folder``; returns the report path."""
    folder = Path(folder)
    write_chart(selection, folder / CHART_NAME)
    path = folder / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(report_markdown(selection), encoding="utf-8")
    return path
