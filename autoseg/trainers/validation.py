"""The end of a fold: its validation cases predicted in their original geometry and scored.

Kept apart from the training loop because it is inference plus evaluation, not training: it
runs the same sliding window and export as ``autoseg predict``, then the same metrics as
``autoseg evaluate``, so the cross-validation scores that find-best-configuration ranks are
what those commands would give.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoseg.atomic import atomic_path, read_json, remove_partials, write_json
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.workspace import DatasetWorkspace


def validate_fold(network: nn.Module, plans: Plans, config: ConfigurationPlan, ws: DatasetWorkspace,
                  preprocessed_dir: Path, case_ids: list[str], out_dir: Path, *, device: torch.device,
                  autocast_dtype: torch.dtype | None = None, tta: bool = False, overlap: float = 0.5,
                  mirror_axes: list[int] | None = None) -> dict[str, Any]:
    """Predict ``case_ids`` in their original geometry, write segmentations, probabilities and metrics.

    Writes ``out_dir/CASE<ending>``, ``out_dir/CASE_probabilities.npy`` (float16, original
    grid, class index order) and ``out_dir/summary.json``; returns the summary. References
    are the raw dataset's label files (from ``dataset_source.json``).
    """
    from tqdm import tqdm

    from autoseg.dataset.imageio import Geometry
    from autoseg.dataset.layout import load_dataset
    from autoseg.evaluation.evaluate import evaluate_case, mean_metrics, write_summary_csv
    from autoseg.inference.export import segmentation_from_probabilities, to_original_geometry, write_prediction
    from autoseg.inference.sliding_window import predict_sliding_window

    out_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(out_dir)
    spec = None
    if ws.source_file.is_file():
        raw = read_json(ws.source_file).get("raw_path")
        if raw and Path(raw, "dataset.json").is_file():
            spec = load_dataset(raw)
    ending = spec.file_ending if spec is not None else ".nii.gz"
    label_files = {c.case_id: c.label_file for c in spec.cases} if spec is not None else {}
    network.eval()
    per_case = []
    for cid in tqdm(case_ids, desc="validation", dynamic_ncols=True, disable=None):
        data = np.load(preprocessed_dir / f"{cid}.npy")
        props = read_json(preprocessed_dir / f"{cid}.json")
        probs = predict_sliding_window(network, data, config.inference_patch, config.dim, plans.num_classes,
                                       overlap=overlap, tta=tta, device=device, autocast_dtype=autocast_dtype,
                                       mirror_axes=mirror_axes)
        probs = to_original_geometry(probs, props, plans, config)
        probs_np = probs.numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)
        seg = segmentation_from_probabilities(probs_np, plans.label_values)
        pred_file = out_dir / f"{cid}{ending}"
        write_prediction(np.asarray(seg), Geometry.from_dict(props["geometry"]), pred_file)
        with atomic_path(out_dir / f"{cid}_probabilities.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, probs_np.astype(np.float16))
        ref = label_files.get(cid)
        if ref is not None and Path(ref).is_file():
            result = evaluate_case(ref, pred_file, plans.label_values)
            result["case_id"] = cid
            per_case.append(result)
    if not per_case:
        print(f"validation: reference labels not found (dataset_source.json); {out_dir} holds predictions only",
              file=sys.stderr)
        return {}
    labels = [v for v in plans.label_values if v != 0]
    per_class, foreground = mean_metrics(per_case, labels)
    summary = {"label_values": labels, "num_cases": len(per_case), "mean": per_class,
               "foreground_mean": foreground, "per_case": per_case}
    write_json(out_dir / "summary.json", summary)
    write_summary_csv(summary, out_dir / "summary.csv")
    return summary
