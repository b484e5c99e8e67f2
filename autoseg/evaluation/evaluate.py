"""Score a folder of predicted label maps against a folder of reference label maps.

Files are paired by case id (file name without its image ending). Each pair must have the
same shape and geometry; a mismatch is an error naming both files, because metrics on
misaligned maps would be meaningless. Cases without a prediction are listed in the summary,
not scored. Results go to ``summary.json`` (everything) and ``summary.csv`` (one row per case
and class, then the mean rows), both naming each class as the dataset's ``dataset.json`` does.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from autoseg.atomic import atomic_path, read_json, write_json
from autoseg.errors import EvaluationError
from autoseg.dataset.imageio import read_label, split_ending
from autoseg.evaluation.metrics import METRIC_NAMES, compute_case_metrics, empty_metrics, label_values_present


def list_label_files(folder: str | os.PathLike, file_ending: str | None = None) -> dict[str, Path]:
    """``{case_id: path}`` of the label files in ``folder`` (hidden and partial files skipped, and
    the box plot ``autoseg evaluate`` writes beside the predictions, so a second run still pairs)."""
    from autoseg.evaluation.plots import BOXPLOT_NAME

    files = {}
    for f in sorted(Path(folder).iterdir()):
        if f.name.startswith(".") or not f.is_file() or f.name == BOXPLOT_NAME:
            continue
        parts = split_ending(f.name)
        if parts is None or (file_ending is not None and parts[1].lower() != file_ending.lower()):
            continue
        files[parts[0]] = f
    return files


def evaluate_case(reference_file: str | os.PathLike, prediction_file: str | os.PathLike,
                  label_values: Sequence[int] | None, nsd_tolerance_mm: float = 1.0) -> dict:
    """Metrics of one case; with ``label_values=None`` every nonzero value present is scored."""
    ref, ref_geo = read_label(reference_file)
    pred, pred_geo = read_label(prediction_file)
    if ref.shape != pred.shape:
        raise EvaluationError(f"{prediction_file}: shape {pred.shape} differs from reference {reference_file} {ref.shape}")
    problems = ref_geo.matches(pred_geo)
    if problems:
        raise EvaluationError(f"{prediction_file}: geometry differs from reference {reference_file}: {'; '.join(problems)}")
    if label_values is None:
        label_values = sorted(set(label_values_present(ref)) | set(label_values_present(pred)))
    metrics = compute_case_metrics(ref, pred, ref_geo.spacing, label_values, nsd_tolerance_mm)
    return {"case_id": None, "reference_file": str(reference_file), "prediction_file": str(prediction_file),
            "metrics": {str(k): v for k, v in metrics.items()}}


def _as_int(x: object) -> int | None:
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        return None
    try:
        f = float(x)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


def _names_from_labels(labels: object) -> dict[int, str]:
    """``{value: name}`` from a dataset.json ``labels`` object: MSD ``{"1": "liver"}`` or nnU-Net v2
    ``{"liver": 1}`` (a region, a list of values, has no single value and is left out)."""
    if not isinstance(labels, dict):
        return {}
    if all(_as_int(k) is not None for k in labels):
        pairs = [(_as_int(k), n) for k, n in labels.items()]
    else:
        pairs = [(_as_int(v), n) for n, v in labels.items()]
    return {v: str(n) for v, n in pairs if v is not None}


def dataset_label_names(reference_folder: str | os.PathLike) -> dict[int, str]:
    """The label names of the dataset whose ``labelsTr`` is ``reference_folder`` (its ``dataset.json``
    in the folder or beside it); empty when there is none or it cannot be read, since names only
    label the outputs."""
    folder = Path(reference_folder)
    for f in (folder / "dataset.json", folder.parent / "dataset.json"):
        if f.is_file():
            try:
                return _names_from_labels(read_json(f).get("labels"))
            except (ValueError, OSError, AttributeError):
                return {}
    return {}


def summary_label_names(label_values: Iterable[int], label_names: Mapping[int, str] | None) -> dict[str, str]:
    """``{"value": name}`` of the scored classes that have a name: the summary's ``label_names``."""
    names = {int(v): str(n) for v, n in (label_names or {}).items()}
    return {str(v): names[int(v)] for v in label_values if names.get(int(v))}


def _evaluate_job(job: tuple) -> dict:
    case_id, ref, pred, labels, tol = job
    result = evaluate_case(ref, pred, labels, tol)
    result["case_id"] = case_id
    return result


