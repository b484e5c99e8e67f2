"""Largest-component postprocessing, probability ensembling and their commands."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autoseg.atomic import write_json
from autoseg.cli import main
from autoseg.dataset.imageio import Geometry, read_label, write_image
from autoseg.postprocessing.connected_components import apply_postprocessing, keep_largest_component
from autoseg.postprocessing.ensemble import ensemble_folders, average_probabilities

GEO = Geometry((2.0, 1.0, 1.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)


def _seg() -> np.ndarray:
    seg = np.zeros((8, 12, 12), np.uint8)
    seg[1:5, 1:6, 1:6] = 1
    seg[1:5, 6:9, 1:6] = 2  # touches class 1
    seg[6, 10, 10] = 1  # island of class 1
    seg[7, 0, 11] = 2  # island of class 2
    seg[6:8, 10:12, 0:2] = 2  # a bigger island of class 2, separate from everything
    return seg


def test_keep_largest_component():
    m = np.zeros((5, 5, 5), bool)
    m[0:2, 0:2, 0:2] = True
    m[4, 4, 4] = True
    m[2, 2, 2] = True  # touches the cube only at a corner: full connectivity joins it
    out = keep_largest_component(m)
    assert out.sum() == 9 and not out[4, 4, 4]
    assert not keep_largest_component(np.zeros((3, 3, 3), bool)).any()


def test_apply_postprocessing_foreground_and_per_class():
    seg = _seg()
    fg = apply_postprocessing(seg, {"foreground_largest_component": True}, [0, 1, 2])
    assert fg[6, 10, 10] == 0 and fg[7, 0, 11] == 0 and (fg[6:8, 10:12, 0:2] == 0).all()
    assert (fg[1:5, 1:9, 1:6] == seg[1:5, 1:9, 1:6]).all()
    per2 = apply_postprocessing(seg, {"per_class_largest_component": [2]}, [0, 1, 2])
    assert per2[6, 10, 10] == 1  # class 1 untouched
    assert per2[7, 0, 11] == 0 and (per2[6:8, 10:12, 0:2] == 0).all() and (per2[1:5, 6:9, 1:6] == 2).all()
    assert per2.dtype == seg.dtype
    unchanged = apply_postprocessing(seg, {}, [0, 1, 2])
    assert (unchanged == seg).all()
    with pytest.raises(ValueError, match="not among"):
        apply_postprocessing(seg, {"per_class_largest_component": [5]}, [0, 1, 2])
    with pytest.raises(ValueError, match="unknown"):
        apply_postprocessing(seg, {"largest": True}, [0, 1, 2])


def test_average_probabilities_mean():
    a = np.full((2, 1, 2, 2), 0.25, np.float16)
    b = np.full((2, 1, 2, 2), 0.75, np.float16)
    assert np.allclose(average_probabilities([a, b]), 0.5)
    with pytest.raises(ValueError):
        average_probabilities([a, b[:, :, :1]])


def _member(folder, probs: dict, label_values=None):
    folder.mkdir(parents=True)
    for case, p in probs.items():
        np.save(folder / f"{case}_probabilities.npy", p.astype(np.float16))
        write_image(np.argmax(p, 0).astype(np.uint8), GEO, folder / f"{case}.nii.gz")
    if label_values is not None:
        write_json(folder.parent / "plans.json", {"label_values": label_values})


def test_ensemble_folders(tmp_path):
    rng = np.random.default_rng(0)
    shape = (3, 4, 5)
    pa = {c: rng.dirichlet([1, 1, 1], size=shape).transpose(3, 0, 1, 2) for c in ("c1", "c2")}
    pb = {c: rng.dirichlet([1, 1, 1], size=shape).transpose(3, 0, 1, 2) for c in ("c1", "c2")}
    _member(tmp_path / "ra" / "validation", pa, [0, 2, 5])
    _member(tmp_path / "rb" / "validation", pb, [0, 2, 5])
    out = tmp_path / "out"
    cases = ensemble_folders([tmp_path / "ra" / "validation", tmp_path / "rb" / "validation"], out,
                             save_probabilities=True, progress=False)
    assert cases == ["c1", "c2"]
    for c in cases:
        seg, geo = read_label(out / f"{c}.nii.gz")
        mean = (pa[c].astype(np.float16).astype(np.float32) + pb[c].astype(np.float16).astype(np.float32)) / 2
        assert (seg == np.array([0, 2, 5])[np.argmax(mean, 0)]).all()
        assert geo.spacing == GEO.spacing and geo.origin == GEO.origin
        assert np.load(out / f"{c}_probabilities.npy").shape == (3,) + shape
    assert json.loads((out / "probabilities.json").read_text())["label_values"] == [0, 2, 5]
    # a member missing a case is an error naming the folder and case
    (tmp_path / "rb" / "validation" / "c2_probabilities.npy").unlink()
    with pytest.raises(Exception, match="rb.*c2"):
        ensemble_folders([tmp_path / "ra" / "validation", tmp_path / "rb" / "validation"], out, progress=False)


def test_ensemble_and_postprocess_commands(tmp_path, capsys):
    rng = np.random.default_rng(1)
    p = {"k": rng.dirichlet([1, 1], size=(2, 3, 3)).transpose(3, 0, 1, 2)}
    _member(tmp_path / "a", p)
    _member(tmp_path / "b", p)
    assert main(["ensemble", "-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "e")]) == 2
    assert "label values" in capsys.readouterr().err
    assert main(["ensemble", "-i", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "e"), "-l", "0", "1"]) == 0
    assert (read_label(tmp_path / "e" / "k.nii.gz")[0] == np.argmax(p["k"].astype(np.float16), 0)).all()

    src = tmp_path / "segs"
    write_image(_seg(), GEO, src / "s.nii.gz")
    assert main(["postprocess", "-i", str(src), "-o", str(tmp_path / "pp1"), "--foreground-lcc"]) == 0
    assert read_label(tmp_path / "pp1" / "s.nii.gz")[0][6, 10, 10] == 0
    assert main(["postprocess", "-i", str(src), "-o", str(tmp_path / "pp2"), "--per-class-lcc", "2"]) == 0
    assert read_label(tmp_path / "pp2" / "s.nii.gz")[0][6, 10, 10] == 1
    spec = tmp_path / "best.json"
    spec.write_text(json.dumps({"selected": {"postprocessing": {"foreground_largest_component": False,
                                                                  "per_class_largest_component": [1]}}}))
    assert main(["postprocess", "-i", str(src), "-o", str(tmp_path / "pp3"), "--spec", str(spec)]) == 0
    out3 = read_label(tmp_path / "pp3" / "s.nii.gz")[0]
    assert out3[6, 10, 10] == 0 and out3[7, 0, 11] == 2
    spec.write_text("{not json")
    assert main(["postprocess", "-i", str(src), "-o", str(tmp_path / "pp4"), "--spec", str(spec)]) == 2
