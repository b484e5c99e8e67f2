"""Hostile dataset inputs: every class in documentation/integrity.md's table "Checks and example
messages", each built tiny in tmp_path. A defect is reported by the integrity check (or by
load_dataset) as one line naming the case and the file with its cause, before any long work;
what is legitimate verifies clean and plans."""
from __future__ import annotations

import gzip
import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.dataset.integrity import verify_dataset
from autoseg.dataset.layout import load_dataset
from autoseg.errors import DatasetError, Problem
from autoseg.synthetic import make_dataset

IMG0, IMG1, LAB1 = "imagesTr/case_000.nii.gz", "imagesTr/case_001.nii.gz", "labelsTr/case_001.nii.gz"
C1 = "case_001"


# ---------------------------------------------------------------- building blocks


def make(tmp_path: Path, name: str = "ds", num_cases: int = 3) -> Path:
    return make_dataset(tmp_path / name, num_cases=num_cases, shape=(8, 12, 12))


def edit_json(root: Path, change: Callable[[dict], object]) -> None:
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")


def array(root: Path, rel: str) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(root / rel))
    return sitk.GetArrayFromImage(img), img


def write(root: Path, rel: str, arr: np.ndarray, like: sitk.Image | None = None, **geometry) -> None:
    """``arr`` into ``rel`` with ``like``'s geometry, spacing/origin/direction overridable."""
    img = sitk.GetImageFromArray(arr)
    if like is not None and like.GetDimension() == img.GetDimension():
        img.SetSpacing(like.GetSpacing())
        img.SetOrigin(like.GetOrigin())
        img.SetDirection(like.GetDirection())
    for key, value in geometry.items():
        getattr(img, "Set" + key.capitalize())(value)
    sitk.WriteImage(img, str(root / rel))


def transform(root: Path, rel: str, change: Callable[[np.ndarray], np.ndarray], **geometry) -> None:
    arr, like = array(root, rel)
    write(root, rel, change(arr), like, **geometry)


def four_d(volumes: list[np.ndarray]) -> sitk.Image:
    return sitk.JoinSeries([sitk.GetImageFromArray(v) for v in volumes])


