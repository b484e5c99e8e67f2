"""ONNX export and the onnxruntime engine: the same probabilities as torch (fp32, 1e-3) for 2D and
3D models, at sizes other than the traced one, through the sliding window with TTA and fold averaging."""
import dataclasses
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from autoseg import cli  # noqa: E402
from autoseg.cli import main  # noqa: E402
from autoseg.dataset.imageio import read_image  # noqa: E402
from autoseg.inference.onnx_engine import (OnnxEngineError, OnnxFold, OnnxNetwork, export_onnx,  # noqa: E402
                                           onnx_predictor, onnx_predictor_from_model_folder, stale_folds)
from autoseg.inference.predictor import Predictor, predict_case  # noqa: E402

from tests.inference.models import make_model, tiny_plans  # noqa: E402

TOL = 1e-3
FAST = dict(exporter="torchscript", progress=False)  # the tracer: a fraction of a second per fold


def _torch(model, folds, tta=True):
    return Predictor.from_model_folder(model, folds=folds, device="cpu", tta=tta, precision="fp32")


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    """dim -> (model folder, its onnx/ export of folds 0 and 1, their records); exported once."""
    model_2d = make_model(tmp_path_factory.mktemp("onnx2d"), tiny_plans(dim=2), "2d", folds=(0, 1))
    out = {}
    for dim, model in ((2, model_2d), (3, setup[2])):
        out[dim] = model, model / "onnx", export_onnx(model, folds=[0, 1], **FAST)
    return out


@pytest.mark.parametrize("dim", [2, 3])
def test_network_matches_torch_at_sizes_other_than_the_traced_one(exported, dim):
    model, folder, (record, _) = exported[dim]
    assert record.dynamic_spatial and record.traced_shape == [8] * dim and record.max_abs_diff < TOL
    assert OnnxFold.load(folder / "fold_0.json") == record and (folder / "plans.json").is_file()
    net = _torch(model, [0]).networks[0]
    onnx_net = OnnxNetwork(folder / "fold_0.onnx", record)
    for shape in ([6, 10, 14], [16, 4, 12]):
        x = torch.randn([3, 1] + shape[-dim:])  # batch and every spatial size unlike the trace's
        with torch.inference_mode():
            np.testing.assert_allclose(torch.softmax(onnx_net(x), 1), torch.softmax(net(x), 1), atol=TOL)


@pytest.mark.parametrize("dim", [2, 3])
def test_sliding_window_with_tta_and_folds_matches_torch(exported, dim):
    model, folder, _ = exported[dim]
    data = np.random.default_rng(0).standard_normal((1, 7, 13, 11) if dim == 3 else (1, 3, 13, 11)).astype(np.float32)
    onnx = onnx_predictor(folder, folds=[0, 1], device="cpu", tta=True)
    assert [type(n).__name__ for n in onnx.networks] == ["OnnxNetwork"] * 2
    expected = _torch(model, [0, 1]).predict_preprocessed(data)
    got = onnx.predict_preprocessed(data)
    assert got.shape == expected.shape == (3,) + data.shape[1:]
    np.testing.assert_allclose(got, expected, atol=TOL)


def test_predictor_from_model_folder_uses_the_export_and_predicts_the_same_case(setup, exported):
    raw, ws, model = setup
    image, geometry = read_image(raw / "imagesTr" / "case_001.nii.gz")
    stamp = (model / "onnx" / "fold_1.onnx").stat().st_mtime_ns
    onnx = onnx_predictor_from_model_folder(model, folds=(0, 1), device="cpu", tta=False, **FAST)
    assert onnx.model_folder == model and stale_folds(model, (0, 1)) == []
    assert (model / "onnx" / "fold_1.onnx").stat().st_mtime_ns == stamp  # up to date: not exported again
    a = predict_case([_torch(model, (0, 1), tta=False)], image, geometry, probabilities=True)
    b = predict_case([onnx], image, geometry, probabilities=True)
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=TOL)
    assert (a.segmentation != b.segmentation).mean() < 1e-3  # only exact ties could flip


def test_a_retrained_fold_is_exported_again(tmp_path):
    plans = tiny_plans(dim=2)
    model = make_model(tmp_path, plans, "2d", folds=(0,))
    export_onnx(model, folds=[0], **FAST)
    assert stale_folds(model, [0]) == [] and stale_folds(model, [0], checkpoint="best") == ["0"]
    make_model(tmp_path, plans, "2d", folds=(0,), seed=7)  # new weights in the same checkpoint file
    assert stale_folds(model, [0]) == ["0"]
    data = np.random.default_rng(1).standard_normal((1, 2, 9, 9)).astype(np.float32)
    onnx = onnx_predictor_from_model_folder(model, folds=[0], device="cpu", tta=False, **FAST)
    np.testing.assert_allclose(onnx.predict_preprocessed(data), _torch(model, [0], tta=False).predict_preprocessed(data),
                               atol=TOL)


