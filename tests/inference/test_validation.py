"""Fold validation: the prediction path on preprocessed cases, written as predict writes, scored as evaluate scores."""
import json

import numpy as np
import torch

from autoseg.dataset.imageio import read_label
from autoseg.evaluation.evaluate import evaluate_case
from autoseg.inference.folder import predict_folder
from autoseg.inference.predictor import Predictor
from autoseg.inference.validation import validate_fold
from autoseg.networks import build_network
from autoseg.planners.plans import Plans
from autoseg.preprocessing.preprocessed import PreprocessedFolder

from tests.trainers.test_base import make_workspace


def test_validation_matches_folder_prediction_and_evaluate(tmp_path):
    ws = make_workspace(tmp_path, num_cases=3)
    plans = Plans.load(ws.plans_file)
    torch.manual_seed(0)
    net = build_network(plans, plans.configuration("3d_fullres"))
    predictor = Predictor(plans, "3d_fullres", [net], device="cpu", tta=False, precision="fp32")
    folder = PreprocessedFolder(ws.preprocessed_dir("tiny_3d"))
    out = tmp_path / "validation"
    summary = validate_fold(predictor, ws, folder, ["case_000", "case_001"], out)

    assert summary["num_cases"] == 2 and set(summary["mean"]) == {"1", "2"}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "summary.csv").is_file()
    raw = json.loads(ws.source_file.read_text())["raw_path"]
    for cid in ("case_000", "case_001"):
        seg, geometry = read_label(out / f"{cid}.nii.gz")
        ref, ref_geometry = read_label(f"{raw}/labelsTr/{cid}.nii.gz")
        assert seg.shape == ref.shape and not geometry.matches(ref_geometry)  # the original grid
        probs = np.load(out / f"{cid}_probabilities.npy")
        assert probs.dtype == np.float16 and probs.shape == (3,) + ref.shape
        per_case = next(c for c in summary["per_case"] if c["case_id"] == cid)
        assert per_case == {**evaluate_case(f"{raw}/labelsTr/{cid}.nii.gz", out / f"{cid}.nii.gz", [0, 1, 2]),
                            "case_id": cid}

    # the same network on the raw images through autoseg predict's path gives the same labels
    predicted = tmp_path / "predicted"
    predict_folder([predictor], f"{raw}/imagesTr", predicted, save_probabilities=True)
    for cid in ("case_000", "case_001"):
        np.testing.assert_array_equal(read_label(predicted / f"{cid}.nii.gz")[0], read_label(out / f"{cid}.nii.gz")[0])


def test_validation_without_references_writes_predictions_only(tmp_path):
    ws = make_workspace(tmp_path, num_cases=3)
    ws.source_file.unlink()
    plans = Plans.load(ws.plans_file)
    predictor = Predictor(plans, "3d_fullres", [build_network(plans, plans.configuration("3d_fullres"))],
                          device="cpu", tta=False, precision="fp32")
    out = tmp_path / "validation"
    assert validate_fold(predictor, ws, PreprocessedFolder(ws.preprocessed_dir("tiny_3d")), ["case_002"], out) == {}
    assert (out / "case_002.nii.gz").is_file() and not (out / "summary.json").exists()
