"""find-best-configuration on a fabricated results tree (test data for the selection logic)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from autoseg.atomic import write_json
from autoseg.cli import main
from autoseg.errors import UserError
from autoseg.dataset.imageio import read_label, write_image
from autoseg.evaluation.metrics import compute_case_metrics
from autoseg.postprocessing.find_best import find_best_configuration
from autoseg.postprocessing.report import report_markdown
from autoseg.postprocessing.selection import Selection
from autoseg.synthetic import make_dataset
from autoseg.workspace import DatasetWorkspace

LABELS = [0, 1, 2]
FULL = ndi.generate_binary_structure(3, 3)


def _island_corner(lab: np.ndarray) -> tuple[slice, ...]:
    """A 2x2x2 corner block at least 3 voxels away from the foreground."""
    far = ~ndi.binary_dilation(lab > 0, FULL, iterations=3)
    for z in (slice(0, 2), slice(-2, None)):
        for y in (slice(0, 2), slice(-2, None)):
            for x in (slice(0, 2), slice(-2, None)):
                if far[z, y, x].all():
                    return z, y, x
    raise AssertionError("no free corner")


def split_and_island(lab: np.ndarray) -> np.ndarray:
    """Class 2 cut off from class 1 (a layer removed), plus a small class-1 island."""
    pred = lab.copy()
    pred[(lab == 2) & ndi.binary_dilation(lab == 1, FULL)] = 0
    pred[_island_corner(lab)] = 1
    return pred


def island_only(lab: np.ndarray) -> np.ndarray:
    pred = lab.copy()
    pred[_island_corner(lab)] = 1
    return pred


def one_voxel_missing(lab: np.ndarray) -> np.ndarray:
    """Class 1 loses one voxel: a small error no largest-component step can undo."""
    pred = lab.copy()
    pred[tuple(np.argwhere(lab == 1)[0])] = 0
    return pred


def shifted(lab: np.ndarray) -> np.ndarray:
    return np.roll(lab, 2, axis=2)


def _probabilities(seg: np.ndarray) -> np.ndarray:
    onehot = np.stack([seg == v for v in LABELS]).astype(np.float32)
    return (0.05 + 0.85 * onehot).astype(np.float16)


def make_workspace(tmp_path, perturb_a, perturb_b, drop_fold_of_b: int | None = None) -> DatasetWorkspace:
    raw = make_dataset(tmp_path / "raw", num_cases=10, shape=(12, 20, 20), seed=5)
    ws = DatasetWorkspace(tmp_path / "ws" / "raw")
    ws.root.mkdir(parents=True)
    write_json(ws.source_file, {"raw_path": str(raw), "layout": "msd"})
    cases = [f"case_{i:03d}" for i in range(10)]
    splits = [{"train": [c for c in cases if c not in cases[2 * k:2 * k + 2]], "val": cases[2 * k:2 * k + 2]} for k in range(5)]
    write_json(ws.splits_file, splits)
    for config, perturb in (("3d_fullres", perturb_a), ("2d", perturb_b)):
        write_json(ws.results_dir("unet", config) / "plans.json", {"label_values": LABELS})
        for k in range(5):
            if config == "2d" and k == drop_fold_of_b:
                continue
            val = ws.fold_dir("unet", config, k) / "validation"
            for c in splits[k]["val"]:
                lab, geo = read_label(raw / "labelsTr" / f"{c}.nii.gz")
                pred = perturb(lab)
                write_image(pred.astype(np.uint8), geo, val / f"{c}.nii.gz")
                np.save(val / f"{c}_probabilities.npy", _probabilities(pred))
    return ws


def _mean_dice_direct(ws: DatasetWorkspace, config: str) -> float:
    """Mean foreground Dice from the full metrics code, independently of find-best."""
    raw = ws.root.parent.parent / "raw"
    per_class = {1: [], 2: []}
    for val in sorted((ws.results_dir("unet", config)).glob("fold_*/validation")):
        for f in sorted(val.glob("*.nii.gz")):
            ref, geo = read_label(raw / "labelsTr" / f.name)
            m = compute_case_metrics(ref, read_label(f)[0], geo.spacing, LABELS)
            for v in per_class:
                per_class[v].append(m[v]["Dice"])
    return float(np.mean([np.mean(v) for v in per_class.values()]))


def test_foreground_lcc_kept_when_it_helps(tmp_path):
    ws = make_workspace(tmp_path, island_only, shifted)
    result = find_best_configuration(ws, progress=False).to_dict()
    sel = result["selected"]
    assert sel["configurations"] == [{"trainer": "unet", "configuration": "3d_fullres"}]
    assert sel["folds"] == [0, 1, 2, 3, 4]
    names = {c["name"]: c for c in result["candidates"]}
    assert set(names) == {"unet__3d_fullres", "unet__2d", "ensemble(unet__2d + unet__3d_fullres)"}
    for config in ("3d_fullres", "2d"):
        assert names[f"unet__{config}"]["mean_dice"] == pytest.approx(_mean_dice_direct(ws, config))
    assert max(c["mean_dice"] for c in result["candidates"]) == names["unet__3d_fullres"]["mean_dice"]
    # the island is the only error: removing it makes the result perfect
    assert sel["postprocessing"] == {"foreground_largest_component": True, "per_class_largest_component": []}
    assert result["dice_before_postprocessing"]["mean"] < 1
    assert result["dice_after_postprocessing"]["mean"] == pytest.approx(1.0)
    saved = json.loads(ws.best_configuration_file.read_text())
    assert saved["selected"] == sel
    assert saved["label_names"] == {"1": "inner", "2": "outer"}  # as dataset.json names them
    report = (ws.root / "find_best_report.md").read_text()
    assert report.count("unet__3d_fullres") >= 1
    per_class = report[report.index("## Per class"):report.index("## Validation cases")].splitlines()
    rows = [line.split(" | ") for line in per_class if line.startswith(("| inner (1) |", "| outer (2) |"))]
    # three candidates' raw Dice, the selected one's postprocessed, no class step selected
    assert len(rows) == 2 and all(len(r) == 6 and r[4] == "1.0000" and r[5] == " |" for r in rows)
    assert (ws.root / "find_best.png").stat().st_size > 1000
    # a best_configuration.json written before the names were recorded still renders
    del saved["label_names"]
    assert "| label 1 | " in report_markdown(Selection.from_dict(saved))


def test_ranks_on_what_predict_delivers_after_postprocessing(tmp_path, capsys):
    """One model is nearly perfect and cannot be improved; the other leaves an island that
    postprocessing removes, after which it is perfect. Raw Dice prefers the first, the
    postprocessed Dice (the default ranking) the second."""
    ws = make_workspace(tmp_path, one_voxel_missing, island_only)
    result = find_best_configuration(ws, progress=False).to_dict()
    names = {c["name"]: c for c in result["candidates"]}
    nearly, islands = names["unet__3d_fullres"], names["unet__2d"]
    assert nearly["mean_dice"] > islands["mean_dice"]
    assert islands["postprocessed_mean_dice"] == pytest.approx(1.0)
    assert nearly["postprocessed_mean_dice"] == nearly["mean_dice"] < 1.0
    assert nearly["postprocessing"]["per_class_largest_component"] == []  # nothing to remove
    assert result["ranked_on"] == "postprocessed"
    assert result["selected"]["configurations"] == [{"trainer": "unet", "configuration": "2d"}]
    assert result["selected"]["postprocessing"] == islands["postprocessing"]
    assert result["dice_after_postprocessing"]["mean"] == islands["postprocessed_mean_dice"]
    # nnU-Net's ranking, on request
    raw = find_best_configuration(ws, rank_on="raw", progress=False).to_dict()
    assert raw["ranked_on"] == "raw"
    assert raw["selected"]["configurations"] == [{"trainer": "unet", "configuration": "3d_fullres"}]
    assert raw["dice_before_postprocessing"]["mean"] == nearly["mean_dice"]
    with pytest.raises(UserError, match="rank_on"):
        find_best_configuration(ws, rank_on="hd95", progress=False)
    # the command and its report
    assert main(["find-best-configuration", "raw", "--workspace", str(tmp_path / "ws"), "--rank-on", "raw"]) == 0
    assert json.loads(ws.best_configuration_file.read_text())["selected"]["name"] == "unet__3d_fullres"
    assert main(["find-best-configuration", "raw", "--workspace", str(tmp_path / "ws")]) == 0
    out = capsys.readouterr().out
    assert "ranked on postprocessed" in out and "unet__2d  <- selected" in out
    report = (ws.root / "find_best_report.md").read_text()
    assert "ranked on postprocessed Dice" in report and "| unet__2d **(selected)** | 1.0000 |" in report


def test_foreground_lcc_rejected_when_it_hurts(tmp_path):
    ws = make_workspace(tmp_path, split_and_island, shifted)
    result = find_best_configuration(ws, progress=False).to_dict()
    # the foreground step would delete the detached class 2; the class-1 step only removes the island
    assert result["selected"]["postprocessing"] == {"foreground_largest_component": False,
                                                    "per_class_largest_component": [1]}
    after, before = result["dice_after_postprocessing"], result["dice_before_postprocessing"]
    assert after["foreground_step"]["mean"] < before["mean"]
    assert after["per_class"]["1"] > before["per_class"]["1"]
    assert after["per_class"]["2"] == before["per_class"]["2"]


def test_incomplete_configuration_skipped_and_fold_subset(tmp_path, capsys):
    ws = make_workspace(tmp_path, shifted, island_only, drop_fold_of_b=4)
    result = find_best_configuration(ws, progress=False).to_dict()
    assert [c["name"] for c in result["candidates"]] == ["unet__3d_fullres"]
    assert any("unet__2d" in w and "fold 4" in w for w in result["warnings"])
    assert "fold 4" in capsys.readouterr().err
    # with folds 0-3 only, the 2d model is complete and (its island removed) wins
    result = find_best_configuration(ws, folds=[0, 1, 2, 3], progress=False).to_dict()
    assert result["selected"]["configurations"] == [{"trainer": "unet", "configuration": "2d"}]
    assert result["num_cases"] == 8
    # the command
    assert main(["find-best-configuration", "raw", "--workspace", str(tmp_path / "ws"), "--folds", "0", "1", "-c", "2d"]) == 0
    assert json.loads(ws.best_configuration_file.read_text())["selected"]["folds"] == [0, 1]
    with pytest.raises(UserError, match="fold"):
        find_best_configuration(ws, configurations=["2d"], progress=False)


def test_report_names_each_candidates_postprocessing_briefly():
    from autoseg.postprocessing.report import _steps

    named = {"label_names": {"1": "RV", "2": "MYO", "3": "LV"}}
    assert _steps({"foreground_largest_component": True, "per_class_largest_component": [1, 3]}, named["label_names"]) \
        == "foreground; RV (1), LV (3)"
    assert _steps({"foreground_largest_component": False, "per_class_largest_component": [2]}, {}) == "label 2"
    assert _steps({"foreground_largest_component": False, "per_class_largest_component": []}, named["label_names"]) == "none"
