"""Folder prediction: outputs, resuming, input errors, 2D images, ensembles."""
import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.errors import UserError
from autoseg.dataset.imageio import read_image, read_label, write_image
from autoseg.inference.folder import predict_folder
from autoseg.inference.predictor import Predictor


from tests.inference.models import make_model, tiny_plans


def test_predict_folder_writes_exact_geometry_and_volumes(setup, tmp_path):
    raw, ws, model = setup
    predictor = Predictor.from_model_folder(model, folds=(0, 1), device="cpu", tta=False, precision="fp32")
    out = tmp_path / "out"
    done = predict_folder([predictor], raw / "imagesTr", out, save_probabilities=True, uncertainty=True)
    assert done == ["case_000", "case_001", "case_002"]
    rows = {r["case_id"]: r for r in csv.DictReader(open(out / "volumes.csv"))}
    for cid in done:
        src, dst = sitk.ReadImage(str(raw / "imagesTr" / f"{cid}.nii.gz")), sitk.ReadImage(str(out / f"{cid}.nii.gz"))
        assert (src.GetSize(), src.GetSpacing(), src.GetOrigin(), src.GetDirection()) == \
               (dst.GetSize(), dst.GetSpacing(), dst.GetOrigin(), dst.GetDirection())
        seg = sitk.GetArrayFromImage(dst)
        assert set(np.unique(seg)) <= {0, 1, 2}
        probs = np.load(out / f"{cid}_probabilities.npy")
        assert probs.dtype == np.float16 and probs.shape == (3,) + seg.shape
        np.testing.assert_array_equal(np.argmax(probs.astype(np.float32), 0)[probs.max(0) > 0.6],
                                      seg[probs.max(0) > 0.6])
        entropy = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{cid}_entropy.nii.gz")))
        assert entropy.dtype == np.float32 and entropy.shape == seg.shape and entropy.max() <= np.log(3) + 1e-5
        # volume: voxel count x 2 mm^3 / 1000
        for v in (1, 2):
            assert float(rows[cid][f"label{v}_{v}_ml"]) == pytest.approx(np.sum(seg == v) * 2.0 / 1000, rel=1e-5)
    assert json.loads((out / "probabilities.json").read_text())["label_values"] == [0, 1, 2]
    assert not list(out.glob(".partial-*"))


def test_predict_folder_skips_existing_and_overwrite_redoes(setup, tmp_path):
    raw, ws, model = setup
    predictor = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=False, precision="fp32")
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(2):  # nnU-Net-style channel files work too
        shutil.copy(raw / "imagesTr" / f"case_00{i}.nii.gz", inp / f"case_00{i}_0000.nii.gz")
    out = tmp_path / "out"
    assert predict_folder([predictor], inp, out) == ["case_000", "case_001"]
    previous, g = read_label(out / "case_000.nii.gz")
    planted = ((previous.astype(np.int64) + 1) % 3).astype(np.uint8)  # differs from the prediction everywhere
    write_image(planted, g, out / "case_000.nii.gz")
    assert predict_folder([predictor], inp, out) == []
    np.testing.assert_array_equal(read_label(out / "case_000.nii.gz")[0], planted)  # kept
    vols = {r["case_id"]: r for r in csv.DictReader(open(out / "volumes.csv"))}
    assert float(vols["case_000"]["label1_1_ml"]) == pytest.approx(np.sum(planted == 1) * 2.0 / 1000)
    assert predict_folder([predictor], inp, out, overwrite=True) == ["case_000", "case_001"]
    np.testing.assert_array_equal(read_label(out / "case_000.nii.gz")[0], previous)


def test_input_errors_name_the_file(setup, tmp_path):
    raw, ws, model = setup
    predictor = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=False, precision="fp32")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="broken.nii.gz"):
        predict_folder([predictor], bad, tmp_path / "o1")
    two = tmp_path / "two"
    two.mkdir()
    img = sitk.JoinSeries([sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))] * 2)  # 4D: 2 channels
    sitk.WriteImage(img, str(two / "multi.nii.gz"))
    with pytest.raises(UserError, match="multi.nii.gz.*2 channel"):
        predict_folder([predictor], two, tmp_path / "o2")
    with pytest.raises(UserError, match="fold_3"):
        Predictor.from_model_folder(model, folds=(3,), device="cpu")


def test_2d_png_folder(tmp_path):
    plans = tiny_plans(dim=2, channels=("R", "G", "B"), label_values=(0, 255))
    model = make_model(tmp_path / "results", plans, "2d")
    inp = tmp_path / "png"
    inp.mkdir()
    rng = np.random.default_rng(0)
    for name in ("eye1", "eye2"):
        rgb = sitk.GetImageFromArray(rng.integers(0, 255, (13, 17, 3), dtype=np.uint8), isVector=True)
        rgb.SetSpacing((0.5, 0.25))
        sitk.WriteImage(rgb, str(inp / f"{name}.png"))
    predictor = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=True, precision="fp32")
    out = tmp_path / "out"
    assert predict_folder([predictor], inp, out, uncertainty=True) == ["eye1", "eye2"]
    for name in ("eye1", "eye2"):
        src, dst = sitk.ReadImage(str(inp / f"{name}.png")), sitk.ReadImage(str(out / f"{name}.png"))
        assert dst.GetDimension() == 2
        assert (src.GetSize(), src.GetSpacing(), src.GetOrigin(), src.GetDirection()) == \
               (dst.GetSize(), dst.GetSpacing(), dst.GetOrigin(), dst.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(dst))) <= {0, 255}
        assert sitk.ReadImage(str(out / f"{name}_entropy.tif")).GetPixelID() == sitk.sitkFloat32


def test_ensemble_averages_configurations_in_original_grid(setup, tmp_path):
    raw, ws, model = setup
    other = make_model(tmp_path / "results", tiny_plans(), "3d_fullres", folds=(0,), trainer="mytrainer", seed=7)
    pa = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=False, precision="fp32")
    pb = Predictor.from_model_folder(other, folds=(0,), device="cpu", tta=False, precision="fp32")
    image, geometry = read_image(raw / "imagesTr" / "case_002.nii.gz")
    expect = (pa.predict_probabilities(image, geometry) + pb.predict_probabilities(image, geometry)) / 2
    out = tmp_path / "ens"

    predict_folder([pa, pb], raw / "imagesTr", out, save_probabilities=True)
    got = np.load(out / "case_002_probabilities.npy").astype(np.float32)
    np.testing.assert_allclose(got, expect, atol=2e-3)
