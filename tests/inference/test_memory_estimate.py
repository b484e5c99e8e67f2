"""The memory estimate follows the memory model, and a case that cannot fit is refused before any work."""
import numpy as np
import pytest
import torch
from torch import nn

from autoseg.dataset.imageio import Geometry, write_image
from autoseg.errors import UserError
from autoseg.inference import memory_estimate
from autoseg.inference import predictor as predictor_module
from autoseg.inference.folder import predict_folder
from autoseg.inference.memory_estimate import estimate
from autoseg.inference.predictor import Predictor

from tests.inference.test_export import make_plans


def _predictor(k: int, tta: bool = False) -> Predictor:
    plans = make_plans((1.5, 1.5, 1.5), label_values=tuple(range(k)), patch=(16, 16, 16))
    return Predictor(plans, "3d_fullres", [nn.Conv3d(1, k, 1)], device="cpu", tta=tta, precision="fp32")


def test_streaming_needs_far_less_than_the_whole_array():
    shape, spacing = (600, 512, 512), (1.5, 0.8, 0.8)
    one = _predictor(105)
    streamed = estimate([one], shape, spacing)
    whole = estimate([one], shape, spacing, probabilities=True)
    ensemble = estimate([one, one], shape, spacing)
    assert streamed.streamed and not whole.streamed and not ensemble.streamed
    v = 600 * 273 * 273
    assert whole.ram + whole.disk > 105 * v * 2  # the float16 accumulator at least
    assert streamed.ram < 3 << 30 < whole.ram + whole.disk
    assert ensemble.ram + ensemble.disk > 2 * 105 * v * 2


def test_growth_follows_classes_and_volume():
    small, large = _predictor(4), _predictor(64)
    a = estimate([small], (64, 64, 64), (1.5, 1.5, 1.5), probabilities=True)
    b = estimate([large], (64, 64, 64), (1.5, 1.5, 1.5), probabilities=True)
    assert b.ram - a.ram >= 60 * 64 ** 3 * 4  # K x V x 4 float32 accumulator below 1 GiB


def test_a_case_too_large_for_the_machine_is_refused_before_any_work(tmp_path, monkeypatch):
    inp = tmp_path / "in"
    inp.mkdir()
    write_image(np.zeros((40, 48, 48), np.int16), Geometry((1.5, 1.5, 1.5), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3),
                inp / "big.nii.gz")
    p = _predictor(200)
    monkeypatch.setattr(memory_estimate, "physical_memory", lambda: 64 << 20)
    calls = []
    monkeypatch.setattr(predictor_module, "predict_sliding_window", lambda *a, **k: calls.append(a))
    with pytest.raises(UserError) as err:
        predict_folder([p, p], inp, tmp_path / "out", save_probabilities=True)
    message = str(err.value)
    assert "big.nii.gz" in message and "200 classes" in message and "GB of memory" in message
    assert "this machine has 0.1 GB" in message and "ensemble" in message and "--save-probabilities" in message
    assert not calls and not (tmp_path / "out" / "big.nii.gz").exists()
    # what fits is predicted
    monkeypatch.undo()
    torch.manual_seed(0)
    assert predict_folder([_predictor(3)], inp, tmp_path / "out2") == ["big"]
