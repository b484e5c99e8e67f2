import csv
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import autoseg
from autoseg.cli import main
from autoseg.errors import UserError
from autoseg.dataset.imageio import read_image, read_label, write_image
from autoseg.inference.cases import find_input_cases
from autoseg.inference.folder import predict_folder
from autoseg.inference.predictor import Predictor
from autoseg.networks import build_network
from autoseg.planners.plans import ChannelNormalization, ConfigurationPlan, NetworkTopology, Plans
from autoseg.synthetic import make_dataset
from autoseg.workspace import DatasetWorkspace


def tiny_plans(dim=3, channels=("MR",), label_values=(0, 1, 2)) -> Plans:
    topo = NetworkTopology([4, 8], [[3] * dim] * 2, [[1] * dim, [2] * dim])
    name = "3d_fullres" if dim == 3 else "2d"
    cfg = ConfigurationPlan(name=name, dim=dim, data_identifier=f"p_{name}", spacing=[1.0, 1.0, 1.0][-dim:],
                            median_shape=[10, 12, 12], patch_size=[8] * dim, batch_size=2, network=topo)
    norm = [ChannelNormalization("rgb" if len(channels) == 3 else "zscore") for _ in channels]
    return Plans(1, "Tiny", "default", "cpu", 8, list(channels), list(label_values),
                 [f"label{v}" for v in label_values], norm, {name: cfg}, is_2d_dataset=dim == 2)


def make_model(root, plans: Plans, configuration: str, folds=(0,), trainer="unet", seed=0):
    """A results folder laid out as training leaves it, with random weights."""
    folder = root / f"{trainer}__{configuration}"
    plans.save(folder / "plans.json")
    for f in folds:
        torch.manual_seed(seed + int(f))
        net = build_network(plans, plans.configuration(configuration))
        (folder / f"fold_{f}").mkdir(parents=True, exist_ok=True)
        torch.save({"format": 1, "trainer": trainer, "architecture": "unet", "configuration": configuration,
                    "fold": str(f), "network": net.state_dict()}, folder / f"fold_{f}" / "checkpoint_final.pt")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    raw = make_dataset(root / "raw", num_cases=3, shape=(10, 12, 12), spacing=(2.0, 1.0, 1.0), seed=1)
    ws = DatasetWorkspace(root / "ws" / "Tiny")
    plans = tiny_plans()
    plans.save(ws.plans_file)
    model = make_model(ws.root / "results", plans, "3d_fullres", folds=(0, 1))
    return raw, ws, model


def test_find_input_cases_both_layouts(tmp_path):
    for n in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / "single").mkdir(exist_ok=True)
        (tmp_path / "single" / n).touch()
    cases = find_input_cases(tmp_path / "single", 1)
    assert [(c.case_id, c.ending) for c in cases] == [("a", ".nii.gz"), ("b", ".nii.gz")]
    (tmp_path / "nn").mkdir()
    for n in ("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", ".partial-x-c_0000.nii.gz"):
        (tmp_path / "nn" / n).touch()
    cases = find_input_cases(tmp_path / "nn", 2)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [f.name for f in cases[1].files] == ["b_0000.nii.gz", "b_0001.nii.gz"]
    (tmp_path / "nn" / "b_0001.nii.gz").unlink()
    with pytest.raises(UserError, match="b_0001"):
        find_input_cases(tmp_path / "nn", 2)


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


def test_folds_are_averaged(setup):
    raw, ws, model = setup
    image, geometry = read_image(raw / "imagesTr" / "case_000.nii.gz")
    p0 = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=False, precision="fp32").predict_probabilities(image, geometry)
    p1 = Predictor.from_model_folder(model, folds=(1,), device="cpu", tta=False, precision="fp32").predict_probabilities(image, geometry)
    both = Predictor.from_model_folder(model, folds=(0, 1), device="cpu", tta=False, precision="fp32").predict_probabilities(image, geometry)
    assert not np.allclose(p0, p1, atol=1e-3)
    # atol: probabilities wait for export in float16 (memory bound), ~5e-4 rounding
    np.testing.assert_allclose(both, (p0 + p1) / 2, atol=1e-3)


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


