"""The find-best-configuration report: a Markdown table and a bar chart of cross-validation Dice."""
from __future__ import annotations

import os
from pathlib import Path

from autoseg.atomic import atomic_path

REPORT_NAME = "find_best_report.md"
CHART_NAME = "find_best.png"


def write_chart(result: dict, path: str | os.PathLike) -> None:
    """Grouped bars: mean foreground Dice after and before postprocessing, and per-class Dice
    before it, for every candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cands = result["candidates"]
    classes = list(cands[0]["per_class_dice"]) if cands else []
    series = [("mean, postprocessed", [c["postprocessed_mean_dice"] for c in cands]),
              ("mean, raw", [c["mean_dice"] for c in cands])] + [
        (f"{_class_label(result, k)}, raw", [c["per_class_dice"][k] for c in cands]) for k in classes]
    x = np.arange(len(cands))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cands) + 2), 4.5))
    for i, (label, values) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels([c["name"].replace(" + ", "\n+ ") for c in cands], fontsize=7, rotation=0)
    ax.set_ylabel("cross-validation Dice")
    low = min((v for _, vals in series for v in vals), default=0.0)
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_title(f"selected: {result['selected']['name']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _class_label(result: dict, value: str) -> str:
    """``RV (1)`` where the dataset names its classes; ``label 1`` in results written before
    find-best recorded the names."""
    name = result.get("label_names", {}).get(value)
    return f"{name} ({value})" if name else f"label {value}"


def _steps(spec: dict, result: dict) -> str:
    """The largest-component steps in a few words, e.g. ``foreground; RV (1), LV (3)``."""
    classes = ", ".join(_class_label(result, str(v)) for v in spec["per_class_largest_component"])
    steps = (["foreground"] if spec["foreground_largest_component"] else []) + ([classes] if classes else [])
    return "; ".join(steps) or "none"


def report_markdown(result: dict) -> str:
    sel = result["selected"]
    cands = result["candidates"]
    classes = list(cands[0]["per_class_dice"]) if cands else []
    lines = [
        "# find-best-configuration",
        "",
        f"Cross-validation over folds {sel['folds']} ({result['num_cases']} cases). "
        "Mean Dice = mean over cases per class, then over foreground classes.",
        "",
        f"Candidates are ranked on {result['ranked_on']} Dice; each one's postprocessing (largest connected "
        "component of the foreground and/or of single labels) is decided on its own predictions.",
        "",
        "| candidate | mean Dice, postprocessed | postprocessing | mean Dice, raw | "
        + " | ".join(f"{_class_label(result, k)}, raw" for k in classes) + " |",
        "|---|---|---|---|" + "---|" * len(classes),
    ]
    from autoseg.postprocessing.find_best import ranked_candidates

    for c in ranked_candidates(result):
        mark = " **(selected)**" if c["name"] == sel["name"] else ""
        lines.append(f"| {c['name']}{mark} | {c['postprocessed_mean_dice']:.4f} | {_steps(c['postprocessing'], result)} | "
                     f"{c['mean_dice']:.4f} | " + " | ".join(f"{c['per_class_dice'][k]:.4f}" for k in classes) + " |")
    pp = sel["postprocessing"]
    lines += [
        "",
        "## Postprocessing of the selected candidate",
        "",
        f"- keep largest foreground component: {'yes' if pp['foreground_largest_component'] else 'no'}",
        "- keep largest component per class: "
        + (", ".join(_class_label(result, str(v)) for v in pp["per_class_largest_component"]) or "none"),
        f"- mean Dice before: {result['dice_before_postprocessing']['mean']:.4f}, "
        f"after: {result['dice_after_postprocessing']['mean']:.4f}",
        "",
        f"![Dice per candidate]({CHART_NAME})",
        "",
    ]
    if result.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in result["warnings"]] + [""]
    return "\n".join(lines)


def write_report(result: dict, folder: str | os.PathLike) -> Path:
    """Write ``find_best_report.md`` and ``find_best.png`` into ``folder``; returns the report path."""
    folder = Path(folder)
    write_chart(result, folder / CHART_NAME)
    path = folder / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(report_markdown(result), encoding="utf-8")
    return path