def patch_nifti(path: Path, offset: int, fmt: str, values) -> None:
    """Overwrite NIfTI-1 header fields at ``offset`` (e.g. pixdim: 76, 8 float32), keeping gzip."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(gzip.compress(bytes(raw)))


def pixdim(root: Path, rel: str, axis: int, value: float) -> None:
    raw = gzip.decompress((root / rel).read_bytes())
    values = list(struct.unpack("<8f", raw[76:108]))
    values[1 + axis] = value  # pixdim[1..3] are x, y, z
    patch_nifti(root / rel, 76, "<8f", values)


def v2(tmp_path: Path, channels: int = 2) -> Path:
    """An nnU-Net v2 raw dataset of 2 cases from the MSD one."""
    src = make(tmp_path, "msd", 2)
    root = tmp_path / "ds"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        name = f"case_{i:03d}"
        img = sitk.ReadImage(str(src / "imagesTr" / f"{name}.nii.gz"))
        for c in range(channels):
            sitk.WriteImage(img * (c + 1), str(root / "imagesTr" / f"{name}_{c:04d}.nii.gz"))
        (root / "labelsTr" / f"{name}.nii.gz").write_bytes((src / "labelsTr" / f"{name}.nii.gz").read_bytes())
    meta = {"channel_names": {str(c): f"ch{c}" for c in range(channels)}, "numTraining": 2,
            "labels": {"background": 0, "inner": 1, "outer": 2}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def problems_of(root: Path) -> tuple[list[Problem], list[Problem]]:
    warnings: list[Problem] = []
    return verify_dataset(load_dataset(root), warnings=warnings), warnings


def assert_named(problems: list[Problem], case_id: str | None, file: str | None, text: str) -> None:
    hits = [p for p in problems if p.case_id == case_id and p.file == file and text in p.message]
    assert hits, f"no problem for case {case_id}, {file}, containing {text!r}; got {[str(p) for p in problems]}"
    assert all("\n" not in str(p) and "Traceback" not in str(p) for p in problems)


# ---------------------------------------------------------------- one builder per class


def _entry_without_label(root):
    edit_json(root, lambda m: m["training"][1].pop("label"))


def _stray(root):
    (root / "imagesTr" / "stray.nii.gz").write_bytes((root / IMG1).read_bytes())


def _truncated(root):
    data = gzip.decompress((root / IMG1).read_bytes())
    (root / IMG1).write_bytes(gzip.compress(data[: len(data) // 2]))


def _broken_nrrd(root):
    arr, like = array(root, IMG1)
    write(root, "imagesTr/case_001.nrrd", arr, like)
    data = (root / "imagesTr/case_001.nrrd").read_bytes()
    (root / "imagesTr/case_001.nrrd").write_bytes(data[: len(data) // 2])
    (root / IMG1).unlink()
    edit_json(root, lambda m: m["training"][1].__setitem__("image", "imagesTr/case_001.nrrd"))


def _multichannel_label(root):
    arr, _ = array(root, LAB1)
    sitk.WriteImage(four_d([arr, arr, arr]), str(root / LAB1))


def _label_2d(root):
    write(root, LAB1, array(root, LAB1)[0][0])


def _image_2d_case(root):
    for rel in (IMG1, LAB1):
        arr, _ = array(root, rel)
        write(root, rel, arr[0])


def _thin_label_shape(root):
    transform(root, LAB1, lambda a: np.pad(a, ((0, 0), (0, 0), (0, 1))))


def _v2_vector_channel(root):
    arr, _ = array(root, "imagesTr/case_000_0000.nii.gz")
    img = sitk.GetImageFromArray(np.stack([arr, arr], -1), isVector=True)
    sitk.WriteImage(img, str(root / "imagesTr/case_000_0000.nii.gz"))


def _v2_4d_channel(root):
    arr, _ = array(root, "imagesTr/case_000_0000.nii.gz")
    sitk.WriteImage(four_d([arr, arr]), str(root / "imagesTr/case_000_0000.nii.gz"))


def _v2_channel_spacing(root):
    transform(root, "imagesTr/case_001_0001.nii.gz", lambda a: a, spacing=(1.0, 1.0, 2.0))


def _nan_label(root):
    transform(root, LAB1, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(np.float32))


def _huge_nifti(root):
    patch_nifti(root / IMG1, 40, "<8h", [3, 30000, 30000, 30000, 1, 1, 1, 1])


def _huge_mha(root):
    (root / "imagesTr" / "case_001.mha").write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 100000 100000 100000\nElementType = MET_SHORT\n"
        b"ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n" + bytes(64))
    (root / IMG1).unlink()
    edit_json(root, lambda m: m["training"][1].__setitem__("image", "imagesTr/case_001.mha"))


def _five_d(root):
    data = bytearray(gzip.decompress((root / IMG1).read_bytes()))
    x, y, z = struct.unpack("<3h", data[42:48])
    data[40:56] = struct.pack("<8h", 5, x, y, 1, 1, z, 1, 1)  # the same voxels on 5 axes
    (root / IMG1).write_bytes(gzip.compress(bytes(data)))


def _nan_origin(root):
    patch_nifti(root / IMG1, 268, "<f", [float("nan")])  # qoffset_x; qform_code is 1 (ITK writes it)
    patch_nifti(root / IMG1, 292, "<f", [float("nan")])  # srow_x[3]


def _same_file_twice(root):
    edit_json(root, lambda m: m["training"].append({"image": "imagesTr/case_003.nii.gz",
                                                    "label": "labelsTr/case_001.nii.gz"}))
    (root / "imagesTr" / "case_003.nii.gz").write_bytes((root / IMG1).read_bytes())


def _same_image_through_link(root):
    (root / "imagesTr" / "case_003.nii.gz").symlink_to("case_001.nii.gz")
    (root / "labelsTr" / "case_003.nii.gz").write_bytes((root / LAB1).read_bytes())
    edit_json(root, lambda m: m["training"].append({"image": "imagesTr/case_003.nii.gz",
                                                    "label": "labelsTr/case_003.nii.gz"}))


def _link_outside(root):
    outside = root.parent / "elsewhere.nii.gz"
    outside.write_bytes((root / IMG1).read_bytes())
    (root / IMG1).unlink()
    (root / IMG1).symlink_to(outside)


def _broken_link(root):
    (root / IMG1).unlink()
    (root / IMG1).symlink_to(root / "gone.nii.gz")


def _folder_as_image(root):
    (root / IMG1).unlink()
    (root / IMG1).mkdir()


def _empty_file(root):
    (root / IMG1).write_bytes(b"")


@dataclass
class Hostile:
    name: str
    build: Callable[[Path], object]
    case_id: str | None
    file: str | None
    text: str
    layout: str = "msd"


HOSTILE = [
    # 1-3: missing, extra, unreadable files
    Hostile("image file missing", lambda r: (r / IMG1).unlink(), C1, IMG1, "image file is missing"),
    Hostile("label file missing", lambda r: (r / LAB1).unlink(), C1, LAB1, "label file is missing"),
    Hostile("training entry without a label", _entry_without_label, C1, "dataset.json", "training entry has no 'label'"),
    Hostile("v2 channel file missing", lambda r: (r / "imagesTr/case_001_0001.nii.gz").unlink(), C1,
            "imagesTr/case_001_0001.nii.gz", "channel file case_001_0001.nii.gz is missing", "v2"),
    Hostile("extra file msd", _stray, None, "imagesTr/stray.nii.gz",
            "extra file in imagesTr/ not listed in dataset.json 'training'"),
    Hostile("extra label v2", lambda r: (r / "labelsTr/ghost.nii.gz").write_bytes(b"x"), None, "labelsTr/ghost.nii.gz",
            "extra file in labelsTr/ has no image CASE_0000.nii.gz in imagesTr/", "v2"),
    Hostile("badly named v2", lambda r: (r / "imagesTr/README.nii.gz").write_bytes(b"x"), None,
            "imagesTr/README.nii.gz", "extra file in imagesTr/: name is not CASE_XXXX.nii.gz", "v2"),
    Hostile("more channel files than declared",
            lambda r: (r / "imagesTr/case_001_0002.nii.gz").write_bytes((r / "imagesTr/case_001_0001.nii.gz").read_bytes()),
            C1, "imagesTr/case_001_0002.nii.gz", "channel 2 exists but dataset.json declares 2 channel(s)", "v2"),
    Hostile("truncated nifti", _truncated, C1, IMG1, "truncated NIfTI file: it holds"),
    Hostile("text renamed nifti", lambda r: (r / LAB1).write_text("not an image"), C1, LAB1,
            "no image reader recognises its contents"),
    Hostile("broken nrrd", _broken_nrrd, C1, "imagesTr/case_001.nrrd", "unreadable or truncated image file"),
    Hostile("image is a folder", _folder_as_image, C1, IMG1, "is a folder, not an image file"),
    Hostile("empty file", _empty_file, C1, IMG1, "empty file (0 bytes)"),
    # 4-7: image and label grids
    Hostile("shape mismatch", _thin_label_shape, C1, LAB1, "image shape (7, 12, 12) differs from label shape (7, 12, 13)"),
    Hostile("spacing mismatch", lambda r: transform(r, LAB1, lambda a: a, spacing=(1.0, 1.0, 1.5)), C1, LAB1,
            "image spacing (1, 1, 1) differs from label spacing (1.5, 1, 1) (z, y, x)"),
    Hostile("origin mismatch", lambda r: transform(r, LAB1, lambda a: a, origin=(0.0, 2.5, 0.0)), C1, LAB1,
            "image origin (0, 0, 0) differs from label origin (0, 2.5, 0) (x, y, z mm)"),
    Hostile("direction mismatch", lambda r: transform(r, LAB1, lambda a: a, direction=(0, 1, 0, 1, 0, 0, 0, 0, 1)),
            C1, LAB1, "image direction (1, 0, 0, 0, 1, 0, 0, 0, 1) differs from label direction (0, 1, 0, 1, 0, 0"),
    # 8: channels and dimensionality
    Hostile("4D time series in a 3D dataset",
            lambda r: sitk.WriteImage(four_d([array(r, IMG1)[0]] * 5), str(r / IMG1)), C1, IMG1,
            "image is 4D with 5 volumes along its 4th axis (time points or channels) but dataset.json 'modality' "
            "declares 1 channel(s) (MRI)"),
    Hostile("channels vs modality", lambda r: edit_json(r, lambda m: m.__setitem__("modality", {"0": "T1", "1": "T2"})),
            C1, IMG1, "image has 1 channel(s) but dataset.json 'modality' declares 2 (T1, T2)"),
    Hostile("channel count differs between cases",
            lambda r: sitk.WriteImage(four_d([array(r, IMG1)[0]] * 2), str(r / IMG1)), None, None,
            "channel count differs between cases: 1 channel(s) in 2 case(s) (case_000, case_002); 2 channel(s) in "
            "1 case(s) (case_001)"),
    Hostile("v2 channel file with vector pixels", _v2_vector_channel, "case_000", "imagesTr/case_000_0000.nii.gz",
            "channel file has 2 channels; the nnU-Net v2 layout needs one single-channel file per channel", "v2"),
    Hostile("v2 channel file is 4D", _v2_4d_channel, "case_000", "imagesTr/case_000_0000.nii.gz",
            "channel file is 4D with 2 volumes along its 4th axis", "v2"),
    Hostile("v2 channel files on different grids", _v2_channel_spacing, C1, "imagesTr/case_001_0001.nii.gz",
            "channel 0 (case_001_0000.nii.gz) spacing (1, 1, 1) differs from channel file spacing (2, 1, 1)", "v2"),
    Hostile("4D label", _multichannel_label, C1, LAB1,
            "label file is 4D with 3 volumes along its 4th axis; a label map must be one 3D volume"),
    Hostile("2D label for a 3D image", _label_2d, C1, LAB1, "image file is 3D but label file is 2D"),
    Hostile("2D case in a 3D dataset", _image_2d_case, None, None,
            "image dimensionality differs between cases: 3D in 2 case(s) (case_000, case_002); 2D in 1 case(s) (case_001)"),
    Hostile("image with 5 axes", _five_d, C1, IMG1, "image has 5 axes"),
    # header geometry
    Hostile("zero spacing", lambda r: pixdim(r, IMG1, 1, 0.0), C1, IMG1,
            "invalid voxel spacing in the NIfTI header (pixdim y = 0): every voxel size must be a positive number"),
    Hostile("negative spacing", lambda r: pixdim(r, LAB1, 2, -1.0), C1, LAB1,
            "invalid voxel spacing in the NIfTI header (pixdim z = -1)"),
    Hostile("NaN spacing", lambda r: pixdim(r, IMG1, 0, float("nan")), C1, IMG1,
            "invalid voxel spacing in the NIfTI header (pixdim x = nan)"),
    Hostile("NaN origin", _nan_origin, C1, IMG1, "origin or orientation (qform/sform) holds NaN or infinite values"),
    Hostile("huge NIfTI header", _huge_nifti, C1, IMG1, "header declares a 30000 x 30000 x 30000 image (108 TB of pixels)"),
    Hostile("huge MHA header", _huge_mha, C1, "imagesTr/case_001.mha",
            "header declares a 100000 x 100000 x 100000 image (2 PB of pixels), more than this machine's memory"),
    # 9-11: voxel values
    Hostile("undeclared label values", lambda r: transform(r, LAB1, lambda a: np.where(a == 2, 5, a).astype(a.dtype)),
            C1, LAB1, "label values not declared in dataset.json 'labels': 5 ("),
    Hostile("negative label values", lambda r: transform(r, LAB1, lambda a: np.where(a == 2, -3, a.astype(np.int16))),
            C1, LAB1, "label has negative values: -3 ("),
    Hostile("non-integer label values", lambda r: transform(r, LAB1, lambda a: np.where(a == 2, 0.5, a).astype(np.float32)),
            C1, LAB1, "label has non-integer values (0.5) in"),
    Hostile("NaN in image", lambda r: transform(r, IMG1, lambda a: np.where(a == a.max(), np.nan, a)), C1, IMG1,
            "image has 1 NaN and 0 infinite voxel(s) of"),
    Hostile("NaN in float label", _nan_label, C1, LAB1, "label has 1 NaN and 0 infinite voxel(s) of"),
    Hostile("constant image", lambda r: transform(r, IMG1, lambda a: np.full_like(a, 7.5)), C1, IMG1,
            "image is constant: every voxel is 7.5; an empty or failed export holds nothing to learn from"),
    Hostile("all-zero integer image", lambda r: transform(r, IMG1, lambda a: np.zeros(a.shape, np.int16)), C1, IMG1,
            "image is all zeros (int16)"),
    Hostile("labels background in every case",
            lambda r: [transform(r, f"labelsTr/case_{i:03d}.nii.gz", np.zeros_like) for i in range(3)], None, "labelsTr",
            "every label map holds only background (0), in all 3 case(s): there is nothing to learn"),
    # 12-14: dataset.json and the cases it lists
    Hostile("empty dataset", lambda r: edit_json(r, lambda m: m.__setitem__("training", [])), None, "dataset.json",
            "dataset has no training cases"),
    Hostile("duplicate case ids", lambda r: edit_json(r, lambda m: m["training"].append(dict(m["training"][1]))),
            C1, "dataset.json", "case id appears 2 times"),
    Hostile("file listed under two ids", _same_file_twice, None, LAB1,
            "the same file is used by 2 cases (case_001, case_003); each case needs its own files"),
    Hostile("file linked under two ids", _same_image_through_link, None, IMG1, "the same file is used by 2 cases"),
    Hostile("path escaping the folder", lambda r: edit_json(r, lambda m: m["training"][1].__setitem__(
        "image", "../outside.nii.gz")), "outside", "dataset.json",
            "path '../outside.nii.gz' in dataset.json points outside the dataset folder"),
    Hostile("symlink to a file outside", _link_outside, C1, IMG1, "symlink points outside the dataset folder, to "),
    Hostile("broken symlink", _broken_link, C1, IMG1, "broken symlink: it points to "),
    Hostile("labels not an object", lambda r: edit_json(r, lambda m: m.__setitem__("labels", [])), None, "dataset.json",
            "'labels' must be a non-empty object {value: name}"),
    Hostile("label value not an integer", lambda r: edit_json(r, lambda m: m["labels"].__setitem__("1.5", "a")), None,
            "dataset.json", "label value '1.5' for 'a' is not an integer"),
    Hostile("no background label", lambda r: edit_json(r, lambda m: m["labels"].pop("0")), None, "dataset.json",
            "labels must declare the background value 0"),
    Hostile("negative declared label", lambda r: edit_json(r, lambda m: m["labels"].__setitem__("-1", "ignore")), None,
            "dataset.json", "label value -1 for 'ignore' is negative; label values must be 0 or positive integers"),
]


@pytest.mark.parametrize("h", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_input_is_named_with_its_cause(tmp_path, h):
    root = v2(tmp_path) if h.layout == "v2" else make(tmp_path)
    h.build(root)
    started = time.perf_counter()
    problems, _ = problems_of(root)
    assert time.perf_counter() - started < 20  # nothing read beyond the tiny files (huge headers included)
    assert_named(problems, h.case_id, h.file, h.text)


def test_no_read_permission(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    root = make(tmp_path)
    (root / IMG1).chmod(0)
    try:
        assert_named(problems_of(root)[0], C1, IMG1, "permission denied: the file cannot be read")
    finally:
        (root / IMG1).chmod(0o644)


def test_permission_denied_as_the_os_reports_it(tmp_path, monkeypatch):
    """The same path for root, who reads any file: the OS's refusal is what is simulated."""
    from autoseg.dataset import imageio

    root = make(tmp_path)
    denied = str(root / IMG1)

    def refusing_open(path, *args, **kwargs):
        if str(path) == denied:
            raise PermissionError(13, "Permission denied", denied)
        return open(path, *args, **kwargs)

    monkeypatch.setattr(imageio, "open", refusing_open, raising=False)
    assert_named(problems_of(root)[0], C1, IMG1, "permission denied: the file cannot be read")


