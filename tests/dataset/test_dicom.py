"""DICOM series input: discovery and grouping, the checks before any work, reading as an image,
output names, and a real CT (VerSe) through a scanner-like DICOM series and back."""
import json
import shutil

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from autoseg.dataset.dicom import (
    DicomSeries,
    DicomSeriesError,
    find_dicom_series,
    is_dicom_folder,
    read_dicom_series,
    unique_case_ids,
)
from autoseg.dataset.dicom_write import new_uid, write_dicom_series
from autoseg.dataset.imageio import write_image
from autoseg.errors import ImageReadError, UserError
from tests.dataset.dicom_cases import edit_headers, synthetic_ct, verse_case


def _write(folder, seed=0, **kw):
    hu, geometry = synthetic_ct(seed=seed)
    kw.setdefault("series_description", "CT thorax 2.5mm")
    kw.setdefault("patient_id", "PID123")
    return hu, geometry, write_dicom_series(hu, geometry, folder, study_date="20240131", **kw)


def test_oblique_series_reads_back_exactly(tmp_path):
    hu, geometry, written = _write(tmp_path / "in" / "s1", series_number=4)
    scan = find_dicom_series(tmp_path / "in")
    assert scan.problems == [] and len(scan.series) == 1
    series = scan.series[0]
    assert series.series_uid == written.series_instance_uid
    assert series.sop_instance_uids == written.sop_instance_uids  # slice order = the volume's z order
    assert (series.modality, series.series_number, series.rows, series.columns) == ("CT", 4, 10, 12)
    array, got = read_dicom_series(series)
    assert array.shape == (1,) + hu.shape
    np.testing.assert_array_equal(array[0], hu)  # rescale intercept -1024 applied: HU again
    assert got.matches(geometry, tol=1e-4) == []
    np.testing.assert_allclose(got.direction, geometry.direction, atol=1e-6)


def test_file_order_on_disk_does_not_matter(tmp_path):
    hu, geometry = synthetic_ct(seed=3)
    # reversed names: the lowest name holds the last slice
    written = write_dicom_series(hu, geometry, tmp_path / "s", file_pattern="x{index}")
    for i, f in enumerate(written.files):
        f_new = tmp_path / "s" / f"IMG{len(written.files) - i:03d}"
        shutil.move(f, f_new)
    series = find_dicom_series(tmp_path / "s").series[0]
    array, got = read_dicom_series(series)
    np.testing.assert_array_equal(array[0], hu)
    assert got.matches(geometry, tol=1e-4) == []


def test_series_grouped_by_uid_in_flat_and_nested_folders(tmp_path):
    flat = tmp_path / "flat"
    study, frame = new_uid(), new_uid()
    _write(flat, seed=1, series_number=2, file_pattern="a{index:03d}", study_instance_uid=study,
           frame_of_reference_uid=frame)  # extension-less, as archives export
    _write(flat, seed=2, series_number=3, series_description="CT thorax lung", file_pattern="b{index:03d}.dcm",
           study_instance_uid=study, frame_of_reference_uid=frame)
    (flat / "README.txt").write_text("not DICOM")
    scan = find_dicom_series(flat)
    assert sorted(s.series_number for s in scan.series) == [2, 3]
    assert all(s.num_slices == 6 and s.folder == flat for s in scan.series)

    nested = tmp_path / "nested"
    shutil.copytree(flat, nested / "patient" / "study")
    assert len(find_dicom_series(nested).series) == 2

    # as on a CD: a DICOMDIR beside extension-less files in nested folders
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in sorted(flat.glob("a*")) + sorted(flat.glob("b*.dcm")):
        fs.add(f)
    fs.write(tmp_path / "cd")
    scan = find_dicom_series(tmp_path / "cd")
    assert sorted(s.series_number for s in scan.series) == [2, 3]
    assert scan.notes == ["left out 1 DICOMDIR file(s)"]


def test_output_names_leave_out_patient_identifiers_unless_asked(tmp_path):
    _write(tmp_path / "a", seed=1, series_number=7, series_description="T1 ax/post  contrast")
    scan = find_dicom_series(tmp_path)
    series = scan.series[0]
    name = series.case_id()
    assert name == f"7_T1_ax_post_contrast_{series.uid_hash}"
    assert "PID123" not in name and "20240131" not in name
    assert series.case_id("patient") == "PID123_20240131_7_T1_ax_post_contrast"
    assert scan.case_ids("patient") == ["PID123_20240131_7_T1_ax_post_contrast"]
    with pytest.raises(UserError, match="identifiers"):
        series.case_id("everything")


