"""The ACDC benchmark's island diagnosis (benchmarks/acdc_islands.py) on hand-made label maps."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
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
