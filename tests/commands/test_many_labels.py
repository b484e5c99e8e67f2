"""104 classes with sparse values beyond 255 through evaluate, postprocessing and find-best: every
result equals the class-by-class reference computation, and the names of dataset.json label the
summary, its CSV, the box plot and the find-best report."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from autoseg.atomic import write_json
from autoseg.cli import main
from autoseg.dataset.imageio import read_label, write_image
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.metrics import binary_metrics, dice_per_label
from autoseg.evaluation.plots import BOXPLOT_NAME
from autoseg.postprocessing.connected_components import apply_postprocessing, keep_largest_component
from autoseg.postprocessing.find_best import PostprocessingScores, find_best_configuration
from autoseg.postprocessing.report import CHART_NAME, REPORT_NAME
from autoseg.synthetic import make_dataset
from autoseg.workspace import DatasetWorkspace

VALUES = [2 + 3 * i for i in range(104)]  # 2, 5, ..., 311: sparse, past uint8
NAMES = {v: f"structure_{i:03d}" for i, v in enumerate(VALUES)}
SHAPE = (20, 25, 30)  # 4 x 5 x 6 cells of 5^3 voxels: one class per cell, 16 cells free for islands
CASES = [f"case_{i:03d}" for i in range(5)]


def reference_map(seed: int) -> np.ndarray:
    """Each class a 3^3 cube in its own cell, grown by a few random voxels of that cell."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint16)
    cells = [(z, y, x) for z in range(4) for y in range(5) for x in range(6)]
    for v, (z, y, x) in zip(VALUES, cells[:len(VALUES)], strict=True):
        cell = lab[5 * z:5 * z + 5, 5 * y:5 * y + 5, 5 * x:5 * x + 5]
        cell[1:4, 1:4, 1:4] = v
        extra = rng.integers(0, 5, (int(rng.integers(0, 6)), 3))
        cell[tuple(extra.T)] = v
    return lab


def predicted_map(ref: np.ndarray, seed: int) -> np.ndarray:
    """Shifted classes, islands in the free cells and beside their class, one class missed."""
    rng = np.random.default_rng(100 + seed)
    pred = ref.copy()
    for v in rng.choice(VALUES, 20, replace=False):
        mask = ref == v
        pred[mask] = 0
        pred[np.roll(mask, 1, axis=int(rng.integers(0, 3)))] = v
    for _ in range(8):  # islands in the last layer of cells, which holds 14 classes and the 16 free cells
        z, y, x = 15 + int(rng.integers(0, 4)), int(rng.integers(0, 24)), 5 * 2 + int(rng.integers(0, 19))
        pred[z, y, x] = VALUES[int(rng.integers(0, 104))]
    pred[pred == VALUES[seed]] = 0  # a class missed entirely
    return pred


def many_label_dataset(root):
    raw = make_dataset(root, num_cases=len(CASES), shape=SHAPE, seed=0)
    rng = np.random.default_rng(0)
    for i, c in enumerate(CASES):
        f = raw / "labelsTr" / f"{c}.nii.gz"
        geo = read_label(f)[1]
        lab = reference_map(i)
        write_image(lab, geo, f)
        image = (lab > 0) * 100.0 + rng.normal(0, 10, SHAPE)
        write_image(image.astype(np.float32), geo, raw / "imagesTr" / f"{c}.nii.gz")
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"] = {"0": "background", **{str(v): n for v, n in NAMES.items()}}
    (raw / "dataset.json").write_text(json.dumps(meta))
    return raw


def predictions(raw, folder):
    for i, c in enumerate(CASES):
        ref, geo = read_label(raw / "labelsTr" / f"{c}.nii.gz")
        write_image(predicted_map(ref, i), geo, folder / f"{c}.nii.gz")


