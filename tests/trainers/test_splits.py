import json
from pathlib import Path

import pytest

from autoseg.atomic import read_json, write_json
from autoseg.errors import SplitError
from autoseg.trainers.splits import case_groups, fold_cases, load_or_create_splits, make_splits
from autoseg.workspace import DatasetWorkspace

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def acdc_ids() -> list[str]:
    dj = DATA / "ACDC" / "dataset.json"
    if dj.is_file():
        meta = json.loads(dj.read_text())
        return [Path(e["image"]).name.replace(".nii.gz", "") for e in meta["training"]]
    return [f"patient{p:03d}_frame{f:02d}" for p in range(1, 61) for f in (1, 12)]


def test_acdc_folds_never_split_a_patient():
    ids = acdc_ids()
    groups = case_groups(ids)
    assert len(set(groups.values())) == len(ids) // 2  # two frames per patient
    splits = make_splits(ids, groups)
    assert len(splits) == 5
    seen = set()
    for s in splits:
        assert not set(s["train"]) & set(s["val"])
        assert sorted(s["train"] + s["val"]) == sorted(ids)
        val_patients = {groups[c] for c in s["val"]}
        train_patients = {groups[c] for c in s["train"]}
        assert not val_patients & train_patients
        seen |= set(s["val"])
        assert abs(len(s["val"]) - len(ids) / 5) <= 2
    assert seen == set(ids)


def test_splits_deterministic_and_seeded():
    ids = [f"case_{i:03d}" for i in range(23)]
    assert make_splits(ids) == make_splits(list(reversed(ids)))
    assert make_splits(ids, seed=1) != make_splits(ids, seed=2)


def test_grouping_sources():
    assert case_groups(["p1-visit2", "p1_ses1", "P2_Frame3", "lonely"]) == {
        "p1-visit2": "p1", "p1_ses1": "p1", "P2_Frame3": "P2", "lonely": "lonely"}
    assert case_groups(["sub01_a", "sub01_b", "x"], r"^(sub\d+)_") == {"sub01_a": "sub01", "sub01_b": "sub01", "x": "x"}
    with pytest.raises(SplitError):
        case_groups(["a"], r"no_group")


def test_fewer_cases_than_folds():
    splits = make_splits(["a", "b", "c", "d"])
    assert len(splits) == 4 and all(len(s["val"]) == 1 for s in splits)
    with pytest.raises(SplitError, match="fold 4 does not exist"):
        fold_cases(splits, 4, ["a", "b", "c", "d"])
    assert fold_cases(splits, "all", ["b", "a"]) == (["a", "b"], ["a", "b"])
    assert make_splits(["only"]) == []
    with pytest.raises(SplitError, match="too few"):
        fold_cases([], 0, ["only"])


def test_workspace_splits_written_once_and_dataset_json_regex(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_json(raw / "dataset.json", {"group_regex": r"^(s\d)x"})
    ws = DatasetWorkspace(tmp_path / "ws" / "raw")
    ws.root.mkdir(parents=True)
    write_json(ws.source_file, {"raw_path": str(raw), "layout": "msd"})
    ids = ["s1x1", "s1x2", "s2x1", "s2x2", "s3x1", "s4x1", "s5x1", "s6x1"]
    splits = load_or_create_splits(ws, ids)
    grouping = read_json(ws.root / "grouping.json")
    assert grouping["source"] == "dataset.json" and grouping["groups"]["s1x2"] == "s1"
    for s in splits:
        assert {"s1x1", "s1x2"} <= set(s["val"]) or not {"s1x1", "s1x2"} & set(s["val"])
    # reused, even if made differently now
    write_json(ws.splits_file, [{"train": ids[1:], "val": ids[:1]}, {"train": ids[:1], "val": ids[1:]}])
    assert load_or_create_splits(ws, ids)[0]["val"] == ["s1x1"]
    with pytest.raises(SplitError, match="grouping.json"):
        load_or_create_splits(ws, ids, group_regex=r"^(.)")
    with pytest.raises(SplitError, match="does not list"):
        load_or_create_splits(ws, ids + ["new"])