def test_huge_header_fails_fast_without_reading_pixels(tmp_path, monkeypatch):
    root = make(tmp_path)
    _huge_nifti(root)

    def no_pixels(*args, **kwargs):
        raise AssertionError("pixels were read")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", no_pixels)
    monkeypatch.setattr(sitk, "ReadImage", no_pixels)
    from autoseg.dataset.imageio import ImageReadError, read_image
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match="header declares a 30000 x 30000 x 30000 image"):
        read_image(root / IMG1)
    assert time.perf_counter() - started < 1.0


def test_header_larger_than_its_file_is_refused_before_reading(tmp_path, monkeypatch):
    root = make(tmp_path)
    patch_nifti(root / IMG1, 40, "<8h", [3, 1000, 1000, 1000, 1, 1, 1, 1])  # 4 GB declared, fits memory
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda self: pytest.fail("pixels were read"))
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: pytest.fail("pixels were read"))
    from autoseg.dataset.imageio import ImageReadError, read_image
    with pytest.raises(ImageReadError, match=r"truncated NIfTI file: it holds \d+ of the 4000000352 bytes|memory"):
        read_image(root / IMG1)


# ---------------------------------------------------------------- dataset.json that cannot be parsed


@pytest.mark.parametrize("content,text", [
    ('{"name": "caf\xe9"}'.encode("latin-1"), "dataset.json is not UTF-8 text: byte 0xe9 at offset 13 cannot be decoded"),
    (b'{\n  "name": "x",\n  "labels": {"0": "bg",}\n}',
     "dataset.json is not valid JSON: Expecting property name enclosed in double quotes at line 3, column 24"),
    (b'[{"image": "a.nii.gz"}]', "dataset.json must hold a JSON object {...} at its top level, not a list"),
    (b"  \n", "dataset.json is empty"),
], ids=["not utf-8", "not json", "not an object", "empty"])
def test_unusable_dataset_json_names_the_place(tmp_path, content, text):
    root = make(tmp_path)
    (root / "dataset.json").write_bytes(content)
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    assert [p.file for p in err.value.problems] == [str(root / "dataset.json")]
    assert text in err.value.problems[0].message


