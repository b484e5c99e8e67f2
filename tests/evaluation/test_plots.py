"""The per-class Dice/HD95 box plot of an evaluation summary, and ``autoseg evaluate`` writing it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.dataset.imageio import read_label, write_image
from autoseg.evaluation.plots import BOXPLOT_NAME, dice_hd95_boxplot, metric_values
from autoseg.synthetic import make_dataset


def _summary() -> dict:
    per_case = []
    for i in range(5):
        per_case.append({"case_id": f"case_{i}", "metrics": {
            "1": {"Dice": 0.8 + 0.03 * i, "HD95": 2.0 + i},
            "2": {"Dice": 0.5, "HD95": float("nan") if i % 2 else 7.5},  # NaN: a class empty in some cases
            "3": {"Dice": 1.0, "HD95": float("nan")},  # never a finite distance
        }})
    return {"label_values": [1, 2, 3], "num_cases": 5, "per_case": per_case}


def test_metric_values_skip_non_finite():
    s = _summary()
    assert metric_values(s, 1, "Dice") == pytest.approx([0.8, 0.83, 0.86, 0.89, 0.92])
    assert metric_values(s, "2", "HD95") == [7.5, 7.5, 7.5]
    assert metric_values(s, 3, "HD95") == []
    assert metric_values(s, 9, "Dice") == []


def test_boxplot_with_nan_hd95(tmp_path):
    path = tmp_path / "plots" / BOXPLOT_NAME
    dice_hd95_boxplot(_summary(), path, label_names={"1": "liver", "2": "tumour"})
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == [BOXPLOT_NAME]


def test_boxplot_of_an_empty_summary(tmp_path):
    dice_hd95_boxplot({"label_values": [], "per_case": []}, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_evaluate_command_writes_the_boxplot(tmp_path, capsys):
    raw = make_dataset(tmp_path / "raw", num_cases=3, shape=(6, 10, 10), seed=1)
    pred = tmp_path / "pred"
    for f in sorted((raw / "labelsTr").glob("*.nii.gz")):
        lab, geo = read_label(f)
        write_image(np.roll(lab, 1, axis=2), geo, pred / f.name)
    out = tmp_path / "out"
    assert main(["evaluate", str(raw / "labelsTr"), str(pred), "-o", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["num_cases"] == 3
    assert (out / BOXPLOT_NAME).stat().st_size > 10_000
    assert BOXPLOT_NAME in capsys.readouterr().out
