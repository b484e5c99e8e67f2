"""The find-best-configuration report: a Markdown table, a bar chart of cross-validation Dice, and
pictures of the selected candidate's best, median and worst validation cases."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np

from autoseg.atomic import atomic_path, read_json
from autoseg.errors import UserError
from autoseg.postprocessing.selection import ModelRef, Selection, class_label

if TYPE_CHECKING:
    from autoseg.dataset.layout import DatasetSpec
    from autoseg.workspace import DatasetWorkspace

REPORT_NAME = "find_best_report.md"
CHART_NAME = "find_best.png"
# pictures are named by rank, not case, so a rerun replaces them instead of piling up old ones
PREVIEW_FOLDER = "find_best_previews"
RANKS = ("best", "median", "worst")


# Classes named one by one where a selected postprocessing touches at most this many; more are counted
# and the per-class table marks them.
MAX_NAMED_STEPS = 6


def _candidate_panel(ax, selection: Selection) -> None:
    """Mean Dice of every candidate, best on top: postprocessed and raw bars side by side."""
    ranked = selection.ranked_candidates()
    y = np.arange(len(ranked))
    ax.barh(y - 0.2, [c.postprocessed_mean_dice for c in ranked], 0.4, label="mean, postprocessed", color="tab:blue")
    ax.barh(y + 0.2, [c.mean_dice for c in ranked], 0.4, label="mean, raw", color="tab:grey")
    ax.set_yticks(y)
    ax.set_yticklabels([f"#{i + 1} " + c.name.replace(" + ", "\n+ ") + (" (selected)" if c.name == selection.selected.name
                                                                         else "") for i, c in enumerate(ranked)],
                       fontsize=7)
    ax.set_ylim(len(ranked) + 0.4, -0.5)  # a free slot below the last candidate holds the legend
    low = min((v for c in ranked for v in (c.mean_dice, c.postprocessed_mean_dice)), default=0.0)
    ax.set_xlim(max(0.0, low - 0.05), 1.0)
    ax.set_xlabel("cross-validation Dice, mean over classes", fontsize=8)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(axis="x", alpha=0.3)


def write_chart(selection: Selection, path: str | os.PathLike) -> None:
    """Left: mean Dice of every candidate after and before postprocessing. Right: per class (named,
    worst first by the selected candidate's postprocessed Dice, in columns of at most
    :data:`~autoseg.evaluation.plots.MAX_ROWS_PER_PANEL` rows) every candidate's raw Dice as a
    marker and the selected candidate's postprocessed Dice as a black diamond."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from autoseg.evaluation.plots import ROW_INCHES, row_groups, worst_first

    ranked = selection.ranked_candidates()
    chosen = next((c for c in ranked if c.name == selection.selected.name), ranked[0] if ranked else None)
    classes = list(chosen.per_class_dice) if chosen else []
    order = worst_first(classes, {k: [chosen.postprocessed_per_class_dice.get(k, chosen.per_class_dice[k])]
                                  for k in classes}) if chosen else []
    groups = row_groups(len(order)) if order else []
    rows = max([len(g) for g in groups] + [len(ranked), 4])
    name_inches = 0.065 * max((len(selection.class_label(k)) for k in classes), default=8)
    fig = Figure(figsize=(4.5 + len(groups) * (3.0 + name_inches), 1.8 + ROW_INCHES * rows), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(groups), squeeze=False)[0]
    _candidate_panel(axes[0], selection)
    markers = "o^sv<>p*hX"
    low = min([v for c in ranked for v in c.per_class_dice.values()] + [1.0])
    for ax, group in zip(axes[1:], groups, strict=True):
        keys = [order[i] for i in group]
        y = np.arange(1, len(keys) + 1)
        for i, c in enumerate(ranked):
            ax.scatter([c.per_class_dice.get(k, np.nan) for k in keys], y, s=14, alpha=0.8,
                       marker=markers[i % len(markers)], color=f"C{i % 10}", zorder=3)
        ax.scatter([chosen.postprocessed_per_class_dice.get(k, np.nan) for k in keys], y, s=22, marker="D",
                   facecolors="none", edgecolors="black", zorder=4)
        ax.set_yticks(y)
        ax.set_yticklabels([selection.class_label(k) for k in keys], fontsize=7)
        ax.set_ylim(rows + 0.5, 0.5)
        ax.set_xlim(max(0.0, low - 0.05), 1.01)
        ax.set_xlabel("Dice per class", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    if groups:
        handles = [Line2D([], [], ls="", marker=markers[i % len(markers)], color=f"C{i % 10}", label=f"#{i + 1}, raw")
                   for i in range(len(ranked))]
        handles.append(Line2D([], [], ls="", marker="D", markerfacecolor="none", markeredgecolor="black",
                              label="selected, postprocessed"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=7)
    fig.suptitle(f"selected: {selection.selected.name}; classes worst first", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _steps(spec: dict, label_names: dict[str, str]) -> str:
    """The largest-component steps in a few words, e.g. ``foreground; RV (1), LV (3)``; more than
    :data:`MAX_NAMED_STEPS` classes are counted (the per-class table names them)."""
    per_class = spec["per_class_largest_component"]
    if len(per_class) > MAX_NAMED_STEPS:
        classes = f"{len(per_class)} classes (see \"Per class\")"
    else:
        classes = ", ".join(class_label(label_names, v) for v in per_class)
    steps = (["foreground"] if spec["foreground_largest_component"] else []) + ([classes] if classes else [])
    return "; ".join(steps) or "none"


@dataclass
class CasePreview:
    """One validation case pictured in the report; Dice before postprocessing."""

    rank: str  # "best", "median" or "worst"
    case_id: str
    fold: int
    mean_dice: float  # mean over the foreground classes
    per_class_dice: dict[str, float]  # label value -> Dice
    picture: str | None  # path relative to the report's folder; None when it could not be drawn


@dataclass
class CasePreviews:
    """The report's pictured cases of the selected candidate, and where their Dice came from."""

    candidate: str
    num_cases: int
    dice_source: str
    cases: list[CasePreview] = field(default_factory=list)
    note: str | None = None  # why some or all pictures are missing


def pick_cases(mean_dice: Mapping[str, float]) -> list[tuple[str, str]]:
    """``(rank, case id)`` of the best, median and worst case by mean Dice (ties by case id); with
    fewer than three cases each is named once (two cases: best and worst)."""
    order = sorted(mean_dice, key=lambda c: (-mean_dice[c], c))
    if not order:
        return []
    index = {"best": 0, "worst": len(order) - 1, "median": len(order) // 2}
    taken: set[int] = set()
    chosen = {}
    for rank in ("best", "worst", "median"):
        if index[rank] not in taken:
            taken.add(index[rank])
            chosen[rank] = order[index[rank]]
    return [(rank, chosen[rank]) for rank in RANKS if rank in chosen]


def _mean(per_class: Mapping[str, float]) -> float:
    return float(np.mean(list(per_class.values()))) if per_class else float("nan")


def case_dice_from_summaries(model_dir: str | os.PathLike, folds: list[int]) -> dict[str, tuple[int, dict[str, float]]] | None:
    """``{case: (fold, {label: Dice})}`` from ``fold_k/validation/summary.json`` of every fold; None
    when a fold has none (validation without reference labels, or results made by hand)."""
    out = {}
    for k in folds:
        f = Path(model_dir) / f"fold_{k}" / "validation" / "summary.json"
        if not f.is_file():
            return None
        summary = read_json(f)
        labels = [str(v) for v in summary.get("label_values", []) if int(v) != 0]
        for case in summary.get("per_case", []):
            out[case["case_id"]] = (k, {v: float(case["metrics"][v]["Dice"]) for v in labels if v in case["metrics"]})
    return out


def _validation_files(ws: "DatasetWorkspace", model: ModelRef, folds: list[int]) -> dict[str, tuple[int, Path]]:
    """``{case: (fold, segmentation file)}`` of a model's validation folders."""
    from autoseg.evaluation.evaluate import list_label_files

    out = {}
    for k in folds:
        val = ws.fold_dir(model.trainer, model.configuration, k) / "validation"
        if val.is_dir():
            out.update({c: (k, f) for c, f in list_label_files(val).items()})
    return out


def _modality(ws: "DatasetWorkspace", spec: "DatasetSpec") -> str | None:
    """CT when the plans normalize as CT; the dataset's first channel name when there are no plans."""
    from autoseg.evaluation.preview import modality_of_plans

    if ws.plans_file.is_file():
        try:
            return modality_of_plans(read_json(ws.plans_file))
        except (ValueError, OSError):
            pass
    return "CT" if spec.channel_names and spec.channel_names[0].strip().upper() == "CT" else None


def _prediction(ws: "DatasetWorkspace", models: list[ModelRef], case: str, fold: int, seg_file: Path,
                label_values: list[int] | None) -> np.ndarray:
    """The candidate's validation segmentation: the model's file, or the ensemble's average of its
    members' probabilities (as find-best scored it)."""
    from autoseg.dataset.imageio import read_label
    from autoseg.postprocessing.ensemble import PROBABILITIES_SUFFIX, segmentation_from_probability_files

    if len(models) == 1:
        return read_label(seg_file)[0]
    if not label_values:
        raise UserError(f"{seg_file.parent}: label values unknown (no plans.json); the ensemble cannot be drawn")
    files = [ws.fold_dir(m.trainer, m.configuration, fold) / "validation" / f"{case}{PROBABILITIES_SUFFIX}"
             for m in models]
    for f in files:
        if not f.is_file():
            raise UserError(f"{f}: missing; the ensemble's prediction of {case} cannot be drawn")
    return segmentation_from_probability_files(files, label_values)


def write_case_previews(ws: "DatasetWorkspace", selection: Selection, folder: str | os.PathLike,
                        measured: Mapping[str, Mapping[int, float]] | None = None,
                        progress: bool = False) -> CasePreviews:
    """Pictures of the selected candidate's best, median and worst validation case (by mean
    foreground Dice before postprocessing) into ``folder/find_best_previews/``.

    A single model's Dice come from its folds' ``validation/summary.json``; an ensemble's (or a
    model whose folds lack summaries) from ``measured``, the per-case Dice find-best scored. The
    image is the raw dataset's first channel, the prediction the fold's validation output, the
    reference the raw label drawn as outlines. A case that cannot be read is noted in the
    report instead of failing find-best after its scoring is done.
    """
    from tqdm import tqdm

    from autoseg.dataset.imageio import read_channels, read_label
    from autoseg.dataset.layout import load_dataset
    from autoseg.evaluation.preview import preview_png
    from autoseg.postprocessing.ensemble import find_label_values

    folder = Path(folder)
    models, folds = selection.models, list(selection.selected.folds)
    files = _validation_files(ws, models[0], folds)
    dice, source = None, ""
    if len(models) == 1:
        from_summaries = case_dice_from_summaries(ws.results_dir(models[0].trainer, models[0].configuration), folds)
        if from_summaries is not None and set(files) <= set(from_summaries):
            dice = {c: from_summaries[c][1] for c in files}
            source = "the folds' validation/summary.json"
    if dice is None and measured is not None:
        dice = {c: {str(v): float(d) for v, d in measured[c].items()} for c in files if c in measured}
        source = "scored by find-best-configuration"
    result = CasePreviews(selection.selected.name, len(dice or {}), source)
    if not dice:
        result.note = "no per-case Dice of the selected candidate (no validation/summary.json)"
        return result
    picks = pick_cases({c: _mean(d) for c, d in dice.items()})
    out_dir = folder / PREVIEW_FOLDER
    for rank in RANKS:  # pictures of ranks not drawn this time would describe an older run
        if rank not in dict(picks):
            (out_dir / f"{rank}.png").unlink(missing_ok=True)

    raw_path = read_json(ws.source_file)["raw_path"]
    spec = load_dataset(raw_path)
    raw_cases = {c.case_id: c for c in spec.cases}
    modality = _modality(ws, spec)
    label_values = sorted(spec.labels)
    names = {v: n for v, n in spec.labels.items() if v != 0}
    ensemble_labels = None
    if len(models) > 1:
        ensemble_labels = find_label_values(ws.fold_dir(models[0].trainer, models[0].configuration, folds[0]) / "validation")
    problems = []
    for rank, case in tqdm(picks, desc="report pictures", disable=not progress):
        fold, seg_file = files[case]
        per_class = dice[case]
        preview = CasePreview(rank, case, fold, _mean(per_class), per_class, None)
        result.cases.append(preview)
        try:
            raw = raw_cases.get(case)
            if raw is None or raw.label_file is None:
                raise UserError(f"{raw_path}: case {case} is not in the raw dataset")
            image, geometry = read_channels(raw.image_files)
            reference = read_label(raw.label_file)[0]
            prediction = _prediction(ws, models, case, fold, seg_file, ensemble_labels)
            if prediction.shape != reference.shape or image.shape[1:] != reference.shape:
                raise UserError(f"{seg_file}: shape {prediction.shape} differs from the raw case's {reference.shape}")
            path = out_dir / f"{rank}.png"
            preview_png(image, prediction, geometry, label_values, names, path,
                        title=f"{rank} validation case: {case} (fold {fold}), mean Dice {preview.mean_dice:.4f}",
                        reference=reference, modality=modality)
            preview.picture = f"{PREVIEW_FOLDER}/{path.name}"
        except UserError as e:  # ImageReadError and the like: the scores stand, the picture does not
            problems.append(str(e))
            print(f"warning: report picture of {case}: {e}", file=sys.stderr)
    if problems:
        result.note = "; ".join(problems)
    return result


def _previews_markdown(previews: CasePreviews, selection: Selection) -> list[str]:
    lines = ["## Validation cases of the selected candidate", ""]
    if not previews.cases:
        return lines + [f"No pictures: {previews.note}.", ""]
    ensemble = len(selection.models) > 1
    prediction = ("the ensemble's prediction (its members' validation probabilities averaged)" if ensemble
                  else "the prediction (`fold_k/validation/`)")
    classes = list(previews.cases[0].per_class_dice)
    lines += [
        f"The best, median and worst of the {previews.num_cases} validation cases of {previews.candidate} by mean "
        f"foreground Dice before postprocessing ({previews.dice_source}). Filled with a solid outline: {prediction}; "
        "dashed outline: the reference label. Slices through the structures, in millimetres "
        "(documentation/evaluation.md, \"Pictures\").",
        "",
        "| | " + " | ".join(p.rank for p in previews.cases) + " |",
        "|---|" + "---|" * len(previews.cases),
        "| case | " + " | ".join(p.case_id for p in previews.cases) + " |",
        "| fold | " + " | ".join(str(p.fold) for p in previews.cases) + " |",
        "| mean Dice | " + " | ".join(f"{p.mean_dice:.4f}" for p in previews.cases) + " |",
    ]
    for k in classes:  # one row per class: a hundred classes stay a readable table
        lines.append(f"| {selection.class_label(k)} | "
                     + " | ".join(f"{p.per_class_dice.get(k, float('nan')):.4f}" for p in previews.cases) + " |")
    lines.append("")
    for p in previews.cases:
        if p.picture:
            lines += [f"![{p.rank}: {p.case_id}, mean Dice {p.mean_dice:.4f}]({p.picture})", ""]
    if previews.note:
        lines += [f"Not drawn: {previews.note}", ""]
    return lines


def _worst_class(per_class: Mapping[str, float], selection: Selection) -> str:
    if not per_class:
        return ""
    k = min(per_class, key=lambda c: (per_class[c], int(c) if c.lstrip("-").isdigit() else 0))
    return f"{selection.class_label(k)}: {per_class[k]:.4f}"


def _per_class_markdown(selection: Selection) -> list[str]:
    """One row per class (by label value): every candidate's raw Dice, the selected one's after its
    postprocessing, and whether that postprocessing keeps only the class's largest component."""
    ranked = selection.ranked_candidates()
    chosen = next((c for c in ranked if c.name == selection.selected.name), None)
    classes = sorted(ranked[0].per_class_dice, key=lambda k: int(k) if k.lstrip("-").isdigit() else 0) if ranked else []
    if not classes:
        return []
    reduced = {str(v) for v in selection.selected.postprocessing.get("per_class_largest_component", [])}
    lines = [
        "## Per class",
        "",
        ("Cross-validation Dice of every class, raw for each candidate (numbered as ranked above) and of the "
         "selected candidate after its postprocessing; *largest component*: the selected postprocessing keeps "
         "only that class's largest component."),
        "",
        "| class | " + " | ".join(f"#{i + 1}, raw" for i in range(len(ranked))) + " | selected, postprocessed | largest component |",
        "|---|" + "---|" * (len(ranked) + 2),
    ]
    for k in classes:
        post = f"{chosen.postprocessed_per_class_dice[k]:.4f}" if chosen and k in chosen.postprocessed_per_class_dice else ""
        lines.append(f"| {selection.class_label(k)} | " + " | ".join(f"{c.per_class_dice.get(k, float('nan')):.4f}"
                                                                    for c in ranked)
                     + f" | {post} | {'yes' if k in reduced else ''} |")
    return lines + [""]


def report_markdown(selection: Selection, previews: CasePreviews | None = None) -> str:
    sel = selection.selected
    lines = [
        "# find-best-configuration",
        "",
        f"Cross-validation over folds {sel.folds} ({selection.num_cases} cases). "
        "Mean Dice = mean over cases per class, then over foreground classes.",
        "",
        f"Candidates are ranked on {selection.ranked_on} Dice; each one's postprocessing (largest connected "
        "component of the foreground and/or of single labels) is decided on its own predictions.",
        "",
        "| # | candidate | mean Dice, postprocessed | postprocessing | mean Dice, raw | worst class, raw |",
        "|---|---|---|---|---|---|",
    ]
    for i, c in enumerate(selection.ranked_candidates()):
        mark = " **(selected)**" if c.name == sel.name else ""
        lines.append(f"| {i + 1} | {c.name}{mark} | {c.postprocessed_mean_dice:.4f} | "
                     f"{_steps(c.postprocessing, selection.label_names)} | {c.mean_dice:.4f} | "
                     f"{_worst_class(c.per_class_dice, selection)} |")
    pp = sel.postprocessing
    per_class = pp["per_class_largest_component"]
    lines += [
        "",
        "## Postprocessing of the selected candidate",
        "",
        f"- keep largest foreground component: {'yes' if pp['foreground_largest_component'] else 'no'}",
        "- keep largest component per class: "
        + (f"{len(per_class)} classes (column *largest component* under \"Per class\")" if len(per_class) > MAX_NAMED_STEPS
           else ", ".join(selection.class_label(str(v)) for v in per_class) or "none"),
        f"- mean Dice before: {selection.dice_before_postprocessing['mean']:.4f}, "
        f"after: {selection.dice_after_postprocessing['mean']:.4f}",
        "",
        f"![Dice per candidate and class]({CHART_NAME})",
        "",
    ]
    lines += _per_class_markdown(selection)
    if previews is not None:
        lines += _previews_markdown(previews, selection)
    if selection.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in selection.warnings] + [""]
    return "\n".join(lines)


def write_report(selection: Selection, folder: str | os.PathLike, previews: CasePreviews | None = None) -> Path:
    """Write ``find_best_report.md`` and ``find_best.png`` into ``folder``; returns the report path.
    ``previews`` (:func:`write_case_previews`, pictures already written) adds their section."""
    folder = Path(folder)
    write_chart(selection, folder / CHART_NAME)
    path = folder / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(report_markdown(selection, previews), encoding="utf-8")
    return path
