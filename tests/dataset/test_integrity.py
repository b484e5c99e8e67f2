"""Dataset integrity check: each kind of corruption is reported with its case, file and numbers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset.integrity import check_or_raise, verify_dataset
from autoseg.dataset.layout import load_dataset
from autoseg.errors import DatasetError
from autoseg.synthetic import make_dataset

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


# ---------------------------------------------------------------- helpers


def make(tmp_path: Path, num_cases: int = 3) -> Path:
    return make_dataset(tmp_path / "ds", num_cases=num_cases, shape=(8, 12, 12))


def verify(root: Path, **kw):
    return verify_dataset(load_dataset(root), **kw)


def messages(problems) -> list[str]:
    return [str(p) for p in problems]


def only(problems, case_id, file, text):
    """The problems naming ``case_id`` and ``file`` whose message contains ``text``; asserts one exists."""
    hits = [p for p in problems if p.case_id == case_id and p.file == file and text in p.message]
    assert hits, f"no problem for case {case_id}, {file}, containing {text!r}; got {messages(problems)}"
    return hits


def read(path: Path) -> sitk.Image:
    return sitk.ReadImage(str(path))


def rewrite(path: Path, array: np.ndarray, like: sitk.Image, **geometry) -> None:
    """Write ``array`` to ``path`` with ``like``'s geometry, overriding spacing/origin/direction."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(geometry.get("spacing", like.GetSpacing()))
    img.SetOrigin(geometry.get("origin", like.GetOrigin()))
    img.SetDirection(geometry.get("direction", like.GetDirection()))
    sitk.WriteImage(img, str(path))


def four_d(channels: list[np.ndarray]) -> sitk.Image:
    """A 4D volume whose 4th axis holds channels, as MSD stores multi-modal cases."""
    return sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels])


def edit_json(root: Path, change) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


LAB1 = "labelsTr/case_001.nii.gz"
IMG1 = "imagesTr/case_001.nii.gz"


# ---------------------------------------------------------------- clean data


def test_clean_dataset_verifies_clean(tmp_path):
    root = make(tmp_path)
    assert verify(root) == []
    check_or_raise(load_dataset(root))  # does not raise


