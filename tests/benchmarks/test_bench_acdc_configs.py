"""The ACDC benchmark's tools on hand-made inputs: island diagnosis (benchmarks/acdc_islands.py) and
the cross-validation table's rerun averaging (benchmarks/acdc_cv_table.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from acdc_cv_table import average_reruns, fold_differences, rerun_spread  # noqa: E402
from acdc_islands import islands  # noqa: E402


def test_islands_are_the_components_outside_each_class_largest():
    ref = np.zeros((6, 40, 40), np.uint8)
    ref[1:4, 10:20, 10:20] = 3  # the reference heart: LV on slices 1-3
    pred = ref.copy()
    pred[2, 35:38, 35:38] = 3  # far, on a slice that holds heart
    pred[5, 10:12, 10:12] = 3  # above the heart: a slice without it
    pred[2, 10:12, 22:24] = 2  # the only MYO component: its largest, never an island
    spacing = np.array([10.0, 1.5, 1.5])
    found = sorted(islands(pred, ref, spacing), key=lambda i: i["mm"])
    assert [i["class"] for i in found] == ["LV", "LV"]
    above, side = found
    assert above["mm"] == pytest.approx(20.0)  # two slices of 10 mm above the heart's top slice
    assert above["off_heart_slices"] and not side["off_heart_slices"]
    assert side["mm"] == pytest.approx(np.hypot(16, 16) * 1.5)  # (35, 35) to the heart's corner (19, 19)
    assert side["ml"] == pytest.approx(9 * 10 * 1.5 * 1.5 / 1000)


def test_a_frame_without_reference_heart_puts_every_island_infinitely_far():
    pred = np.zeros((3, 10, 10), np.uint8)
    pred[0, :2, :2] = 1
    pred[2, 8:, 8:] = 1
    found = islands(pred, np.zeros_like(pred), np.ones(3))
    assert len(found) == 1 and found[0]["mm"] == float("inf") and not found[0]["off_heart_slices"]


def _record(row: str, fold: int, tag: str, mean: float, pp: float) -> dict:
    return {"row": row, "fold": fold, "tag": tag, "dice": [mean] * 3, "mean_dice": mean, "hd95": 10.0,
            "iterations": 1000, "pp_dice": pp, "pp_hd95": 5.0}


def test_reruns_of_a_fold_are_averaged_into_one_record_so_every_fold_weighs_the_same():
    runs = [_record("2d", 0, "a", 0.80, 0.82), _record("2d", 1, "a", 0.90, 0.90), _record("2d", 0, "b", 0.84, 0.86)]
    avg = average_reruns(runs)
    assert [(r["row"], r["fold"], r["runs"], r["tag"]) for r in avg] == [("2d", 0, 2, "a+b"), ("2d", 1, 1, "a")]
    assert avg[0]["mean_dice"] == pytest.approx(0.82) and avg[0]["pp_dice"] == pytest.approx(0.84)
    assert avg[0]["dice"] == pytest.approx([0.82] * 3)


def test_fold_differences_pair_folds_both_rows_have_with_the_standard_error_over_folds():
    runs = [_record("h", f, "t", m, m) for f, m in enumerate([0.90, 0.80, 0.70])]
    runs += [_record("u", f, "t", m, m) for f, m in enumerate([0.88, 0.81])]  # no fold 2
    diffs, mean, se = fold_differences(runs, "h", "u", "mean_dice")
    assert list(diffs) == [0, 1] and diffs[0] == pytest.approx(0.02) and diffs[1] == pytest.approx(-0.01)
    assert mean == pytest.approx(0.005)
    assert se == pytest.approx(np.std([0.02, -0.01], ddof=1) / np.sqrt(2))
    assert np.isnan(fold_differences(runs[:1] + runs[3:4], "h", "u", "pp_dice")[2])  # one fold: no error bar


def test_rerun_spread_pools_the_variance_of_the_row_fold_pairs_run_more_than_once():
    runs = [_record("2d", 0, "a", 0.80, 0.80), _record("2d", 0, "b", 0.84, 0.80),
            _record("h", 0, "a", 0.90, 0.90), _record("h", 0, "b", 0.90, 0.92), _record("h", 1, "a", 0.5, 0.5)]
    sd, pairs = rerun_spread(runs, "mean_dice")
    assert pairs == 2  # ("h", 1) was run once: it says nothing about retraining
    assert sd == pytest.approx(np.sqrt((0.04 ** 2 / 2 + 0) / 2))
    assert rerun_spread(runs[:1], "pp_dice")[1] == 0
