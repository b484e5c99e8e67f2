"""Image I/O keeps geometry, reads every layout as (C, Z, Y, X), refuses broken files, writes atomically."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset import imageio
from autoseg.dataset.imageio import (
    Geometry,
    count_nonfinite_nifti,
    read_image,
    read_label,
    write_image,
)
from autoseg.errors import ImageReadError

# An oblique direction: 30 degrees about z, then 10 about x (ITK row-major 3x3).
_a, _b = np.deg2rad(30), np.deg2rad(10)
_rz = np.array([[np.cos(_a), -np.sin(_a), 0], [np.sin(_a), np.cos(_a), 0], [0, 0, 1]])
_rx = np.array([[1, 0, 0], [0, np.cos(_b), -np.sin(_b)], [0, np.sin(_b), np.cos(_b)]])
OBLIQUE = tuple(float(v) for v in (_rz @ _rx).ravel())
AXIS_ALIGNED = (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", [AXIS_ALIGNED, OBLIQUE], ids=["axis", "oblique"])
def test_3d_round_trip_keeps_geometry(tmp_path, ending, direction):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(5, 7, 9)).astype(np.float32)
    geo = Geometry((3.0, 0.7, 0.5), (-12.5, 40.25, 7.0), direction, 3)
    path = tmp_path / f"img{ending}"
    write_image(arr, geo, path)
    back, geo2 = read_image(path)
    assert back.shape == (1, 5, 7, 9)
    np.testing.assert_allclose(back[0], arr, rtol=1e-6)
    np.testing.assert_allclose(geo2.spacing, geo.spacing, rtol=1e-6)
    np.testing.assert_allclose(geo2.origin, geo.origin, atol=1e-4)
    np.testing.assert_allclose(geo2.direction, geo.direction, atol=1e-5)
    assert geo2.file_ndim == 3 and geo.matches(geo2) == []
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_mhd_header_points_at_its_final_data_file(tmp_path):
    write_image(np.zeros((2, 3, 4), np.int16), Geometry((1.0, 1.0, 1.0), (0, 0, 0), AXIS_ALIGNED, 3), tmp_path / "a.mhd")
    header = (tmp_path / "a.mhd").read_text(errors="replace")
    data_line = next(line for line in header.splitlines() if line.startswith("ElementDataFile"))
    assert data_line.split("=")[1].strip() == min(p.name for p in tmp_path.iterdir() if p.name != "a.mhd")
    assert "partial" not in header


def test_png_2d_round_trip(tmp_path):
    arr = (np.arange(6 * 8).reshape(1, 6, 8) % 3).astype(np.uint8)
    geo = Geometry((1.0, 0.5, 0.25), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2)
    write_image(arr, geo, tmp_path / "lab.png")
    back, geo2 = read_image(tmp_path / "lab.png")
    assert back.shape == (1, 1, 6, 8) and back.dtype == np.uint8
    np.testing.assert_array_equal(back[0], arr)
    assert geo2.file_ndim == 2
    lab, _ = read_label(tmp_path / "lab.png")
    assert lab.shape == (1, 6, 8)


def test_rgb_png_reads_as_three_channels(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "rgb.png"))
    arr, geo = read_image(tmp_path / "rgb.png")
    assert arr.shape == (3, 1, 6, 8) and geo.file_ndim == 2
    np.testing.assert_array_equal(arr[:, 0], np.moveaxis(rgb, -1, 0))
    with pytest.raises(ImageReadError, match="label file has 3 channels"):
        read_label(tmp_path / "rgb.png")


def test_4d_nifti_reads_as_channels(tmp_path):
    chans = [np.full((4, 5, 6), c, np.float32) for c in range(3)]
    vol = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in chans])
    vol.SetSpacing((0.5, 0.6, 2.0, 1.0))
    sitk.WriteImage(vol, str(tmp_path / "mc.nii.gz"))
    arr, geo = read_image(tmp_path / "mc.nii.gz")
    assert arr.shape == (3, 4, 5, 6)
    assert [float(arr[c].mean()) for c in range(3)] == [0.0, 1.0, 2.0]
    assert geo.spacing == pytest.approx((2.0, 0.6, 0.5)) and len(geo.direction) == 9 and len(geo.origin) == 3


def test_dicom_folder(tmp_path):
    arr = (np.arange(3 * 4 * 5).reshape(3, 4, 5) * 10).astype(np.int16)
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for z in range(arr.shape[0]):
        sl = sitk.GetImageFromArray(arr[z])
        sl.SetSpacing((0.8, 0.9))
        tags = {
            "0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.2", "0020|000e": series_uid,
            "0020|0032": f"10\\20\\{z * 2.5}", "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0013": str(z + 1),
            "0018|0050": "2.5", "0008|0018": f"{series_uid}.{z + 1}", "0028|0030": "0.9\\0.8",
        }
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"slice{z}.dcm"))
        writer.Execute(sl)
    back, geo = read_image(folder)
    assert back.shape == (1, 3, 4, 5)
    np.testing.assert_array_equal(back[0], arr)
    assert geo.spacing == pytest.approx((2.5, 0.9, 0.8), rel=1e-3)
    assert geo.origin == pytest.approx((10.0, 20.0, 0.0))


def test_empty_folder_is_not_a_dicom_series(tmp_path):
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path)


def _nifti_bytes(tmp_path, dtype=np.float32) -> bytes:
    # noise does not compress, so cutting the file in half cuts into the voxel data
    arr = np.random.default_rng(0).uniform(1, 2, (6, 7, 8)).astype(dtype)
    write_image(arr, Geometry((1.0, 1.0, 1.0), (0, 0, 0), AXIS_ALIGNED, 3), tmp_path / "ok.nii.gz")
    return (tmp_path / "ok.nii.gz").read_bytes()


def test_truncated_nifti_gz_is_refused(tmp_path):
    data = _nifti_bytes(tmp_path)
    (tmp_path / "half.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"half.nii.gz: truncated NIfTI file: it holds \d+ of the \d+ bytes"):
        read_image(tmp_path / "half.nii.gz")


def test_truncated_plain_nifti_is_refused(tmp_path):
    raw = gzip.decompress(_nifti_bytes(tmp_path))
    (tmp_path / "cut.nii").write_bytes(raw[:-100])
    with pytest.raises(ImageReadError, match=f"holds {len(raw) - 100} of the {len(raw)} bytes"):
        read_image(tmp_path / "cut.nii")


def test_multi_member_gzip_nifti_is_accepted(tmp_path):
    raw = gzip.decompress(_nifti_bytes(tmp_path))
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    arr, _ = read_image(tmp_path / "multi.nii.gz")
    assert arr.shape == (1, 6, 7, 8) and float(arr.min()) >= 1.0


def test_text_file_is_refused_with_a_short_reason(tmp_path):
    (tmp_path / "fake.nii.gz").write_text("not an image")
    with pytest.raises(ImageReadError) as info:
        read_image(tmp_path / "fake.nii.gz")
    message = str(info.value)
    assert "fake.nii.gz" in message and "no image reader recognises its contents" in message
    assert ".cxx" not in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.nii.gz")


def test_nonfinite_voxels_of_nifti_are_counted_from_raw_data(tmp_path):
    arr = np.ones((3, 4, 5), np.float32)
    arr[0, 0, :3] = np.nan
    arr[1, 1, 1] = -np.inf
    img = sitk.GetImageFromArray(arr)
    sitk.WriteImage(img, str(tmp_path / "nan.nii.gz"))
    assert count_nonfinite_nifti(tmp_path / "nan.nii.gz") == (3, 1)
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.int16)), str(tmp_path / "int.nii.gz"))
    assert count_nonfinite_nifti(tmp_path / "int.nii.gz") is None
    assert count_nonfinite_nifti(tmp_path / "x.nrrd") is None


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    geo = Geometry((1.0, 1.0, 1.0), (0, 0, 0), AXIS_ALIGNED, 3)

    def half_write(img, path, useCompression=True):
        Path(path).write_bytes(b"half an image")
        raise RuntimeError("disk full")

    monkeypatch.setattr(imageio.sitk, "WriteImage", half_write)
    for name in ("out.nii.gz", "out.mhd"):
        with pytest.raises(RuntimeError, match="disk full"):
            write_image(np.zeros((2, 2, 2), np.float32), geo, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_wrong_dimensions(tmp_path):
    with pytest.raises(ValueError, match=r"expects \(Z, Y, X\)"):
        write_image(np.zeros((2, 2)), Geometry((1.0, 1.0, 1.0), (0, 0, 0), AXIS_ALIGNED, 3), tmp_path / "x.nii.gz")
    assert list(tmp_path.iterdir()) == []
