"""The find-best report's pictures of the selected candidate's best, median and worst validation cases."""
from __future__ import annotations

import numpy as np
import pytest

from autoseg.atomic import write_json
from autoseg.dataset.imageio import read_label, write_image
from autoseg.evaluation.metrics import compute_case_metrics
from autoseg.postprocessing.find_best import find_best_configuration
from autoseg.postprocessing.report import (PREVIEW_FOLDER, CasePreviews, case_dice_from_summaries, pick_cases,
                                           report_markdown, write_case_previews)
from autoseg.postprocessing.selection import ModelRef, Selected, Selection
from autoseg.synthetic import make_dataset
from autoseg.workspace import DatasetWorkspace

LABELS = [0, 1, 2]
CASES = [f"case_{i:03d}" for i in range(5)]
SPEC = {"foreground_largest_component": False, "per_class_largest_component": []}


def _eroded(lab: np.ndarray, n: int) -> np.ndarray:
    """Case i loses its first i*3 label-1 voxels: a Dice that falls with i."""
    pred = lab.copy()
    for z, y, x in np.argwhere(lab == 1)[: 3 * n]:
        pred[z, y, x] = 0
    return pred


def make_workspace(tmp_path, summaries: bool = True) -> DatasetWorkspace:
    """Five cases, one per fold, predicted by two models (unet/2d and unet/3d_fullres) with the
    same eroded label maps; with ``summaries`` each fold has its validation/summary.json."""
    raw = make_dataset(tmp_path / "raw", num_cases=5, shape=(8, 14, 14), spacing=(3.0, 1.0, 1.0), seed=2)
    ws = DatasetWorkspace(tmp_path / "ws" / "raw")
    ws.root.mkdir(parents=True)
    write_json(ws.source_file, {"raw_path": str(raw), "layout": "msd"})
    write_json(ws.splits_file, [{"train": [c for c in CASES if c != v], "val": [v]} for v in CASES])
    for config in ("3d_fullres", "2d"):
        write_json(ws.results_dir("unet", config) / "plans.json", {"label_values": LABELS})
        for k, case in enumerate(CASES):
            val = ws.fold_dir("unet", config, k) / "validation"
            lab, geo = read_label(raw / "labelsTr" / f"{case}.nii.gz")
            pred = _eroded(lab, k)
            write_image(pred.astype(np.uint8), geo, val / f"{case}.nii.gz")
            onehot = np.stack([pred == v for v in LABELS]).astype(np.float16)
            np.save(val / f"{case}_probabilities.npy", (0.05 + 0.85 * onehot).astype(np.float16))
            if summaries:
                m = compute_case_metrics(lab, pred, geo.spacing, LABELS)
                write_json(val / "summary.json", {"label_values": [1, 2], "num_cases": 1, "per_case": [
                    {"case_id": case, "metrics": {str(v): m[v] for v in (1, 2)}}]})
    return ws


def _selection(*configs: str) -> Selection:
    models = [ModelRef("unet", c) for c in configs]
    name = models[0].name if len(models) == 1 else "ensemble(" + " + ".join(m.name for m in models) + ")"
    return Selection(Selected(name, models, SPEC, [0, 1, 2, 3, 4]), dice_before_postprocessing={"mean": 0.9},
                     dice_after_postprocessing={"mean": 0.9}, label_values=LABELS,
                     label_names={"1": "inner", "2": "outer"})