def test_context_slices_and_mirror_axes_carry_over(tmp_path):
    plans = tiny_plans(dim=2)
    plans.configurations["2d"] = dataclasses.replace(plans.configurations["2d"], architecture="unet_2p5d")
    model = make_model(tmp_path, plans, "2d", folds=(0,))
    f = model / "fold_0" / "checkpoint_final.pt"
    state = torch.load(f, weights_only=True)
    state["mirror_axes"] = [1]
    torch.save(state, f)
    (record,) = export_onnx(model, tmp_path / "out", folds=[0], **FAST)
    assert record.context_slices == 3 and record.in_channels == 3 and record.mirror_axes == [1]
    onnx = onnx_predictor(tmp_path / "out", folds=[0], device="cpu")
    assert onnx.mirror_axes == [1]
    data = np.random.default_rng(2).standard_normal((1, 5, 12, 10)).astype(np.float32)
    np.testing.assert_allclose(onnx.predict_preprocessed(data), _torch(model, [0]).predict_preprocessed(data), atol=TOL)


def test_dynamo_exporter(exported, tmp_path):
    pytest.importorskip("onnxscript")
    model_2d = exported[2][0]
    (record,) = export_onnx(model_2d, tmp_path, folds=[0], exporter="dynamo", progress=False)
    assert record.exporter == "dynamo" and record.max_abs_diff < TOL
    data = np.random.default_rng(3).standard_normal((1, 2, 11, 13)).astype(np.float32)
    np.testing.assert_allclose(onnx_predictor(tmp_path, [0], device="cpu").predict_preprocessed(data),
                               _torch(model_2d, [0]).predict_preprocessed(data), atol=TOL)


def test_a_fold_that_fails_the_check_is_not_exported_and_auto_falls_back(exported, tmp_path, monkeypatch):
    import autoseg.inference.onnx_engine as engine

    model_2d = exported[2][0]
    with monkeypatch.context() as m:
        m.setattr(engine, "VERIFY_ATOL", -1.0)  # any difference at all is too much
        with pytest.raises(OnnxEngineError, match="fold 0: architecture 'unet' does not export.*logits differ"):
            export_onnx(model_2d, tmp_path, folds=[0], **FAST)
    assert not (tmp_path / "fold_0.json").exists() and not (tmp_path / "fold_0.onnx").exists()
    real = engine._export_file

    def dynamo_fails(network, example, path, opset, exporter, *a):
        if exporter == "dynamo":
            raise RuntimeError("cannot translate this operation")
        return real(network, example, path, opset, exporter, *a)

    monkeypatch.setattr(engine, "_exporters", lambda requested, opset: ["dynamo", "torchscript"])
    monkeypatch.setattr(engine, "_export_file", dynamo_fails)
    (record,) = export_onnx(model_2d, tmp_path, folds=[0], exporter="auto", progress=False)
    assert record.exporter == "torchscript" and OnnxFold.load(tmp_path / "fold_0.json").exporter == "torchscript"


def test_clear_errors(exported, tmp_path):
    model_2d, folder, _ = exported[2]
    with pytest.raises(OnnxEngineError, match="fp32"):
        onnx_predictor_from_model_folder(model_2d, folds=[0], precision="bf16")
    with pytest.raises(OnnxEngineError, match="not an ONNX export folder"):
        onnx_predictor(tmp_path, folds=[0])
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    (tmp_path / "fold_1.json").unlink()
    with pytest.raises(OnnxEngineError, match="no ONNX export of fold.* 1; exported: 0"):
        onnx_predictor(tmp_path, folds=[0, 1])
    with pytest.raises(OnnxEngineError, match="exporter 'jit'"):
        export_onnx(model_2d, tmp_path, folds=[0], exporter="jit")
    (tmp_path / "fold_0.onnx").write_bytes(b"not onnx")
    with pytest.raises(OnnxEngineError, match="fold_0.onnx: onnxruntime cannot load it"):
        onnx_predictor(tmp_path, folds=[0], device="cpu")


def test_cli_export_onnx(setup, monkeypatch, tmp_path, capsys):
    raw, ws, model = setup
    monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + [c for c in ["export_onnx"]
                                                                       if c not in cli.COMMAND_MODULES])
    assert main(["export-onnx", "Tiny", "-c", "3d_fullres", "-f", "0", "--exporter", "torchscript", "-o",
                 str(tmp_path), "--workspace", str(ws.root.parent)]) == 0
    assert "fold 0" in capsys.readouterr().out
    assert (tmp_path / "unet__3d_fullres" / "fold_0.onnx").is_file()
    assert main(["export-onnx", "Tiny", "-c", "3d_fullres", "-f", "4", "--workspace", str(ws.root.parent)]) == 2
    assert "checkpoint(s) missing" in capsys.readouterr().err


def test_cli_predict_engine_onnxruntime(setup, exported, monkeypatch, tmp_path):
    from tests.inference.test_model_archive import predict_accepts

    if not predict_accepts("--engine"):
        pytest.skip("autoseg predict has no --engine option in this checkout")
    raw, ws, model = setup
    common = ["-i", str(raw / "imagesTr"), "-d", "Tiny", "-c", "3d_fullres", "-f", "0", "1", "--no-tta",
              "--device", "cpu", "--workspace", str(ws.root.parent)]
    assert main(["predict", "-o", str(tmp_path / "torch"), "--precision", "fp32"] + common) == 0
    assert main(["predict", "-o", str(tmp_path / "onnx"), "--engine", "onnxruntime"] + common) == 0
    cases = sorted(p.name for p in (tmp_path / "torch").glob("*.nii.gz"))
    assert cases and cases == sorted(p.name for p in (tmp_path / "onnx").glob("*.nii.gz"))
    for name in cases:
        a, b = read_image(tmp_path / "torch" / name)[0], read_image(tmp_path / "onnx" / name)[0]
        assert (a != b).mean() < 1e-3  # only exact ties could flip
