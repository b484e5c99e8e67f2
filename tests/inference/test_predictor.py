"""The Predictor: folds averaged, test-time flips, the sliding window it slides, the CLI."""
import json
import shutil

import numpy as np
import torch

from autoseg.cli import main
from autoseg.dataset.imageio import read_image, read_label
from autoseg.inference.predictor import Predictor




def test_folds_are_averaged(setup):
    raw, ws, model = setup
    image, geometry = read_image(raw / "imagesTr" / "case_000.nii.gz")
    p0 = Predictor.from_model_folder(model, folds=(0,), device="cpu", tta=False, precision="fp32").predict_probabilities(image, geometry)
    p1 = Predictor.from_model_folder(model, folds=(1,), device="cpu", tta=False, precision="fp32").predict_probabilities(image, geometry)
    both = Predictor.from_model_folder(model, folds=(0, 1), device="cpu", tta=False, precision="fp32").predict_probabilities(image, geometry)
    assert not np.allclose(p0, p1, atol=1e-3)
    # atol: probabilities wait for export in float16 (memory bound), ~5e-4 rounding
    np.testing.assert_allclose(both, (p0 + p1) / 2, atol=1e-3)


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


def test_predict_refuses_a_model_whose_checkpoint_carries_code(setup, tmp_path, capsys):
    from tests.test_checkpoint import _Payload

    raw, ws, model = setup
    results = tmp_path / "ws" / "Tiny" / "results"
    shutil.copytree(model, results / model.name)
    shutil.copy(ws.plans_file, tmp_path / "ws" / "Tiny" / "plans.json")
    planted = results / model.name / "fold_0" / "checkpoint_final.pt"
    state = torch.load(planted, weights_only=True)
    marker = tmp_path / "payload_ran"
    torch.save({**state, "extra": _Payload(marker)}, planted)
    assert main(["predict", "-i", str(raw / "imagesTr"), "-o", str(tmp_path / "out"), "-d", "Tiny", "-c", "3d_fullres",
                 "-f", "0", "--no-tta", "--workspace", str(tmp_path / "ws")]) == 2
    assert "refused: the file holds objects other than tensors" in capsys.readouterr().err
    assert not marker.exists() and not list((tmp_path / "out").glob("*.nii.gz"))