def test_dataset_json_with_a_byte_order_mark_works(tmp_path):
    root = make(tmp_path)
    (root / "dataset.json").write_bytes(b"\xef\xbb\xbf" + (root / "dataset.json").read_bytes())
    assert problems_of(root) == ([], [])


# ---------------------------------------------------------------- legitimate inputs that must work


def test_declared_label_in_no_case_is_a_warning(tmp_path, capsys):
    root = make(tmp_path)
    edit_json(root, lambda m: m["labels"].__setitem__("3", "tumour"))
    problems, warnings = problems_of(root)
    assert problems == []
    assert_named(warnings, None, "dataset.json", "label 3 ('tumour') is declared in 'labels' but appears in none of "
                                                 "the 3 label maps; the network will never learn to predict it")
    assert verify_dataset(load_dataset(root)) == []
    assert "warning: dataset.json: label 3 ('tumour')" in capsys.readouterr().err


def test_one_voxel_thick_volumes_verify_and_plan(tmp_path):
    from autoseg.preprocessing.plan_and_preprocess import plan_and_preprocess

    root = make_dataset(tmp_path / "Thin", num_cases=3, shape=(6, 16, 16))
    for rel in [f"{d}/case_{i:03d}.nii.gz" for d in ("imagesTr", "labelsTr") for i in range(3)]:
        transform(root, rel, lambda a: a[3:4])  # still 3D files: one slice thick
    assert problems_of(root) == ([], [])
    prepared = plan_and_preprocess(root, tmp_path / "ws", num_workers=1, plan_only=True, progress=False)
    for config in prepared.plans.configurations.values():
        patch = list(config.patch_size)
        assert len(patch) == 2 or patch[0] == 1, (config.name, patch)