def test_evaluate_names_every_output_and_equals_class_by_class(tmp_path):
    raw = many_label_dataset(tmp_path / "raw" / "Many")
    pred = tmp_path / "pred"
    predictions(raw, pred)
    assert main(["evaluate", str(raw / "labelsTr"), str(pred)]) == 0
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["label_values"] == VALUES
    assert summary["label_names"] == {str(v): n for v, n in NAMES.items()}  # from raw/dataset.json
    for case in summary["per_case"]:
        ref, geo = read_label(raw / "labelsTr" / f"{case['case_id']}.nii.gz")
        p = read_label(pred / f"{case['case_id']}.nii.gz")[0]
        for v in VALUES:  # the reference: each class on its own, whole volume
            direct = binary_metrics(ref == v, p == v, geo.spacing)
            got = case["metrics"][str(v)]
            assert got == pytest.approx(direct, abs=1e-9), (case["case_id"], v)
        assert dice_per_label(ref, p, VALUES) == pytest.approx({v: case["metrics"][str(v)]["Dice"] for v in VALUES})
    missed = summary["per_case"][0]["metrics"][str(VALUES[0])]
    assert missed["Dice"] == 0.0 and missed["n_prediction"] == 0.0
    with open(pred / "summary.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CASES) * 104 + 104 + 1
    assert {(r["label"], r["name"]) for r in rows if r["case_id"] == "mean" and r["label"] != "foreground"} == {
        (str(v), n) for v, n in NAMES.items()}
    assert (pred / BOXPLOT_NAME).stat().st_size > 50_000
    # names passed in win over dataset.json; a folder without a dataset.json leaves them out
    named = evaluate_folders(raw / "labelsTr", pred, VALUES[:2], progress=False, output_folder=tmp_path / "a",
                             label_names={VALUES[0]: "first"})
    assert named["label_names"] == {str(VALUES[0]): "first"}
    (raw / "dataset.json").rename(raw / "dataset.moved")
    assert evaluate_folders(raw / "labelsTr", pred, VALUES[:2], progress=False,
                            output_folder=tmp_path / "b")["label_names"] == {}


def _reference_scores(ref: np.ndarray, seg: np.ndarray) -> tuple[dict, dict, dict, dict]:
    """find-best's per-case numbers class by class on whole volumes: base and own-step Dice,
    without and with the foreground step."""
    def dice(r, p):
        n = int(r.sum() + p.sum())
        return 1.0 if n == 0 else 2.0 * int((r & p).sum()) / n

    out = []
    for s in (seg, np.where(keep_largest_component(seg != 0), seg, 0)):
        base, own = {}, {}
        for v in VALUES:
            mask = s == v
            base[v] = dice(ref == v, mask)
            own[v] = dice(ref == v, mask & keep_largest_component(mask))
        out += [base, own]
    return tuple(out)


def test_postprocessing_scores_and_apply_equal_class_by_class():
    ref = reference_map(0)
    seg = predicted_map(ref, 0)
    seg[17, 22, 27] = VALUES[50]  # islands in the last free cell, far from their classes
    seg[15, 20, 25] = VALUES[51]
    scores = PostprocessingScores(VALUES)
    scores.add(ref, seg)
    base, own, base_fg, own_fg = _reference_scores(ref, seg)
    assert scores.base[False][0] == pytest.approx(base) and scores.own[False][0] == pytest.approx(own)
    assert scores.base[True][0] == pytest.approx(base_fg) and scores.own[True][0] == pytest.approx(own_fg)
    spec = {"foreground_largest_component": False, "per_class_largest_component": VALUES}
    expected = seg.copy()
    for v in VALUES:
        mask = seg == v
        expected[mask & ~keep_largest_component(mask)] = 0
    np.testing.assert_array_equal(apply_postprocessing(seg, spec, [0, *VALUES]), expected)


def many_label_workspace(tmp_path) -> DatasetWorkspace:
    raw = many_label_dataset(tmp_path / "raw")
    ws = DatasetWorkspace(tmp_path / "ws" / "raw")
    ws.root.mkdir(parents=True)
    write_json(ws.source_file, {"raw_path": str(raw), "layout": "msd"})
    write_json(ws.splits_file, [{"train": [c for c in CASES if c != v], "val": [v]} for v in CASES])
    labels = [0, *VALUES]
    for config, offset in (("3d_fullres", 0), ("2d", 7)):
        write_json(ws.results_dir("unet", config) / "plans.json", {"label_values": labels})
        for k, case in enumerate(CASES):
            val = ws.fold_dir("unet", config, k) / "validation"
            ref, geo = read_label(raw / "labelsTr" / f"{case}.nii.gz")
            pred = predicted_map(ref, (k + offset) % 104)
            write_image(pred, geo, val / f"{case}.nii.gz")
            onehot = np.stack([pred == v for v in labels]).astype(np.float16)
            np.save(val / f"{case}_probabilities.npy", (0.005 + 0.9 * onehot).astype(np.float16))
    return ws


def test_find_best_report_names_a_hundred_classes(tmp_path):
    ws = many_label_workspace(tmp_path)
    selection = find_best_configuration(ws, progress=False, previews=False)
    assert selection.label_names == {str(v): n for v, n in NAMES.items()}
    assert len(selection.candidates) == 3 and all(len(c.per_class_dice) == 104 for c in selection.candidates)
    chosen = next(c for c in selection.candidates if c.name == selection.selected.name)
    # the raw per-class Dice is the mean over the cases of each class on its own
    if len(chosen.members) == 1:
        folder = ws.results_dir(chosen.members[0].trainer, chosen.members[0].configuration)
        per_class = {v: [] for v in VALUES}
        for k, case in enumerate(CASES):
            ref = read_label(tmp_path / "raw" / "labelsTr" / f"{case}.nii.gz")[0]
            seg = read_label(folder / f"fold_{k}" / "validation" / f"{case}.nii.gz")[0]
            for v, d in _reference_scores(ref, seg)[0].items():
                per_class[v].append(d)
        assert chosen.per_class_dice == pytest.approx({str(v): float(np.mean(d)) for v, d in per_class.items()})
    report = (ws.root / REPORT_NAME).read_text(encoding="utf-8")
    table = report[report.index("## Per class"):].splitlines()
    rows = [line for line in table if line.startswith("| structure_")]
    assert len(rows) == 104 and rows[0].startswith(f"| {NAMES[VALUES[0]]} ({VALUES[0]}) |")
    assert f"| {NAMES[VALUES[-1]]} ({VALUES[-1]}) |" in report
    # the candidates table stays one narrow row per candidate, whatever the number of classes
    head = next(line for line in report.splitlines() if line.startswith("| # | candidate"))
    assert head.count("|") == 7
    steps = selection.selected.postprocessing["per_class_largest_component"]
    assert sum(line.endswith("| yes |") for line in rows) == len(steps)
    from PIL import Image

    with Image.open(ws.root / CHART_NAME) as chart:
        width, height = chart.size
    assert width > 1000 and height < 1400  # the classes are split into side-by-side columns
