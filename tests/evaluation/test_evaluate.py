"""evaluate_folders and ``autoseg evaluate`` on a small synthetic dataset."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.dataset.imageio import Geometry, read_label, write_image
from autoseg.errors import EvaluationError
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.metrics import compute_case_metrics
from autoseg.synthetic import make_dataset


@pytest.fixture()
def folders(tmp_path):
    raw = make_dataset(tmp_path / "raw", num_cases=4, shape=(10, 14, 14), spacing=(2.0, 1.0, 1.0), seed=3)
    ref = raw / "labelsTr"
    pred = tmp_path / "pred"
    pred.mkdir()
    for i, f in enumerate(sorted(ref.glob("*.nii.gz"))):
        lab, geo = read_label(f)
        if i == 1:
            lab = np.roll(lab, 1, axis=2)
        if i == 2:
            lab = np.where(lab == 2, 0, lab).astype(lab.dtype)  # class 2 missed entirely
        write_image(lab, geo, pred / f.name)
    return ref, pred


def test_evaluate_folders_summary(folders):
    ref, pred = folders
    (pred / "case_000_probabilities.npy").write_bytes(b"")  # other files in the folder are ignored
    s = evaluate_folders(ref, pred, progress=False)
    assert s["label_values"] == [1, 2] and s["num_cases"] == 4 and s["missing_predictions"] == []
    by_case = {c["case_id"]: c["metrics"] for c in s["per_case"]}
    assert by_case["case_000"]["1"]["Dice"] == 1.0
    assert by_case["case_002"]["2"]["Dice"] == 0.0
    # per-case values agree with the metric function directly
    r, g = read_label(ref / "case_001.nii.gz")
    p, _ = read_label(pred / "case_001.nii.gz")
    direct = compute_case_metrics(r, p, g.spacing, [1, 2])
    assert by_case["case_001"]["1"]["HD95"] == pytest.approx(direct[1]["HD95"])
    mean1 = np.mean([by_case[c]["1"]["Dice"] for c in by_case])
    assert s["mean"]["1"]["Dice"] == pytest.approx(mean1)
    assert s["foreground_mean"]["Dice"] == pytest.approx((s["mean"]["1"]["Dice"] + s["mean"]["2"]["Dice"]) / 2)
    saved = json.loads((pred / "summary.json").read_text())
    assert saved["mean"] == s["mean"]
    rows = list(csv.reader(open(pred / "summary.csv")))
    assert rows[0][:4] == ["case_id", "label", "name", "Dice"]
    assert len(rows) == 1 + 4 * 2 + 2 + 1


def test_parallel_equals_serial_and_missing_reported(folders, tmp_path):
    ref, pred = folders
    (pred / "case_003.nii.gz").unlink()
    a = evaluate_folders(ref, pred, label_values=[0, 1, 2], progress=False, output_folder=tmp_path / "a")
    b = evaluate_folders(ref, pred, label_values=[1, 2], num_workers=2, progress=False, output_folder=tmp_path / "b")
    assert a["missing_predictions"] == ["case_003"] and a["num_cases"] == 3
    assert a["mean"] == b["mean"]
    assert (tmp_path / "a" / "summary.json").is_file()


def test_geometry_mismatch_names_file(folders):
    ref, pred = folders
    lab, geo = read_label(pred / "case_000.nii.gz")
    write_image(lab, Geometry((3.0, 1.0, 1.0), geo.origin, geo.direction, 3), pred / "case_000.nii.gz")
    with pytest.raises(EvaluationError, match="case_000.*spacing"):
        evaluate_folders(ref, pred, progress=False)
    write_image(lab[:-1], geo, pred / "case_000.nii.gz")
    with pytest.raises(EvaluationError, match="case_000.*shape"):
        evaluate_folders(ref, pred, progress=False)


def test_cli(folders, tmp_path, capsys):
    ref, pred = folders
    out = tmp_path / "out"
    assert main(["evaluate", str(ref), str(pred), "-l", "1", "2", "-o", str(out), "--nsd-tolerance", "2"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["nsd_tolerance_mm"] == 2.0
    assert "Dice" in capsys.readouterr().out
    shutil.rmtree(pred)
    assert main(["evaluate", str(ref), str(pred)]) == 2
    assert "does not exist" in capsys.readouterr().err