def test_one_voxel_thick_case_among_thick_ones_preprocesses(tmp_path):
    from autoseg.preprocessing.plan_and_preprocess import plan_and_preprocess

    root = make_dataset(tmp_path / "Mixed", num_cases=3, shape=(6, 16, 16))
    for rel in (IMG1, LAB1):
        transform(root, rel, lambda a: a[3:4])
    assert problems_of(root) == ([], [])
    prepared = plan_and_preprocess(root, tmp_path / "ws", num_workers=1, configurations=["3d_fullres"],
                                   progress=False)
    assert prepared.counts == {prepared.plans.configurations["3d_fullres"].data_identifier: 3}


def test_label_values_above_255_verify(tmp_path):
    root = make(tmp_path)
    for i in range(3):
        transform(root, f"labelsTr/case_{i:03d}.nii.gz", lambda a: np.where(a == 2, 300, a.astype(np.uint16)))
    edit_json(root, lambda m: m.__setitem__("labels", {"0": "background", "1": "inner", "300": "outer"}))
    assert problems_of(root) == ([], [])
    assert load_dataset(root).label_values == [0, 1, 300]


def test_unicode_and_spaces_in_names_and_paths(tmp_path):
    root = make(tmp_path / "données patients ü", "Jeu de données")
    renamed = []
    for i, name in enumerate(["patient é 01", "病例 2", "o'brien  3"]):
        for d in ("imagesTr", "labelsTr"):
            (root / d / f"case_{i:03d}.nii.gz").rename(root / d / f"{name}.nii.gz")
        renamed.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
    edit_json(root, lambda m: m.__setitem__("training", renamed))
    spec = load_dataset(root)
    assert sorted(c.case_id for c in spec.cases) == sorted(["patient é 01", "病例 2", "o'brien  3"])
    assert problems_of(root) == ([], [])
    transform(root, "labelsTr/病例 2.nii.gz", lambda a: np.where(a == 2, 9, a).astype(a.dtype))
    assert_named(problems_of(root)[0], "病例 2", "labelsTr/病例 2.nii.gz", "label values not declared")


