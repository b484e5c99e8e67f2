"""Dataset layouts: MSD, nnU-Net v2 and 2D are recognised, and dataset.json is parsed strictly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset.layout import load_dataset
from autoseg.errors import DatasetError
from autoseg.synthetic import make_dataset


def write_json(root: Path, meta: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def touch_image(path: Path, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb:
        img = sitk.GetImageFromArray(np.zeros((4, 5, 3), np.uint8), isVector=True)
    else:
        img = sitk.GetImageFromArray(np.zeros((2, 4, 5) if path.name.endswith(".nii.gz") else (4, 5), np.uint8))
    sitk.WriteImage(img, str(path))


def make_v2(root: Path, ending: str = ".nii.gz", cases=("b", "a"), channels=2, labels=None) -> Path:
    for c in cases:
        for k in range(channels):
            touch_image(root / "imagesTr" / f"{c}_{k:04d}{ending}")
        touch_image(root / "labelsTr" / f"{c}{ending}")
    return write_json(root, {
        "channel_names": {str(k): f"ch{k}" for k in range(channels)},
        "labels": labels or {"background": 0, "liver": 1, "tumor": 2},
        "numTraining": len(cases),
        "file_ending": ending,
    })


def test_msd_layout(tmp_path):
    root = make_dataset(tmp_path / "ds", num_cases=2, shape=(6, 8, 8))
    spec = load_dataset(root)
    assert spec.layout == "msd" and not spec.is_2d and spec.file_ending == ".nii.gz"
    assert spec.channel_names == ["MRI"] and spec.labels == {0: "background", 1: "inner", 2: "outer"}
    assert [c.case_id for c in spec.cases] == ["case_000", "case_001"]
    assert spec.cases[0].image_files == [root.resolve() / "imagesTr" / "case_000.nii.gz"]
    assert spec.cases[0].label_file == root.resolve() / "labelsTr" / "case_000.nii.gz"
    assert spec.problems == []


def test_nnunetv2_layout(tmp_path):
    root = make_v2(tmp_path / "v2")
    spec = load_dataset(root)
    assert spec.layout == "nnunetv2" and not spec.is_2d
    assert spec.channel_names == ["ch0", "ch1"]
    assert spec.labels == {0: "background", 1: "liver", 2: "tumor"} and spec.label_values == [0, 1, 2]
    assert [c.case_id for c in spec.cases] == ["a", "b"]
    assert [f.name for f in spec.cases[0].image_files] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    assert spec.cases[0].label_file.name == "a.nii.gz"
    assert spec.problems == []


def test_nnunetv2_channel_order_follows_indices_not_text(tmp_path):
    root = make_v2(tmp_path / "v2", channels=1)
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"10": "k", "2": "j", "0": "i"}
    (root / "dataset.json").write_text(json.dumps(meta))
    assert load_dataset(root).channel_names == ["i", "j", "k"]


def test_2d_layouts(tmp_path):
    msd = tmp_path / "msd2d"
    touch_image(msd / "imagesTr" / "x.png", rgb=True)
    touch_image(msd / "labelsTr" / "x.png")
    write_json(msd, {"modality": {"0": "R", "1": "G", "2": "B"}, "labels": {"0": "bg", "1": "vessel"},
                     "training": [{"image": "./imagesTr/x.png", "label": "./labelsTr/x.png"}]})
    spec = load_dataset(msd)
    assert spec.layout == "msd" and spec.is_2d and spec.file_ending == ".png" and spec.num_channels == 3
    v2 = make_v2(tmp_path / "v2png", ending=".png", channels=1)
    spec = load_dataset(v2)
    assert spec.layout == "nnunetv2" and spec.is_2d and spec.problems == []


def test_nnunetv2_missing_channel_and_count_mismatch(tmp_path):
    root = make_v2(tmp_path / "v2")
    (root / "imagesTr" / "a_0001.nii.gz").unlink()
    touch_image(root / "imagesTr" / "b_0002.nii.gz")
    touch_image(root / "imagesTr" / "README.nii.gz")
    meta = json.loads((root / "dataset.json").read_text())
    meta["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(meta))
    text = [str(p) for p in load_dataset(root).problems]
    assert "case a, imagesTr/a_0001.nii.gz: channel file a_0001.nii.gz is missing" in text
    assert "case b, imagesTr/b_0002.nii.gz: channel 2 exists but dataset.json declares 2 channel(s)" in text
    assert any("imagesTr/README.nii.gz" in t and "extra file" in t for t in text)
    assert any("numTraining says 5 but imagesTr holds 2 case(s)" in t for t in text)


@pytest.mark.parametrize("labels,expected", [
    ({"0": "bg", "1.0": "a", "3": "b"}, {0: "bg", 1: "a", 3: "b"}),  # "1.0" is the integer 1
    ({"0": "bg", "1.5": "a"}, "label value '1.5' for 'a' is not an integer"),
    ({"1": "a"}, "labels must declare the background value 0"),
    ({"x": "bg"}, "label value 'x' for 'bg' is not an integer"),
    ([], "'labels' must be a non-empty object {value: name}"),
    ({}, "'labels' must be a non-empty object {value: name}"),
])
def test_msd_label_parsing(tmp_path, labels, expected):
    root = make_dataset(tmp_path / "ds", num_cases=1, shape=(6, 8, 8))
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    if isinstance(expected, dict):
        assert spec.labels == expected and spec.problems == []
    else:
        assert expected in [p.message for p in spec.problems]


def test_nnunetv2_label_parsing(tmp_path):
    root = make_v2(tmp_path / "ok", labels={"background": 0, "vertebra": 20, "ignore": 7})
    assert load_dataset(root).labels == {0: "background", 20: "vertebra", 7: "ignore"}
    root = make_v2(tmp_path / "regions", labels={"background": 0, "whole": [1, 2]})
    assert any("regions are not supported" in p.message for p in load_dataset(root).problems)


def test_unusable_dataset_json_raises(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder does not exist"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetError, match="dataset.json is missing"):
        load_dataset(tmp_path / "a")
    (tmp_path / "a" / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_dataset(tmp_path / "a")
    (tmp_path / "a" / "dataset.json").write_text('{"labels": {"0": "bg"}}')
    with pytest.raises(DatasetError, match="neither MSD"):
        load_dataset(tmp_path / "a")


def test_group_regex(tmp_path):
    root = make_v2(tmp_path / "v2")
    meta = json.loads((root / "dataset.json").read_text())
    meta["group_regex"] = "(["
    (root / "dataset.json").write_text(json.dumps(meta))
    assert any("group_regex is not a valid regular expression" in p.message for p in load_dataset(root).problems)
    meta["group_regex"] = r"^(\w)"
    (root / "dataset.json").write_text(json.dumps(meta))
    spec = load_dataset(root)
    assert spec.group_regex == r"^(\w)" and spec.problems == []


def test_paths_escaping_the_folder_but_not_symlinks(tmp_path):
    root = make_dataset(tmp_path / "ds", num_cases=2, shape=(6, 8, 8))
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["label"] = "/etc/passwd"
    (root / "dataset.json").write_text(json.dumps(meta))
    (root / "labelsTr").rename(tmp_path / "labels_elsewhere")
    (root / "labelsTr").symlink_to(tmp_path / "labels_elsewhere", target_is_directory=True)
    problems = load_dataset(root).problems
    outside = [p for p in problems if "outside the dataset folder" in p.message]
    assert [p.case_id for p in outside] == ["case_000"]  # only the absolute path, not the symlinked folder
    assert "/etc/passwd" in outside[0].message
