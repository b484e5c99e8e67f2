"""best_configuration.json as a type: round trip, ranking, what predict reads, refusal of bad files."""
import json

import pytest

from autoseg.errors import UserError
from autoseg.postprocessing.selection import Candidate, ModelRef, Selected, Selection, models_to_predict
from autoseg.workspace import DatasetWorkspace


def selection() -> Selection:
    a, b = ModelRef("unet", "2d"), ModelRef("unet", "3d_fullres")
    cands = [Candidate("unet__2d", [a], 0.80, {"1": 0.8}, {"foreground_largest_component": True,
                                                            "per_class_largest_component": []}, 0.90, {"1": 0.9}),
             Candidate("unet__3d_fullres", [b], 0.85, {"1": 0.85}, {"foreground_largest_component": False,
                                                                    "per_class_largest_component": []}, 0.85, {"1": 0.85})]
    return Selection(Selected("unet__2d", [a], cands[0].postprocessing, [0, 1]), "postprocessed", cands,
                     {"mean": 0.8}, {"mean": 0.9}, 4, [0, 1], {"1": "liver"})


def test_round_trip_and_ranking(tmp_path):
    s = selection()
    s.save(tmp_path / "best_configuration.json")
    again = Selection.load(tmp_path / "best_configuration.json")
    assert again == s and again.models == [ModelRef("unet", "2d")]
    assert [c.name for c in again.ranked_candidates()] == ["unet__2d", "unet__3d_fullres"]
    again.ranked_on = "raw"
    assert [c.name for c in again.ranked_candidates()] == ["unet__3d_fullres", "unet__2d"]
    assert again.class_label("1") == "liver (1)" and again.class_label(2) == "label 2"
    assert json.loads((tmp_path / "best_configuration.json").read_text())["selected"]["configurations"] == \
        [{"trainer": "unet", "configuration": "2d"}]


def test_models_to_predict(tmp_path):
    ws = DatasetWorkspace(tmp_path / "Tiny")
    ws.root.mkdir()
    assert models_to_predict(ws, "3d_fullres", "resenc_unet", None) == ([("resenc_unet", "3d_fullres")],
                                                                        ["0", "1", "2", "3", "4"], None)
    with pytest.raises(UserError, match="find-best-configuration Tiny"):
        models_to_predict(ws, None, "unet", None)
    selection().save(ws.best_configuration_file)
    pairs, folds, post = models_to_predict(ws, None, "unet", None)
    assert pairs == [("unet", "2d")] and folds == ["0", "1"] and post["foreground_largest_component"]
    assert models_to_predict(ws, None, "unet", ["3"], no_postprocessing=True)[1:] == (["3"], None)


def test_bad_files_are_refused_with_their_name(tmp_path):
    f = tmp_path / "best_configuration.json"
    f.write_text(json.dumps({"selected": {"name": "x"}}))
    with pytest.raises(UserError, match="not a best-configuration file"):
        Selection.load(f)
    f.write_text(json.dumps({"selected": {"name": "x", "configurations": [], "postprocessing": {}}}))
    with pytest.raises(UserError, match="selects no configuration"):
        Selection.load(f)