def test_pixel_types_differing_between_cases(tmp_path):
    root = make(tmp_path)
    transform(root, IMG0, lambda a: a.astype(np.int16))
    transform(root, IMG1, lambda a: a.astype(np.float64))
    transform(root, LAB1, lambda a: a.astype(np.float32))  # float labels holding integer values
    transform(root, "labelsTr/case_002.nii.gz", lambda a: a.astype(np.int32))
    assert problems_of(root) == ([], [])


def test_4d_file_with_one_volume_is_3d(tmp_path):
    root = make(tmp_path)
    sitk.WriteImage(four_d([array(root, IMG1)[0]]), str(root / IMG1))
    assert problems_of(root) == ([], [])


def test_symlink_inside_the_dataset_and_linked_folders_work(tmp_path):
    root = make(tmp_path)
    (root / "store").mkdir()
    (root / IMG1).rename(root / "store" / "case_001.nii.gz")
    (root / IMG1).symlink_to(Path("..") / "store" / "case_001.nii.gz")
    (root / "labelsTr").rename(tmp_path / "other disk")
    (root / "labelsTr").symlink_to(tmp_path / "other disk", target_is_directory=True)
    # a link beside its target in the folder that really holds the labels
    (tmp_path / "other disk" / "case_002.nii.gz").rename(tmp_path / "other disk" / ".stored.nii.gz")
    (tmp_path / "other disk" / "case_002.nii.gz").symlink_to(".stored.nii.gz")
    assert problems_of(root) == ([], [])


# ---------------------------------------------------------------- the command line: one line per problem


def test_cli_reports_hostile_inputs_in_one_line_each(tmp_path, capsys):
    root = make(tmp_path)
    pixdim(root, IMG1, 1, 0.0)
    transform(root, "imagesTr/case_002.nii.gz", lambda a: np.zeros(a.shape, np.uint8))
    rc = main(["plan-and-preprocess", str(root), "--workspace", str(tmp_path / "ws"), "-np", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(lines) == 2, err
    assert "case case_001, imagesTr/case_001.nii.gz: invalid voxel spacing" in lines[0]
    assert "case case_002, imagesTr/case_002.nii.gz: image is all zeros (uint8)" in lines[1]
    assert not (tmp_path / "ws" / "ds" / "plans.json").exists()
