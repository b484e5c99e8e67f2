"""Choose what to predict with: the best configuration or pairwise ensemble, with its postprocessing.

Everything is decided on cross-validation predictions, never on a test set:

1. Every trained ``results/<trainer>__<configuration>/`` whose requested folds all have a
   complete ``fold_k/validation/`` folder is a candidate; an incomplete one is skipped with a
   message saying which folds or cases are missing.
2. Each candidate and each pair of candidates (probabilities averaged from
   ``CASE_probabilities.npy``) is scored by mean foreground Dice over all validation cases
   (mean over cases per class, then over classes) against the raw dataset's labels.
3. For every candidate, keeping only the largest foreground component is tried; it is kept only
   if it raises the mean foreground Dice. Then, for each class, keeping only that class's largest
   component is kept only if it raises that class's mean Dice.
4. The candidate whose postprocessed Dice is highest wins (``rank_on="raw"``: the highest before
   postprocessing, as nnU-Net ranks). What a user predicts is the postprocessed segmentation, and
   the two rankings can disagree: a model that leaves removable islands far from the object loses
   raw Dice it does not lose once they are removed (documentation/evaluation.md).

The result is ``best_configuration.json`` (schema in ``documentation/evaluation.md``) plus a
Markdown report with a bar chart.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from autoseg.atomic import read_json, remove_partials
from autoseg.errors import UserError
from autoseg.evaluation.metrics import (class_boxes, class_counts, class_index_map, dice_from_counts,
                                        foreground_values)
from autoseg.postprocessing.connected_components import keep_largest_component
from autoseg.postprocessing.ensemble import (PROBABILITIES_SUFFIX, find_label_values,
                                             segmentation_from_probability_files)
from autoseg.postprocessing.report import PREVIEW_FOLDER, write_case_previews, write_report
from autoseg.postprocessing.selection import (DEFAULT_FOLDS, RANK_KEYS, Candidate, ModelRef, Selected,
                                              Selection)
from autoseg.workspace import DatasetWorkspace
# A postprocessing step must beat "off" by more than float noise to be kept.
MIN_IMPROVEMENT = 1e-6


@dataclass
class Member:
    """One trained model and its cross-validation predictions, case id -> files."""

    model: ModelRef
    segmentations: dict[str, Path]
    probabilities: dict[str, Path]
    label_values: list[int]

    @property
    def name(self) -> str:
        return self.model.name


def _warn(message: str, log: list[str]) -> None:
    log.append(message)
    print(f"warning: {message}", file=sys.stderr)


def reference_labels(ws: DatasetWorkspace) -> tuple[dict[str, Path], dict[int, str]]:
    """Label files of the raw dataset this workspace was made from, and its labels (value -> name)."""
    from autoseg.dataset.layout import load_dataset

    if not ws.source_file.is_file():
        raise UserError(f"{ws.source_file}: missing; run plan-and-preprocess for this dataset first")
    source = read_json(ws.source_file)
    spec = load_dataset(source["raw_path"])
    return {c.case_id: c.label_file for c in spec.cases if c.label_file is not None}, spec.labels


def _validation_cases(ws: DatasetWorkspace, folds: Sequence[int]) -> dict[int, list[str]] | None:
    if not ws.splits_file.is_file():
        return None
    splits = read_json(ws.splits_file)
    out = {}
    for k in folds:
        if k >= len(splits):
            raise UserError(f"{ws.splits_file}: has {len(splits)} folds, fold {k} was requested")
        out[k] = list(splits[k]["val"])
    return out


def collect_members(ws: DatasetWorkspace, configurations: Sequence[str] | None, trainers: Sequence[str] | None,
                    folds: Sequence[int], log: list[str]) -> list[Member]:
    """Every trained model with complete validation predictions for ``folds``."""
    from autoseg.evaluation.evaluate import list_label_files

    results = ws.root / "results"
    if not results.is_dir():
        raise UserError(f"{results}: no trained models; run autoseg train first")
    expected = _validation_cases(ws, folds)
    members = []
    for d in sorted(p for p in results.iterdir() if p.is_dir() and "__" in p.name):
        trainer, configuration = d.name.split("__", 1)
        if (configurations and configuration not in configurations) or (trainers and trainer not in trainers):
            continue
        segs: dict[str, Path] = {}
        probs: dict[str, Path] = {}
        problems = []
        for k in folds:
            val = d / f"fold_{k}" / "validation"
            if not val.is_dir():
                problems.append(f"fold {k} has no validation predictions")
                continue
            fold_segs = list_label_files(val)
            fold_probs = {f.name[: -len(PROBABILITIES_SUFFIX)]: f for f in val.glob(f"*{PROBABILITIES_SUFFIX}")}
            if expected is not None:
                absent = [c for c in expected[k] if c not in fold_segs]
                if absent:
                    problems.append(f"fold {k} lacks {len(absent)} validation case(s) ({', '.join(absent[:5])})")
                    continue
                fold_segs = {c: fold_segs[c] for c in expected[k]}
            elif not fold_segs:
                problems.append(f"fold {k} validation folder is empty")
                continue
            segs.update(fold_segs)
            probs.update({c: p for c, p in fold_probs.items() if c in fold_segs})
        if problems:
            _warn(f"skipping {d.name}: " + "; ".join(problems), log)
            continue
        label_values = find_label_values(d / f"fold_{folds[0]}" / "validation")
        members.append(Member(ModelRef(trainer, configuration), segs, probs, label_values or []))
    return members


def _mean_dice(per_case: list[dict[int, float]], labels: Sequence[int]) -> tuple[float, dict[str, float]]:
    per_class = {str(v): float(np.mean([c[v] for c in per_case])) for v in labels}
    return float(np.mean(list(per_class.values()))), per_class


def _candidate_segmentation(members: Sequence[Member], case: str) -> np.ndarray:
    from autoseg.dataset.imageio import read_label

    if len(members) == 1:
        return read_label(members[0].segmentations[case])[0]
    # class by class from the members' files: never every member's (K, Z, Y, X) array at once
    return segmentation_from_probability_files([m.probabilities[case] for m in members], members[0].label_values)


class PostprocessingScores:
    """Per-case Dice of one candidate without and with each largest-component step, gathered case by
    case so that every candidate's postprocessing is decided in the one pass over the cases.

    A class's own step changes only that class's voxels (they become background), so each class
    is decided on its own Dice. The counts of all classes come from one pass over the volume and
    a class's own step is worked out inside its bounding box: with a hundred classes a case costs
    a few full passes, not a few hundred.
    """

    def __init__(self, labels: Sequence[int]) -> None:
        self.labels = foreground_values(labels)
        self.base: dict[bool, list[dict[int, float]]] = {False: [], True: []}  # foreground step off/on
        self.own: dict[bool, list[dict[int, float]]] = {False: [], True: []}  # + that class's own step

    def reference_index(self, ref: np.ndarray) -> np.ndarray:
        """The reference as class indices (:func:`class_index_map`), shared by every candidate of a case."""
        return class_index_map(ref, self.labels)

    def add(self, ref: np.ndarray, seg: np.ndarray, ref_index: np.ndarray | None = None) -> None:
        """Score one case; ``ref_index``: :meth:`reference_index` of ``ref``, when already computed."""
        ref_index = self.reference_index(ref) if ref_index is None else ref_index
        seg_index = class_index_map(seg, self.labels)
        foreground = seg != 0
        largest = keep_largest_component(foreground)
        variants = {False: seg_index}
        # one foreground component: the step changes nothing, and neither do its scores
        variants[True] = seg_index if np.array_equal(largest, foreground) else np.where(largest, seg_index, 0)
        for fg, index in variants.items():
            if fg and index is seg_index:
                self.base[True].append(dict(self.base[False][-1]))
                self.own[True].append(dict(self.own[False][-1]))
                continue
            base, own = self._scores(ref_index, index)
            self.base[fg].append(base)
            self.own[fg].append(own)

    def _scores(self, ref_index: np.ndarray, seg_index: np.ndarray) -> tuple[dict[int, float], dict[int, float]]:
        """Dice of every class, and of every class after its own largest-component step."""
        k = len(self.labels)
        tp, n_ref, n_pred = class_counts(ref_index, seg_index, k)
        base = dice_from_counts(tp, n_ref, n_pred)
        own = base.copy()
        for i, box in enumerate(class_boxes(seg_index, k), start=1):
            if box is None:
                continue
            mask = seg_index[box] == i
            removed = mask & ~keep_largest_component(mask)
            n_removed = int(np.count_nonzero(removed))
            if n_removed:
                tp_removed = int(np.count_nonzero(removed & (ref_index[box] == i)))
                own[i] = dice_from_counts(tp[i] - tp_removed, n_ref[i], n_pred[i] - n_removed)
        values = self.labels
        return ({v: float(base[i]) for i, v in enumerate(values, start=1)},
                {v: float(own[i]) for i, v in enumerate(values, start=1)})

    def decide(self) -> tuple[dict, dict, dict]:
        """(spec, before, after): which steps raise the cross-validation Dice, and the Dice either side."""
        labels = self.labels
        mean_off, classes_off = _mean_dice(self.base[False], labels)
        mean_on, classes_on = _mean_dice(self.base[True], labels)
        use_fg = mean_on > mean_off + MIN_IMPROVEMENT
        chosen_classes = classes_on if use_fg else classes_off
        own_mean = _mean_dice(self.own[use_fg], labels)[1]
        keep = [v for v in labels if own_mean[str(v)] > chosen_classes[str(v)] + MIN_IMPROVEMENT]
        final_classes = {str(v): (own_mean[str(v)] if v in keep else chosen_classes[str(v)]) for v in labels}
        spec = {"foreground_largest_component": bool(use_fg), "per_class_largest_component": keep}
        before = {"mean": mean_off, "per_class": classes_off}
        after = {"mean": float(np.mean(list(final_classes.values()))), "per_class": final_classes,
                 "foreground_step": {"mean": mean_on, "per_class": classes_on},
                 "per_class_step": own_mean}
        return spec, before, after


def find_best_configuration(
    workspace: DatasetWorkspace,
    configurations: Sequence[str] | None = None,
    trainers: Sequence[str] | None = None,
    folds: Sequence[int] = tuple(DEFAULT_FOLDS),
    write: bool = True,
    progress: bool = True,
    rank_on: str = "postprocessed",
    previews: bool = True,
) -> Selection:
    """Score candidates on cross-validation, decide each one's postprocessing, choose one; see the
    module docstring. ``rank_on``: ``"postprocessed"`` (default) or ``"raw"`` Dice.

    Returns the selection (written to the workspace's ``best_configuration.json`` when ``write``),
    plus a report (``find_best_report.md``, ``find_best.png`` and, with ``previews``, pictures of
    the selected candidate's best, median and worst validation case) next to it.
    """
    from tqdm import tqdm

    from autoseg.dataset.imageio import read_label

    if rank_on not in RANK_KEYS:
        raise UserError(f"rank_on must be one of {', '.join(RANK_KEYS)}, got {rank_on!r}")
    folds = [int(k) for k in folds]
    log: list[str] = []
    references, label_names = reference_labels(workspace)
    all_labels = sorted(label_names)
    labels = [v for v in all_labels if v != 0]
    members = collect_members(workspace, configurations, trainers, folds, log)
    if not members:
        raise UserError(f"{workspace.root / 'results'}: no trained configuration has validation predictions for folds "
                        f"{folds}" + (f" ({'; '.join(log)})" if log else ""))
    cases = sorted(members[0].segmentations)
    for m in members[1:]:
        if sorted(m.segmentations) != cases:
            raise UserError(f"{m.name} and {members[0].name} validated different cases; they were trained on different splits")
    absent = [c for c in cases if c not in references]
    if absent:
        raise UserError(f"validation case(s) {', '.join(absent[:5])} are not in the raw dataset's labels")

    candidates: list[tuple[Member, ...]] = [(m,) for m in members]
    ensemble_ready = []
    for m in members:
        missing = [c for c in cases if c not in m.probabilities]
        if missing:
            _warn(f"{m.name}: no probabilities for {len(missing)} case(s); left out of ensembles", log)
        elif not m.label_values:
            _warn(f"{m.name}: label values unknown (no plans.json in its results folder); left out of ensembles", log)
        else:
            ensemble_ready.append(m)
    candidates += list(itertools.combinations(ensemble_ready, 2))

    scores = [PostprocessingScores(labels) for _ in candidates]
    for case in tqdm(cases, desc="score candidates", disable=not progress):
        ref = read_label(references[case])[0]
        ref_index = scores[0].reference_index(ref)
        for cand, score in zip(candidates, scores):
            seg = _candidate_segmentation(cand, case)
            if seg.shape != ref.shape:
                raise UserError(f"{cand[0].segmentations[case]}: shape {seg.shape} differs from reference "
                                f"{references[case]} {ref.shape}")
            score.add(ref, seg, ref_index)
    table, decisions = [], []
    for cand, score in zip(candidates, scores):
        spec, before, after = score.decide()
        decisions.append((spec, before, after))
        name = cand[0].name if len(cand) == 1 else "ensemble(" + " + ".join(m.name for m in cand) + ")"
        table.append(Candidate(name, [m.model for m in cand], before["mean"], before["per_class"], spec,
                               after["mean"], after["per_class"]))
    best_index = max(range(len(table)), key=lambda i: getattr(table[i], RANK_KEYS[rank_on]))
    spec, before, after = decisions[best_index]
    selection = Selection(
        selected=Selected(table[best_index].name, list(table[best_index].members), spec, folds),
        ranked_on=rank_on, candidates=table, dice_before_postprocessing=before, dice_after_postprocessing=after,
        num_cases=len(cases), label_values=all_labels, label_names={str(v): label_names[v] for v in labels},
        warnings=log)
    if write:
        # what a killed run left half-written goes before anything is written again
        for folder in (workspace.root, workspace.root / PREVIEW_FOLDER):
            remove_partials(folder)
        case_previews = None
        if previews:
            measured = dict(zip(cases, scores[best_index].base[False]))  # the selected candidate's raw Dice
            case_previews = write_case_previews(workspace, selection, workspace.root, measured, progress)
        write_report(selection, workspace.root, case_previews)
        # last: its presence says find-best finished (predict and a study read it)
        selection.save(workspace.best_configuration_file)
    return selection