def test_float_labels_with_integer_values_are_fine(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    rewrite(root / LAB1, sitk.GetArrayFromImage(like).astype(np.float32), like)
    assert verify(root) == []


def test_direction_within_tolerance_is_fine(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    d = np.array(like.GetDirection())
    d[0] += 1e-5  # float rounding, not a real difference
    rewrite(root / LAB1, sitk.GetArrayFromImage(like), like, direction=tuple(d))
    assert verify(root) == []


# ---------------------------------------------------------------- 1. missing files


def test_missing_image_file(tmp_path):
    root = make(tmp_path)
    (root / IMG1).unlink()
    problems = verify(root)
    only(problems, "case_001", IMG1, "image file is missing")
    assert len(problems) == 1


def test_missing_label_file(tmp_path):
    root = make(tmp_path)
    (root / LAB1).unlink()
    problems = verify(root)
    only(problems, "case_001", LAB1, "label file is missing")
    assert len(problems) == 1


def test_training_entry_without_label(tmp_path):
    root = make(tmp_path)
    edit_json(root, lambda m: m["training"][1].pop("label"))
    problems = verify(root)
    only(problems, "case_001", "dataset.json", "no 'label'")


# ---------------------------------------------------------------- 2. extra files


def test_extra_files_msd(tmp_path):
    root = make(tmp_path)
    (root / "imagesTr" / "stray.nii.gz").write_bytes((root / IMG1).read_bytes())
    (root / "labelsTr" / "notes.txt").write_text("x")
    problems = verify(root)
    only(problems, None, "imagesTr/stray.nii.gz", "extra file in imagesTr/")
    only(problems, None, "labelsTr/notes.txt", "extra file in labelsTr/")
    assert len(problems) == 2


# ---------------------------------------------------------------- 3. unreadable / truncated


def test_truncated_nifti(tmp_path):
    root = make(tmp_path)
    data = (root / IMG1).read_bytes()
    (root / IMG1).write_bytes(data[: len(data) // 2])
    problems = verify(root)
    hit = only(problems, "case_001", IMG1, "truncated")[0]
    assert "bytes" in hit.message and str(root) not in hit.message  # numbers, and no doubled path


def test_text_file_renamed_nifti(tmp_path):
    root = make(tmp_path)
    (root / LAB1).write_text("this is not an image\n")
    problems = verify(root)
    only(problems, "case_001", LAB1, "unreadable")


# ---------------------------------------------------------------- 4-7. geometry


def test_shape_mismatch(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    arr = sitk.GetArrayFromImage(like)
    z, y, x = arr.shape
    rewrite(root / LAB1, arr[:, :, :-1], like)
    problems = verify(root)
    only(problems, "case_001", LAB1, f"image shape {(z, y, x)} differs from label shape {(z, y, x - 1)}")


def test_spacing_mismatch(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    rewrite(root / LAB1, sitk.GetArrayFromImage(like), like, spacing=(1.0, 1.0, 1.5))  # ITK order x, y, z
    problems = verify(root)
    only(problems, "case_001", LAB1, "image spacing (1, 1, 1) differs from label spacing (1.5, 1, 1)")


def test_origin_mismatch(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    rewrite(root / LAB1, sitk.GetArrayFromImage(like), like, origin=(0.0, 2.5, 0.0))
    problems = verify(root)
    only(problems, "case_001", LAB1, "image origin (0, 0, 0) differs from label origin (0, 2.5, 0)")


def test_direction_mismatch(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    c, s = np.cos(0.1), np.sin(0.1)
    rot = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    rewrite(root / LAB1, sitk.GetArrayFromImage(like), like, direction=rot)
    problems = verify(root)
    only(problems, "case_001", LAB1, "image direction (1, 0, 0, 0, 1, 0, 0, 0, 1) differs from label direction")


# ---------------------------------------------------------------- 8. channels


def test_channel_count_differs_from_declared_and_between_cases(tmp_path):
    root = make(tmp_path)
    like = read(root / IMG1)
    arr = sitk.GetArrayFromImage(like)
    sitk.WriteImage(four_d([arr, arr]), str(root / IMG1))
    problems = verify(root)
    only(problems, "case_001", IMG1, "image is 4D with 2 volumes along its 4th axis (time points or channels) but "
         "dataset.json 'modality' declares 1 channel(s) (MRI)")
    cross = [p for p in problems if p.case_id is None and "channel count differs between cases" in p.message]
    assert cross and "2 channel(s) in 1 case(s) (case_001)" in cross[0].message


def test_declared_channels_not_matching_files(tmp_path):
    root = make(tmp_path)
    edit_json(root, lambda m: m.__setitem__("modality", {"0": "T1", "1": "T2"}))
    problems = verify(root)
    for i in range(3):
        only(problems, f"case_{i:03d}", f"imagesTr/case_{i:03d}.nii.gz", "image has 1 channel(s) but dataset.json")


def test_multichannel_label(tmp_path):
    root = make(tmp_path)
    arr = sitk.GetArrayFromImage(read(root / LAB1))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([arr] * 3, -1), isVector=True), str(root / LAB1))
    problems = verify(root)
    only(problems, "case_001", LAB1, "label file has 3 channels")


def test_2d_3d_mix_between_image_and_label(tmp_path):
    root = make(tmp_path)
    arr = sitk.GetArrayFromImage(read(root / LAB1))
    sitk.WriteImage(sitk.GetImageFromArray(arr[0]), str(root / LAB1))  # a single 2D slice
    problems = verify(root)
    only(problems, "case_001", LAB1, "image file is 3D but label file is 2D")
    only(problems, "case_001", LAB1, "image shape")


def test_2d_3d_mix_between_cases(tmp_path):
    root = make(tmp_path)
    for f in (IMG1, LAB1):
        arr = sitk.GetArrayFromImage(read(root / f))
        sitk.WriteImage(sitk.GetImageFromArray(arr[0]), str(root / f))
    problems = verify(root)
    assert [p.message for p in problems] == [
        "image dimensionality differs between cases: 3D in 2 case(s) (case_000, case_002); 2D in 1 case(s) (case_001)"]


# ---------------------------------------------------------------- 9-11. values


def test_undeclared_label_values(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    arr = sitk.GetArrayFromImage(like)
    arr[0, 0, :3] = 5
    arr[0, 1, :2] = 7
    rewrite(root / LAB1, arr, like)
    problems = verify(root)
    only(problems, "case_001", LAB1, "label values not declared in dataset.json 'labels': 5 (3 voxels), 7 (2 voxels)")


def test_non_integer_label_values(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    arr = sitk.GetArrayFromImage(like).astype(np.float32)
    arr[0, 0, :4] = 0.5
    rewrite(root / LAB1, arr, like)
    problems = verify(root)
    only(problems, "case_001", LAB1, "non-integer values (0.5) in 4 voxel(s)")


def test_nan_and_inf_in_image(tmp_path):
    root = make(tmp_path)
    like = read(root / IMG1)
    arr = sitk.GetArrayFromImage(like)
    arr[0, 0, :2] = np.nan
    arr[1, 1, 1] = np.inf
    rewrite(root / IMG1, arr, like)
    problems = verify(root)
    only(problems, "case_001", IMG1, "image has 2 NaN and 1 infinite voxel(s)")


def test_nan_in_float_label(tmp_path):
    root = make(tmp_path)
    like = read(root / LAB1)
    arr = sitk.GetArrayFromImage(like).astype(np.float32)
    arr[0, 0, 0] = np.nan
    rewrite(root / LAB1, arr, like)
    problems = verify(root)
    only(problems, "case_001", LAB1, "label has 1 NaN and 0 infinite voxel(s)")


# ---------------------------------------------------------------- 12-14. dataset.json structure


def test_empty_dataset(tmp_path):
    root = make(tmp_path)
    edit_json(root, lambda m: m.__setitem__("training", []))
    for f in (root / "imagesTr").iterdir():
        f.unlink()
    for f in (root / "labelsTr").iterdir():
        f.unlink()
    problems = verify(root)
    only(problems, None, "dataset.json", "no training cases")


def test_duplicate_case_ids(tmp_path):
    root = make(tmp_path)
    edit_json(root, lambda m: m["training"].append(dict(m["training"][1])))
    problems = verify(root)
    only(problems, "case_001", "dataset.json", "case id appears 2 times")


def test_path_escaping_dataset_folder(tmp_path):
    root = make(tmp_path)
    (tmp_path / "outside.nii.gz").write_bytes((root / IMG1).read_bytes())
    edit_json(root, lambda m: m["training"][1].__setitem__("image", "../outside.nii.gz"))
    problems = verify(root)
    only(problems, "outside", "dataset.json", "'../outside.nii.gz' in dataset.json points outside the dataset folder")


def test_symlinked_images_folder_is_not_escaping(tmp_path):
    root = make(tmp_path)
    (root / "imagesTr").rename(tmp_path / "elsewhere")
    (root / "imagesTr").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert verify(root) == []


# ---------------------------------------------------------------- all problems, workers, raise


def corrupt_three_ways(root: Path) -> None:
    (root / "imagesTr" / "case_000.nii.gz").unlink()
    (root / LAB1).write_text("garbage")
    like = read(root / "imagesTr" / "case_002.nii.gz")
    arr = sitk.GetArrayFromImage(like)
    arr[0, 0, 0] = np.nan
    rewrite(root / "imagesTr" / "case_002.nii.gz", arr, like)


def test_multiple_problems_are_all_reported(tmp_path):
    root = make(tmp_path)
    corrupt_three_ways(root)
    problems = verify(root)
    only(problems, "case_000", "imagesTr/case_000.nii.gz", "missing")
    only(problems, "case_001", LAB1, "unreadable")
    only(problems, "case_002", "imagesTr/case_002.nii.gz", "NaN")
    assert len(problems) == 3


def test_workers_find_the_same_problems(tmp_path):
    root = make(tmp_path, num_cases=5)
    corrupt_three_ways(root)
    assert messages(verify(root, num_workers=2)) == messages(verify(root, num_workers=1))


def test_check_or_raise_lists_every_problem(tmp_path):
    root = make(tmp_path)
    corrupt_three_ways(root)
    with pytest.raises(DatasetError) as info:
        check_or_raise(load_dataset(root))
    assert len(info.value.problems) == 3
    text = str(info.value)
    assert "3 problem(s)" in text and "case_000" in text and "case_001" in text and "case_002" in text


# ---------------------------------------------------------------- nnU-Net v2 layout


def make_nnunetv2(tmp_path: Path, num_cases: int = 2, channels: int = 2) -> Path:
    """An nnU-Net v2 raw dataset: imagesTr/CASE_000k.nii.gz per channel, labelsTr/CASE.nii.gz."""
    src = make(tmp_path, num_cases)
    root = tmp_path / "v2"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(num_cases):
        name = f"case_{i:03d}"
        img = read(src / "imagesTr" / f"{name}.nii.gz")
        for c in range(channels):
            sitk.WriteImage(img * (c + 1), str(root / "imagesTr" / f"{name}_{c:04d}.nii.gz"))
        (root / "labelsTr" / f"{name}.nii.gz").write_bytes((src / "labelsTr" / f"{name}.nii.gz").read_bytes())
    meta = {
        "channel_names": {str(c): f"ch{c}" for c in range(channels)},
        "labels": {"background": 0, "inner": 1, "outer": 2},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunetv2_clean(tmp_path):
    root = make_nnunetv2(tmp_path)
    spec = load_dataset(root)
    assert spec.layout == "nnunetv2" and spec.num_channels == 2
    assert verify_dataset(spec) == []


def test_nnunetv2_missing_channel_file(tmp_path):
    root = make_nnunetv2(tmp_path)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    problems = verify(root)
    only(problems, "case_001", "imagesTr/case_001_0001.nii.gz", "is missing")


def test_nnunetv2_channel_files_must_share_geometry_and_be_single_channel(tmp_path):
    root = make_nnunetv2(tmp_path)
    ch1 = root / "imagesTr" / "case_001_0001.nii.gz"
    like = read(ch1)
    rewrite(ch1, sitk.GetArrayFromImage(like), like, spacing=(2.0, 1.0, 1.0))
    ch0 = root / "imagesTr" / "case_000_0000.nii.gz"
    arr = sitk.GetArrayFromImage(read(ch0))
    sitk.WriteImage(four_d([arr, arr]), str(ch0))
    problems = verify(root)
    only(problems, "case_001", "imagesTr/case_001_0001.nii.gz",
         "channel 0 (case_001_0000.nii.gz) spacing (1, 1, 1) differs from channel file spacing (1, 1, 2)")
    only(problems, "case_000", "imagesTr/case_000_0000.nii.gz",
         "channel file is 4D with 2 volumes along its 4th axis; the nnU-Net v2 layout needs one 3D file per channel")


def test_nnunetv2_extra_and_missing_label(tmp_path):
    root = make_nnunetv2(tmp_path)
    (root / "labelsTr" / "case_001.nii.gz").rename(root / "labelsTr" / "ghost.nii.gz")
    problems = verify(root)
    only(problems, "case_001", "labelsTr/case_001.nii.gz", "label file is missing")
    only(problems, None, "labelsTr/ghost.nii.gz", "extra file in labelsTr/")


# ---------------------------------------------------------------- 2D PNG


def make_png_dataset(tmp_path: Path, modality: dict) -> Path:
    root = tmp_path / "png"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i in range(2):
        rgb = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        lab = (rgb[..., 1] > 128).astype(np.uint8)
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(root / "imagesTr" / f"img_{i}.png"))
        sitk.WriteImage(sitk.GetImageFromArray(lab), str(root / "labelsTr" / f"img_{i}.png"))
        training.append({"image": f"./imagesTr/img_{i}.png", "label": f"./labelsTr/img_{i}.png"})
    meta = {"tensorImageSize": "2D", "modality": modality, "labels": {"0": "background", "1": "fg"},
            "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_png_rgb_dataset_has_three_channels(tmp_path):
    root = make_png_dataset(tmp_path, {"0": "R", "1": "G", "2": "B"})
    spec = load_dataset(root)
    assert spec.is_2d and spec.num_channels == 3
    assert verify_dataset(spec) == []


def test_png_rgb_dataset_declared_single_channel(tmp_path):
    root = make_png_dataset(tmp_path, {"0": "photo"})
    problems = verify(root)
    only(problems, "img_0", "imagesTr/img_0.png", "image has 3 channel(s) but dataset.json 'modality' declares 1")


# ---------------------------------------------------------------- CLI


def test_cli_verify_only_reports_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("autoseg.commands.plan_and_preprocess")
    from autoseg.cli import main

    root = make(tmp_path)
    like = read(root / LAB1)
    arr = sitk.GetArrayFromImage(like)
    arr[0, 0, 0] = 9
    rewrite(root / LAB1, arr, like)
    workspace = tmp_path / "ws"
    code = main(["plan-and-preprocess", str(root), "--verify-only", "--workspace", str(workspace)])
    assert code == 2
    err = capsys.readouterr().err
    assert "case_001" in err and "9 (1 voxels)" in err and "Traceback" not in err
    assert not workspace.exists() or not any(p.is_file() for p in workspace.rglob("*"))


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize("name,limit", [("Task04_Hippocampus", 20), ("ACDC", 10), ("DRIVE", 5), ("VerSe_sample", None)])
def test_real_datasets_verify_clean(name, limit):
    root = DATA / name
    if not (root / "dataset.json").is_file():
        pytest.skip(f"{root} not available")
    spec = load_dataset(root)
    assert spec.problems == []
    if limit is not None:
        spec.cases = spec.cases[:limit]
    assert messages(verify_dataset(spec)) == []
