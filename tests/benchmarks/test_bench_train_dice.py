"""Tests of the training/prediction benchmarks' own logic (benchmarks/bench_train_*.py, bench_predict.py).

The benchmarks themselves run both tools for minutes; here only the pieces that decide what is
compared are checked, on small inputs, without the nnU-Net environment.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_predict  # noqa: E402
import bench_train_dice  # noqa: E402
import bench_train_throughput as throughput  # noqa: E402
import harness  # noqa: E402

HIPPO_PLANS = REPO / "documentation" / "examples" / "plans_Task04_Hippocampus.json"

# nnU-Net v2's 3d_fullres plan for Task04_Hippocampus (nnUNetPlans.json, architecture part abridged)
NNUNET_PLANS = {"configurations": {"3d_fullres": {
    "batch_size": 7, "patch_size": [40, 56, 40],
    "architecture": {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 4, "features_per_stage": [32, 64, 128, 256],
                        "kernel_sizes": [[3, 3, 3]] * 4, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3,
                        "n_conv_per_stage": [2, 2, 2, 2], "n_conv_per_stage_decoder": [2, 2, 2]}}}}}


def test_topology_copied_from_nnunet_plans():
    topo = throughput.nnunet_topology(NNUNET_PLANS)
    assert topo == {"patch_size": [40, 56, 40], "batch_size": 7,
                    "network": {"features_per_stage": [32, 64, 128, 256], "kernel_sizes": [[3, 3, 3]] * 4,
                                "strides": [[1, 1, 1]] + [[2, 2, 2]] * 3, "n_conv_per_stage": 2}}
    autoseg_plans = json.loads(HIPPO_PLANS.read_text())
    new = throughput.apply_topology(autoseg_plans, topo)
    cfg = new["configurations"]["3d_fullres"]
    assert cfg["patch_size"] == [40, 56, 40] and cfg["batch_size"] == 7
    assert cfg["network"]["features_per_stage"] == [32, 64, 128, 256]
    # everything else (spacing, data identifier, other configurations) is autoseg's, and the input is untouched
    assert cfg["data_identifier"] == autoseg_plans["configurations"]["3d_fullres"]["data_identifier"]
    assert new["configurations"]["2d"] == autoseg_plans["configurations"]["2d"]
    assert autoseg_plans["configurations"]["3d_fullres"]["batch_size"] != 7


def test_topology_refuses_what_autoseg_cannot_mirror():
    bad = json.loads(json.dumps(NNUNET_PLANS))
    bad["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_conv_per_stage"] = [1, 2, 2, 2]
    with pytest.raises(harness.BenchmarkError, match="convolutions per stage"):
        throughput.nnunet_topology(bad)
    bad = json.loads(json.dumps(NNUNET_PLANS))
    bad["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "x.ResidualEncoderUNet"
    with pytest.raises(harness.BenchmarkError, match="PlainConvUNet"):
        throughput.nnunet_topology(bad)


def test_flop_count_matches_planner_estimate(tmp_path):
    """torch's counter on the real network agrees with the planner's analytic count (independent code)."""
    from autoseg.planners.plans import Plans
    from autoseg.planners.topology import training_flops

    for plans_dict in (json.loads(HIPPO_PLANS.read_text()),
                       throughput.apply_topology(json.loads(HIPPO_PLANS.read_text()),
                                                 throughput.nnunet_topology(NNUNET_PLANS))):
        f = tmp_path / "plans.json"
        f.write_text(json.dumps(plans_dict))
        counted = throughput.training_flops(f)
        plans = Plans.load(f)
        cfg = plans.configuration("3d_fullres")
        analytic = training_flops(cfg.network, cfg.patch_size, cfg.batch_size, len(plans.channel_names),
                                  plans.num_classes)
        assert counted == pytest.approx(analytic, rel=0.05)
    assert counted > 5e11  # nnU-Net's 32-256 network at batch 7 is ~7x autoseg's CPU plan


def test_matmul_rate_is_measured():
    rates = throughput.matmul_rate(size=256, repeats=2)
    assert rates["fp32"] > 1e8 and rates["bf16"] > 1e7 and rates["threads"] >= 1


def _write_label(path: Path, arr: np.ndarray) -> None:
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(path))


def test_score_predictions_uses_only_the_given_cases(tmp_path):
    ref, pred = tmp_path / "labelsTr", tmp_path / "validation"
    ref.mkdir(), pred.mkdir()
    a = np.zeros((8, 8, 8), np.uint8)
    a[2:6, 2:6, 2:6] = 1
    b = a.copy()
    b[2:6, 2:6, 2:4] = 0  # half of the object: Dice 2*32/(64+32) = 2/3
    for cid in ("c1", "c2", "c3"):
        _write_label(ref / f"{cid}.nii.gz", a)
    _write_label(pred / "c1.nii.gz", a)
    _write_label(pred / "c2.nii.gz", b)
    _write_label(pred / "c3.nii.gz", np.zeros_like(a))  # not asked for: must not count
    (pred / "c1_probabilities.npy").write_bytes(b"not a label map")  # what training leaves next to them
    s = harness.score_predictions(ref, pred, ["c1", "c2"], tmp_path / "work")
    assert s["num_cases"] == 2 and s["missing_predictions"] == []
    assert s["mean_foreground_dice"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(harness.BenchmarkError, match="no reference"):
        harness.score_predictions(ref, pred, ["c1", "c9"], tmp_path / "work2")


def test_nnunet_splits_are_autosegs(tmp_path):
    splits = [{"train": ["a", "b"], "val": ["c"]}, {"train": ["a", "c"], "val": ["b"]}]
    target = harness.write_nnunet_splits(splits, tmp_path)
    assert target.name == "splits_final.json"
    assert json.loads(target.read_text()) == splits


def test_autoseg_splits_skip_non_case_files(tmp_path):
    """preprocessing_settings.json sits next to the cases and must not become a case."""
    ws = tmp_path / "ws" / "DS"
    pre = ws / "preprocessed" / "3d_fullres_x"
    pre.mkdir(parents=True)
    for i in range(6):
        np.save(pre / f"case_{i}.npy", np.zeros((1, 2, 2, 2), np.float32))
        (pre / f"case_{i}.json").write_text("{}")
    (pre / "preprocessing_settings.json").write_text("{}")
    (ws / "plans.json").write_text(json.dumps({"configurations": {"3d_fullres": {"data_identifier": "3d_fullres_x"}}}))
    splits = harness.autoseg_splits(ws)
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == [f"case_{i}" for i in range(6)]
    assert harness.autoseg_splits(ws) == splits  # written once, read back


def test_link_cases_as_channel_files(tmp_path):
    src = tmp_path / "imagesTr"
    src.mkdir()
    (src / "x.nii.gz").write_bytes(b"1")
    missing = harness.link_cases(src, ["x", "y"], tmp_path / "in", suffix="_0000")
    assert missing == ["y"]
    assert (tmp_path / "in" / "x_0000.nii.gz").resolve() == (src / "x.nii.gz").resolve()


def test_cli_defaults():
    a = bench_train_dice.parse_args([])
    assert a.minutes == 20 and a.fold == 0 and a.tools == ["nnunet", "autoseg"]
    assert a.data == harness.DEFAULT_DATA_ROOT / "Task04_Hippocampus"
    t = throughput.parse_args(["--iterations", "3", "--tools", "autoseg"])
    assert t.iterations == 3 and t.tools == ["autoseg"]
    p = bench_predict.parse_args(["--cases", "2"])
    assert p.cases == 2 and not p.no_fp32_check


def test_missing_dataset_is_reported(tmp_path, capsys):
    for main in (bench_train_dice.main, throughput.main, bench_predict.main):
        assert main(["--data", str(tmp_path)]) == 2
        assert "dataset.json not found" in capsys.readouterr().err
