"""benchmarks/bench_atlas_istn.py: per-case scoring, the empty-prediction rule, resumability checks."""
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_atlas_istn", Path(__file__).resolve().parents[2] / "benchmarks" / "bench_atlas_istn.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from corruption import corrupt  # noqa: E402
from topology import component_counts, topology_plausible  # noqa: E402


def _two_blobs():
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    ref[7:10, 7:10, 7:10] = 2
    return ref


def test_empty_class_is_dice_zero_and_left_out_of_distances():
    ref = _two_blobs()
    pred = ref.copy()
    pred[pred == 2] = 0  # class 2 missed entirely
    rec = bench.case_record(ref, pred, (1.0, 1.0, 1.0), [0, 1, 2])
    assert rec["empty_classes"] == [2] and rec["spurious_classes"] == []
    assert rec["dice"] == 0.5  # (1 + 0) / 2: the miss counts in the Dice mean
    assert rec["hd95"] == 0.0 and rec["assd"] == 0.0  # only class 1, perfect; not the image diagonal
    assert rec["plausible"] is False  # a missing class is implausible


def test_all_classes_empty_gives_no_distance_and_finite_means():
    ref = _two_blobs()
    recs = [dict(bench.case_record(ref, np.zeros_like(ref), (1.0, 1.0, 1.0), [0, 1, 2]), method="unet",
                 condition="clean"),
            dict(bench.case_record(ref, ref, (1.0, 1.0, 1.0), [0, 1, 2]), method="unet", condition="clean")]
    assert recs[0]["hd95"] is None and recs[0]["assd"] is None and recs[0]["dice"] == 0.0
    t = bench.summarise(recs)["unet/clean"]
    assert t["n"] == 2 and t["n_empty"] == 1 and t["n_no_distance"] == 1
    assert t["dice"] == 0.5 and t["hd95"] == 0.0 and math.isfinite(t["assd"])
    assert bench.summarise(recs)["refined/corrupted"]["dice"] is None  # no cases: no number, no NaN
    assert any("| U-Net | clean | 2 | 0.500 |" in line for line in bench.markdown_table(bench.summarise(recs)))


def test_stale_reason(tmp_path):
    ckpt = tmp_path / "checkpoint_final.pt"
    ckpt.write_bytes(b"x")
    files = [tmp_path / "a.nii.gz", tmp_path / "a_itn.nii.gz"]
    assert bench.stale_reason(files, ckpt, None) == ""  # missing: predict (no overwrite needed)
    for f in files:
        f.write_bytes(b"x")
        os.utime(f, (ckpt.stat().st_mtime + 10,) * 2)
    assert bench.stale_reason(files, ckpt, None) is None
    report = tmp_path / "atlas_istn.json"
    report.write_text('{"cases": {"a": {"refine_iterations": 5}}}')
    assert bench.stale_reason(files, ckpt, (report, 5, ["a"])) is None
    assert "refine 50" in bench.stale_reason(files, ckpt, (report, 50, ["a"]))
    os.utime(ckpt, (files[0].stat().st_mtime + 10,) * 2)  # retrained after predicting
    assert "older than" in bench.stale_reason(files, ckpt, None)


def test_topology_check():
    seg = np.zeros((10, 10, 10), np.uint8)
    seg[2:5, 2:5, 2:5] = 1
    seg[2:5, 5:8, 2:5] = 2
    assert topology_plausible(seg, [0, 1, 2])
    seg2 = seg.copy()
    seg2[8, 8, 8] = 1  # an island
    assert not topology_plausible(seg2, [0, 1, 2]) and component_counts(seg2, [0, 1, 2]) == {1: 2, 2: 1}
    assert not topology_plausible(np.where(seg == 2, 0, seg), [0, 1, 2])  # a missing class
    diag = np.zeros((4, 4, 4), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = 1
    assert topology_plausible(diag, [0, 1]) and not topology_plausible(diag, [0, 1], connectivity=1)


def test_corruption_is_seeded():
    x = np.random.default_rng(0).random((12, 16, 16)).astype(np.float32)
    a, b, c = corrupt(x, 7), corrupt(x, 7), corrupt(x, 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.shape == x.shape and a.dtype == np.float32
    missing = corrupt(x, 7, kinds=("missing_slices",))
    flat = [z for z in range(12) if np.all(missing[z] == x.min())]
    assert len(flat) == 2 and np.array_equal(np.delete(missing, flat, 0), np.delete(x, flat, 0))
    assert np.array_equal(corrupt(x[None], 7), a[None])
    with pytest.raises(ValueError):
        corrupt(x, 0, kinds=("nope",))