def test_output_names_stay_unique(tmp_path):
    # two studies of one patient on one day, both with a series 2 'CT': the patient names collide
    _write(tmp_path / "a", seed=1, series_number=2, series_description="CT")
    _write(tmp_path / "b", seed=2, series_number=2, series_description="CT")
    scan = find_dicom_series(tmp_path)
    names = scan.case_ids("patient")
    assert len(set(names)) == 2 and all(n.startswith("PID123_20240131_2_CT_") for n in names)
    assert len(set(scan.case_ids())) == 2
    assert unique_case_ids(scan.series[:1], "patient") == ["PID123_20240131_2_CT"]


def test_is_dicom_folder(tmp_path):
    hu, geometry = synthetic_ct()
    write_image(hu, geometry, tmp_path / "nifti" / "case.nii.gz")
    assert not is_dicom_folder(tmp_path / "nifti")
    (tmp_path / "empty").mkdir()
    assert not is_dicom_folder(tmp_path / "empty")
    assert not is_dicom_folder(tmp_path / "missing")
    write_dicom_series(hu, geometry, tmp_path / "dcm" / "p1" / "s1", file_pattern="{index}")
    assert is_dicom_folder(tmp_path / "dcm")


def test_non_image_objects_and_localizers_are_left_out_with_a_note(tmp_path):
    _, _, written = _write(tmp_path / "ct")
    sr = pydicom.Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    sr.SOPInstanceUID = new_uid()
    sr.StudyInstanceUID = written.study_instance_uid
    sr.SeriesInstanceUID = new_uid()
    sr.Modality = "SR"
    sr.file_meta = pydicom.dataset.FileMetaDataset()
    sr.file_meta.MediaStorageSOPClassUID = sr.SOPClassUID
    sr.file_meta.MediaStorageSOPInstanceUID = sr.SOPInstanceUID
    sr.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    sr.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    hu, geometry = synthetic_ct(shape=(2, 10, 12), seed=5)
    scout = write_dicom_series(hu, geometry, tmp_path / "scout")
    edit_headers(scout.files, lambda i, ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))

    scan = find_dicom_series(tmp_path)
    assert [s.series_uid for s in scan.series] == [written.series_instance_uid]
    assert "left out 1 non-image (Basic Text SR Storage) file(s)" in scan.notes
    assert "left out 2 localizer file(s)" in scan.notes


def _series_with(tmp_path, edit=None, shape=(6, 10, 12), drop=None):
    hu, geometry = synthetic_ct(shape=shape, seed=4)
    written = write_dicom_series(hu, geometry, tmp_path / "bad", series_description="broken one", series_number=9)
    if edit is not None:
        edit_headers(written.files, edit)
    if drop is not None:
        for i in drop:
            (tmp_path / "bad" / f"IM{i:04d}.dcm").unlink()
    return written


def _tilt(i, ds):
    # an axial gantry-tilted CT: rows along x, columns tilted 12 degrees, positions straight along z
    t = np.radians(12)
    ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(t)), float(-np.sin(t))]
    ds.ImagePositionPatient = [0, 0, 2.5 * i]


def _mixed(i, ds):
    if i == 3:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _multiframe(i, ds):
    if i == 0:
        ds.NumberOfFrames = 2


def _repeat(i, ds):
    if i == 1:
        ds.ImagePositionPatient = pydicom.dcmread(ds.filename.replace("IM0001", "IM0000")).ImagePositionPatient


def _spacing(i, ds):
    if i == 2:
        ds.PixelSpacing = [0.5, 0.5]


def _no_position(i, ds):
    if i == 4:
        del ds.ImagePositionPatient