def test_cli_predict_with_configuration_and_best_configuration(setup, tmp_path, capsys):
    raw, ws, model = setup
    workspace = str(ws.root.parent)
    out = tmp_path / "cli"
    assert main(["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "Tiny", "-c", "3d_fullres",
                 "-f", "0", "--no-tta", "--workspace", workspace]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case_000.nii.gz", "case_001.nii.gz", "case_002.nii.gz"]
    # without -c and without find-best-configuration's file: a clear error
    assert main(["predict", "-i", str(raw / "imagesTr"), "-o", str(out), "-d", "Tiny", "--workspace", workspace]) == 2
    assert "find-best-configuration" in capsys.readouterr().err
    best = {"selected": {"name": "unet__3d_fullres", "configurations": [{"trainer": "unet", "configuration": "3d_fullres"}],
                         "postprocessing": {"foreground_largest_component": True, "per_class_largest_component": []},
                         "folds": [0, 1]}}
    ws.best_configuration_file.write_text(json.dumps(best))
    try:
        out2 = tmp_path / "best"
        assert main(["predict", "-i", str(raw / "imagesTr"), "-o", str(out2), "-d", "Tiny", "--no-tta",
                     "--workspace", workspace]) == 0
        from scipy import ndimage

        for f in out2.glob("*.nii.gz"):
            seg = read_label(f)[0]
            assert ndimage.label(seg > 0, structure=np.ones((3, 3, 3)))[1] <= 1
    finally:
        ws.best_configuration_file.unlink()


def test_api_numpy_sitk_and_path(setup):
    raw, ws, model = setup
    path = raw / "imagesTr" / "case_001.nii.gz"
    image, geometry = read_image(path)
    kw = dict(model_folder=model, folds=(0,), tta=False, device="cpu", precision="fp32")
    seg_np = autoseg.predict(image[0], spacing=geometry.spacing, **kw)
    assert isinstance(seg_np, np.ndarray) and seg_np.shape == image.shape[1:]
    img = sitk.ReadImage(str(path))
    seg_img = autoseg.predict(img, **kw)
    assert isinstance(seg_img, sitk.Image)
    assert (seg_img.GetSize(), seg_img.GetSpacing(), seg_img.GetOrigin(), seg_img.GetDirection()) == \
           (img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg_img), seg_np)
    np.testing.assert_array_equal(autoseg.predict(str(path), **kw), seg_np)
    seg_ds = autoseg.predict(image, spacing=geometry.spacing, dataset="Tiny", configuration="3d_fullres",
                             workspace=ws.root.parent, folds=[0], tta=False, device="cpu", precision="fp32")
    np.testing.assert_array_equal(seg_ds, seg_np)


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


def test_predictor_flips_only_the_axes_the_checkpoints_were_trained_with(setup, tmp_path):
    raw, ws, model = setup
    folder = tmp_path / "unet__3d_fullres"
    shutil.copytree(model, folder)
    assert Predictor.from_model_folder(folder, folds=(0,), device="cpu").mirror_axes is None  # older checkpoints: every axis
    for fold, axes in ((0, [0, 2]), (1, [2])):
        f = folder / f"fold_{fold}" / "checkpoint_final.pt"
        state = torch.load(f, weights_only=True)
        state["mirror_axes"] = axes
        torch.save(state, f)
    assert Predictor.from_model_folder(folder, folds=(0,), device="cpu").mirror_axes == [0, 2]
    assert Predictor.from_model_folder(folder, folds=(0, 1), device="cpu").mirror_axes == [2]  # what every fold saw


def test_predictor_slides_the_plans_inference_patch(setup, tmp_path, monkeypatch):
    import autoseg.inference.predictor as predictor_module

    raw, ws, model = setup
    predictor = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=False)
    seen = []
    real = predictor_module.predict_sliding_window
    monkeypatch.setattr(predictor_module, "predict_sliding_window",
                        lambda nets, data, patch, *a, **k: seen.append(list(patch)) or real(nets, data, patch, *a, **k))
    data = np.zeros((1, *predictor.config.patch_size), dtype=np.float32)
    predictor.predict_preprocessed(data)
    predictor.config.inference_patch_size = [2 * predictor.config.patch_size[0]] + predictor.config.patch_size[1:]
    predictor.predict_preprocessed(data)
    assert seen == [predictor.config.patch_size, predictor.config.inference_patch_size]
