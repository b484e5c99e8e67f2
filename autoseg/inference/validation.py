"""The end of a fold: its validation cases predicted in their original geometry and scored.

It runs the case path every prediction runs (:mod:`autoseg.inference.predictor`) on the
already preprocessed cases, writes what ``autoseg predict --save-probabilities`` writes, then
scores with ``autoseg evaluate``'s metrics, so the cross-validation scores that
find-best-configuration ranks are what those commands would give.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from autoseg.atomic import read_json, remove_partials, write_json
from autoseg.dataset.imageio import Geometry
from autoseg.inference.folder import write_case_outputs
from autoseg.inference.predictor import Predictor, finish, infer
from autoseg.postprocessing.ensemble import PROBABILITIES_SUFFIX
from autoseg.preprocessing.preprocessed import PreprocessedFolder
from autoseg.workspace import DatasetWorkspace


def validate_fold(predictor: Predictor, ws: DatasetWorkspace, preprocessed: PreprocessedFolder, case_ids: list[str],
                  out_dir: Path) -> dict[str, Any]:
    """Predict ``case_ids`` in their original geometry, write segmentations, probabilities and metrics.

    Writes ``out_dir/CASE<ending>``, ``out_dir/CASE_probabilities.npy`` (float16, original
    grid, class index order) and ``out_dir/summary.json``; returns the summary. References
    are the raw dataset's label files (from ``dataset_source.json``).
    """
    from tqdm import tqdm

    from autoseg.dataset.layout import load_dataset
    from autoseg.evaluation.evaluate import evaluate_case, mean_metrics, summary_label_names, write_summary_csv

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(out_dir)
    spec = None
    if ws.source_file.is_file():
        raw = read_json(ws.source_file).get("raw_path")
        if raw and Path(raw, "dataset.json").is_file():
            spec = load_dataset(raw)
    ending = spec.file_ending if spec is not None else ".nii.gz"
    label_files = {c.case_id: c.label_file for c in spec.cases} if spec is not None else {}
    label_values = predictor.label_values
    per_case = []
    for cid in tqdm(case_ids, desc="validation", dynamic_ncols=True, disable=None):
        props = preprocessed.load_properties(cid)
        # the probabilities go to their file class by class during export, never whole into memory
        prediction = finish([predictor], infer([predictor], [(preprocessed.load_data(cid), props)]),
                            probabilities=out_dir / f"{cid}{PROBABILITIES_SUFFIX}")
        pred_file = write_case_outputs(out_dir, cid, ending, prediction, Geometry.from_dict(props["geometry"]),
                                       save_probabilities=True)
        ref = label_files.get(cid)
        if ref is not None and Path(ref).is_file():
            result = evaluate_case(ref, pred_file, label_values)
            result["case_id"] = cid
            per_case.append(result)
    if not per_case:
        print(f"validation: reference labels not found (dataset_source.json); {out_dir} holds predictions only",
              file=sys.stderr)
        return {}
    labels = [v for v in label_values if v != 0]
    per_class, foreground = mean_metrics(per_case, labels)
    names = summary_label_names(labels, dict(zip(predictor.plans.label_values, predictor.plans.label_names)))
    summary = {"label_values": labels, "label_names": names, "num_cases": len(per_case), "mean": per_class,
               "foreground_mean": foreground, "per_case": per_case}
    write_json(out_dir / "summary.json", summary)
    write_summary_csv(summary, out_dir / "summary.csv")
    return summary