@pytest.mark.parametrize("kind,kw,phrase", [
    ("missing", dict(drop=[2, 3]), "missing slices: 1 gap"),
    ("mixed", dict(edit=_mixed), "mixed orientations: 2 different ImageOrientationPatient"),
    ("tilt", dict(edit=_tilt), "gantry tilt: slice positions run 12.00 degrees off the slice normal"),
    ("multiframe", dict(edit=_multiframe), "multi-frame (enhanced) object with 2 frames"),
    ("one slice", dict(shape=(1, 10, 12)), "a series of one slice"),
    ("repeated", dict(edit=_repeat), "6 slices lie at only 5 distinct positions"),
    ("spacing", dict(edit=_spacing), "slices with different PixelSpacing"),
    ("colour", dict(edit=lambda i, ds: setattr(ds, "SamplesPerPixel", 3) if i == 1 else None),
     "colour images (3 samples per pixel, IM0001.dcm)"),
    ("no position", dict(edit=_no_position), "IM0004.dcm lacks ImagePositionPatient or ImageOrientationPatient"),
])
def test_unsupported_series_named_before_reading_pixels(tmp_path, kind, kw, phrase):
    written = _series_with(tmp_path, **kw)
    with pytest.raises(DicomSeriesError) as err:
        find_dicom_series(tmp_path)
    message = str(err.value)
    assert phrase in message
    # the series by UID, number, description and folder, on one line
    assert f"DICOM series {written.series_instance_uid} (number 9 'broken one', CT) in {tmp_path / 'bad'}" in message
    assert "\n" not in message


def test_not_strict_skips_unsupported_series_and_lists_them(tmp_path):
    _series_with(tmp_path, drop=[2])
    _, _, good = _write(tmp_path / "good")
    scan = find_dicom_series(tmp_path, strict=False)
    assert [s.series_uid for s in scan.series] == [good.series_instance_uid]
    assert len(scan.problems) == 1 and "missing slices" in scan.problems[0]
    with pytest.raises(DicomSeriesError):
        find_dicom_series(tmp_path)


def test_several_bad_series_are_all_named(tmp_path):
    _series_with(tmp_path / "x", drop=[2])
    _series_with(tmp_path / "y", shape=(1, 10, 12))
    with pytest.raises(DicomSeriesError) as err:
        find_dicom_series(tmp_path)
    assert "2 DICOM series cannot be read" in str(err.value)
    assert "missing slices" in str(err.value) and "one slice" in str(err.value)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the garbage it is given
def test_broken_file_and_empty_folder_are_named(tmp_path):
    _write(tmp_path / "s")
    broken = tmp_path / "s" / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    with pytest.raises(ImageReadError, match="broken.dcm: unreadable DICOM file"):
        find_dicom_series(tmp_path)
    broken.write_bytes((tmp_path / "s" / "IM0000.dcm").read_bytes()[:200])  # cut inside the header
    with pytest.raises(ImageReadError, match="broken.dcm: unreadable DICOM file"):
        find_dicom_series(tmp_path)
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match="holds no DICOM image series"):
        find_dicom_series(tmp_path / "none")


def test_series_to_dict_round_trip(tmp_path):
    _write(tmp_path / "s")
    series = find_dicom_series(tmp_path).series[0]
    d = json.loads(json.dumps(series.to_dict()))
    assert DicomSeries.from_dict(d) == series


@pytest.mark.parametrize("case", ["verse007", "verse005", "verse006", "verse008"])
def test_verse_ct_as_scanner_series_reads_back_same_hu_and_geometry(tmp_path, case):
    """A real CT (VerSe; 007 is the oblique one) written as a scanner-like series: int16 pixels with
    rescale intercept -1024, one file per slice; read back through the DICOM reader: same HU, same geometry."""
    hu, _, geometry, _, _ = verse_case(case)
    written = write_dicom_series(hu, geometry, tmp_path / "ct", patient_id="VERSE007", series_number=2,
                                 series_description="CT spine sag 3mm")
    ds = pydicom.dcmread(written.files[0])
    assert (ds.Modality, ds.SOPClassUID, ds.RescaleIntercept, ds.RescaleSlope) == ("CT", "1.2.840.10008.5.1.4.1.1.2",
                                                                                   -1024, 1)
    assert ds.pixel_array.dtype == np.int16 and ds.PixelRepresentation == 1
    assert ds.FrameOfReferenceUID == written.frame_of_reference_uid and ds.InstanceNumber == 1
    np.testing.assert_array_equal(ds.pixel_array, hu[0] + 1024)  # stored values, not HU

    series = find_dicom_series(tmp_path).series[0]
    array, got = read_dicom_series(series)
    np.testing.assert_array_equal(array[0], hu)
    assert got.matches(geometry, tol=1e-3) == []
    if case == "verse007":  # really oblique: no axis along a patient axis
        assert np.abs(np.asarray(got.direction)).max(initial=0) < 0.9995