def test_pick_cases():
    dice = {"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.95, "e": 0.7}
    assert pick_cases(dice) == [("best", "d"), ("median", "c"), ("worst", "b")]  # ties by case id
    assert pick_cases({"a": 0.2, "b": 0.4}) == [("best", "b"), ("worst", "a")]
    assert pick_cases({"a": 0.2}) == [("best", "a")]
    assert pick_cases({}) == []


def test_section_lists_best_median_worst_from_summaries(tmp_path):
    ws = make_workspace(tmp_path)
    dice = case_dice_from_summaries(ws.results_dir("unet", "3d_fullres"), [0, 1, 2, 3, 4])
    assert dice["case_003"][0] == 3
    # numbers find-best would have measured; the summaries take precedence for a single model
    measured = {c: {1: 0.0, 2: 0.0} for c in CASES}
    previews = write_case_previews(ws, _selection("3d_fullres"), ws.root, measured)
    assert previews.dice_source == "the folds' validation/summary.json"
    assert [(p.rank, p.case_id, p.fold) for p in previews.cases] == [
        ("best", "case_000", 0), ("median", "case_002", 2), ("worst", "case_004", 4)]
    means = [p.mean_dice for p in previews.cases]
    assert means == sorted(means, reverse=True) and means[0] == pytest.approx(1.0)
    assert means[2] == pytest.approx(np.mean([dice["case_004"][1]["1"], dice["case_004"][1]["2"]]))
    for p in previews.cases:
        assert p.picture == f"{PREVIEW_FOLDER}/{p.rank}.png"
        assert (ws.root / p.picture).stat().st_size > 10_000

    text = report_markdown(_selection("3d_fullres"), previews)
    section = text[text.index("## Validation cases of the selected candidate"):]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in section.splitlines() if line.startswith("| ")}
    assert rows[""] == ["best", "median", "worst |"]
    assert rows["case"] == ["case_000", "case_002", "case_004 |"] and rows["fold"] == ["0", "2", "4 |"]
    assert [float(v.rstrip(" |")) for v in rows["mean Dice"]] == pytest.approx(means, abs=1e-4)
    # a row per class, named as dataset.json names it
    assert [float(v.rstrip(" |")) for v in rows["inner (1)"]] == pytest.approx(
        [dice[c][1]["1"] for c in ("case_000", "case_002", "case_004")], abs=1e-4)
    assert "outer (2)" in rows
    for p in previews.cases:
        assert f"![{p.rank}: {p.case_id}, mean Dice {p.mean_dice:.4f}]({PREVIEW_FOLDER}/{p.rank}.png)" in section


def test_ensemble_uses_measured_dice_and_averaged_probabilities(tmp_path):
    ws = make_workspace(tmp_path, summaries=False)
    measured = {c: {1: 0.9 - 0.1 * i, 2: 1.0} for i, c in enumerate(CASES)}
    previews = write_case_previews(ws, _selection("2d", "3d_fullres"), ws.root, measured)
    assert previews.dice_source == "scored by find-best-configuration"
    assert [p.case_id for p in previews.cases] == ["case_000", "case_002", "case_004"]
    assert [p.mean_dice for p in previews.cases] == pytest.approx([0.95, 0.85, 0.75])
    assert all(p.picture for p in previews.cases) and previews.note is None
    assert "averaged" in report_markdown(_selection("2d", "3d_fullres"), previews)


def test_unreadable_case_is_noted_not_fatal(tmp_path):
    ws = make_workspace(tmp_path)
    (tmp_path / "raw" / "imagesTr" / "case_004.nii.gz").write_bytes(b"not an image")
    previews = write_case_previews(ws, _selection("3d_fullres"), ws.root)
    assert [p.picture is None for p in previews.cases] == [False, False, True]
    assert "case_004" in previews.note
    assert "Not drawn:" in report_markdown(_selection("3d_fullres"), previews)
    # without summaries or measured Dice there is nothing to rank
    empty = write_case_previews(make_workspace(tmp_path / "b", summaries=False), _selection("3d_fullres"), ws.root)
    assert empty.cases == [] and "No pictures" in report_markdown(_selection("3d_fullres"), empty)


def test_find_best_writes_the_section(tmp_path):
    ws = make_workspace(tmp_path)
    find_best_configuration(ws, progress=False)
    report = (ws.root / "find_best_report.md").read_text()
    assert "## Validation cases of the selected candidate" in report
    assert report.count(f"]({PREVIEW_FOLDER}/") == 3
    assert sorted(p.name for p in (ws.root / PREVIEW_FOLDER).iterdir()) == ["best.png", "median.png", "worst.png"]
    assert isinstance(write_case_previews(ws, Selection.load(ws.best_configuration_file), ws.root), CasePreviews)