def mean_metrics(per_case: list[dict], label_values: Iterable[int]) -> tuple[dict, dict]:
    """Mean over cases per class, and the mean of those over the foreground classes."""
    per_class = {}
    for v in label_values:
        key = str(v)
        per_class[key] = {m: float(np.mean([c["metrics"][key][m] for c in per_case])) if per_case else float("nan")
                          for m in METRIC_NAMES}
    foreground = {m: float(np.mean([per_class[k][m] for k in per_class])) if per_class else float("nan")
                  for m in METRIC_NAMES}
    return per_class, foreground


def evaluate_folders(
    reference_folder: str | os.PathLike,
    prediction_folder: str | os.PathLike,
    label_values: Sequence[int] | None = None,
    num_workers: int = 1,
    file_ending: str | None = None,
    output_folder: str | os.PathLike | None = None,
    nsd_tolerance_mm: float = 1.0,
    progress: bool = True,
    label_names: Mapping[int, str] | None = None,
) -> dict:
    """Evaluate every prediction against its reference; write and return the summary.

    ``label_values`` defaults to every nonzero value found in any reference or prediction;
    0 (background) is never scored. ``label_names`` ``{value: name}`` defaults to the
    ``dataset.json`` of the reference folder's dataset (:func:`dataset_label_names`).
    ``summary.json`` and ``summary.csv`` are written into ``output_folder`` (default: the
    prediction folder).
    """
    from tqdm import tqdm

    reference_folder, prediction_folder = Path(reference_folder), Path(prediction_folder)
    for folder, what in ((reference_folder, "reference"), (prediction_folder, "prediction")):
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: {what} folder does not exist")
    refs = list_label_files(reference_folder, file_ending)
    preds = list_label_files(prediction_folder, file_ending)
    if not refs:
        raise EvaluationError(f"{reference_folder}: no label files found")
    missing = sorted(set(refs) - set(preds))
    unmatched = sorted(set(preds) - set(refs))
    if unmatched:
        raise EvaluationError(f"{prediction_folder}: predictions without a reference in {reference_folder}: {', '.join(unmatched[:10])}"
                              + (" ..." if len(unmatched) > 10 else ""))
    cases = sorted(set(refs) & set(preds))
    if not cases:
        raise EvaluationError(f"{prediction_folder}: no prediction matches a reference case in {reference_folder}")
    labels = None if label_values is None else [int(v) for v in label_values if int(v) != 0]
    jobs = [(c, refs[c], preds[c], labels, nsd_tolerance_mm) for c in cases]
    if num_workers > 1:
        with ProcessPoolExecutor(num_workers) as pool:
            per_case = list(tqdm(pool.map(_evaluate_job, jobs), total=len(jobs), desc="evaluate", disable=not progress))
    else:
        per_case = [_evaluate_job(j) for j in tqdm(jobs, desc="evaluate", disable=not progress)]
    if labels is None:
        labels = sorted({int(k) for c in per_case for k in c["metrics"]})
        # a class absent from both maps of a case was not scored there: absent in both is a perfect result
        for c in per_case:
            for v in labels:
                c["metrics"].setdefault(str(v), empty_metrics())
            c["metrics"] = {str(v): c["metrics"][str(v)] for v in labels}
    per_class, foreground = mean_metrics(per_case, labels)
    summary = {
        "reference_folder": str(reference_folder),
        "prediction_folder": str(prediction_folder),
        "label_values": labels,
        "label_names": summary_label_names(labels, dataset_label_names(reference_folder) if label_names is None
                                           else label_names),
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "num_cases": len(per_case),
        "missing_predictions": missing,
        "mean": per_class,
        "foreground_mean": foreground,
        "per_case": per_case,
    }
    out = Path(output_folder) if output_folder is not None else prediction_folder
    write_json(out / "summary.json", summary)
    write_summary_csv(summary, out / "summary.csv")
    return summary


def write_summary_csv(summary: dict, path: str | os.PathLike) -> None:
    """One row per case and class, then the per-class means and the foreground mean; the ``name``
    column holds the class's name from ``summary["label_names"]`` (empty where it has none)."""
    names = summary.get("label_names", {})
    counts = ["n_reference", "n_prediction"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", "label", "name", *METRIC_NAMES, *counts])
            for c in summary["per_case"]:
                for label, m in c["metrics"].items():
                    w.writerow([c["case_id"], label, names.get(label, "")]
                               + [f"{m[k]:.6g}" for k in (*METRIC_NAMES, *counts)])
            for label, m in summary["mean"].items():
                w.writerow(["mean", label, names.get(label, "")] + [f"{m[k]:.6g}" for k in METRIC_NAMES] + ["", ""])
            w.writerow(["mean", "foreground", ""] + [f"{summary['foreground_mean'][k]:.6g}" for k in METRIC_NAMES]
                       + ["", ""])
