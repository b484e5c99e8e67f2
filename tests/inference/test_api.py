"""autoseg.predict: arrays, SimpleITK images and paths, by model folder or by dataset."""

import numpy as np
import SimpleITK as sitk

import autoseg
from autoseg.dataset.imageio import read_image
from autoseg.inference import api
from autoseg.inference.predictor import Predictor, predict_case
from autoseg.postprocessing.connected_components import apply_postprocessing
from autoseg.postprocessing.selection import ModelRef, Selected, Selection


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


def test_api_follows_the_selection_and_caches_its_models(setup):
    raw, ws, model = setup
    image, geometry = read_image(raw / "imagesTr" / "case_002.nii.gz")
    post = {"foreground_largest_component": True, "per_class_largest_component": []}
    Selection(Selected("unet__3d_fullres", [ModelRef("unet", "3d_fullres")], post, [0, 1])).save(
        ws.best_configuration_file)
    try:
        kw = dict(spacing=geometry.spacing, dataset="Tiny", workspace=ws.root.parent, tta=False, device="cpu",
                  precision="fp32")
        api._CACHE.clear()
        seg, probs = autoseg.predict(image, return_probabilities=True, **kw)
        assert len(api._CACHE) == 1
        cached = next(iter(api._CACHE.values()))
        assert cached.folds == ["0", "1"]  # the selection's folds
        autoseg.predict(image, **kw)
        assert len(api._CACHE) == 1 and next(iter(api._CACHE.values())) is cached  # loaded once
        # the same case path as everything else, with the selection's postprocessing
        predictor = Predictor.from_model_folder(model, folds=(0, 1), device="cpu", tta=False, precision="fp32")
        expected = predict_case([predictor], image.astype(np.float32), geometry, postprocessing=post, probabilities=True)
        np.testing.assert_array_equal(seg, expected.segmentation)
        np.testing.assert_allclose(probs, expected.probabilities, atol=1e-6)
        raw_seg = autoseg.predict(image, postprocessing=False, **kw)
        np.testing.assert_array_equal(apply_postprocessing(raw_seg, post), seg)
    finally:
        ws.best_configuration_file.unlink()
