"""DICOM-SEG output: one segment per present label named from dataset.json, the source series
referenced instance by instance, and the label map read back exactly (also for a real CT)."""
import json

import numpy as np
import pytest

hd = pytest.importorskip("highdicom")
import pydicom

from autoseg.dataset.dicom import find_dicom_series, read_dicom_series
from autoseg.dataset.dicom_write import write_dicom_series
from autoseg.dataset.imageio import read_label
from autoseg.inference.dicom_seg import (
    DicomSegInfo,
    SegmentInfo,
    dicom_seg_name,
    read_dicom_seg,
    write_dicom_seg,
)
from autoseg.inference.export import write_prediction
from tests.dataset.dicom_cases import synthetic_ct, verse_case

VALUES = [0, 3, 7, 12]
NAMES = ["background", "liver", "spleen", "left kidney"]


def _series(tmp_path, shape=(6, 10, 12)):
    hu, geometry = synthetic_ct(shape=shape, seed=2)
    write_dicom_series(hu, geometry, tmp_path / "ct", patient_id="PID9", patient_name="Doe^Jane", series_number=5,
                       series_description="CT abdomen")
    return find_dicom_series(tmp_path / "ct").series[0]


def _labels(shape=(6, 10, 12)):
    seg = np.zeros(shape, np.uint8)
    seg[1:4, 2:6, 2:7] = 3
    seg[2:5, 6:9, 5:11] = 12  # 7 (spleen) is absent
    return seg


def test_segments_of_present_labels_named_and_read_back(tmp_path):
    series = _series(tmp_path)
    seg = _labels()
    info = write_dicom_seg(seg, series, VALUES, NAMES, tmp_path / "out" / dicom_seg_name("case"), model_name="unet")
    assert info.segments == [SegmentInfo(1, 3, "liver"), SegmentInfo(2, 12, "left kidney")]
    assert info.label_values() == {1: 3, 2: 12}
    assert not list((tmp_path / "out").glob(".partial*"))

    back, read_info = read_dicom_seg(info.path, series.sop_instance_uids)
    np.testing.assert_array_equal(back, seg)
    assert read_info == info

    ds = hd.seg.segread(info.path)  # highdicom parses (and so checks) the object
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY"
    assert [(s.SegmentNumber, s.SegmentLabel, s.SegmentDescription) for s in ds.SegmentSequence] == [
        (1, "liver", "label value 3"), (2, "left kidney", "label value 12")]
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "autoseg" and algorithm.AlgorithmVersion
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    # same patient, study and frame of reference; the source series referenced instance by instance
    source = pydicom.dcmread(series.files[0], stop_before_pixels=True)
    assert (ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (
        source.PatientID, source.StudyInstanceUID, source.FrameOfReferenceUID)
    assert ds.SeriesNumber == 1005 and ds.SeriesInstanceUID != series.series_uid
    referenced = ds.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.series_uid
    assert [r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence] == series.sop_instance_uids
    frame_sources = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                     for f in ds.PerFrameFunctionalGroupsSequence}
    assert frame_sources <= set(series.sop_instance_uids)


def test_dicom_seg_reads_back_to_the_nifti_label_map(tmp_path):
    """What predict writes for a DICOM case: the NIfTI (in the series' geometry) and the DICOM-SEG
    hold the same label map."""
    series = _series(tmp_path)
    _, geometry = read_dicom_series(series)
    seg = _labels()
    write_prediction(seg, geometry, tmp_path / "case.nii.gz")
    info = write_dicom_seg(seg, series, VALUES, NAMES, tmp_path / "case.seg.dcm")
    nifti, nifti_geometry = read_label(tmp_path / "case.nii.gz")
    back, _ = read_dicom_seg(info.path, series.sop_instance_uids)
    np.testing.assert_array_equal(back, nifti)
    assert nifti_geometry.matches(geometry) == []


def test_empty_prediction_keeps_one_empty_segment_per_label(tmp_path):
    series = _series(tmp_path)
    info = write_dicom_seg(np.zeros((6, 10, 12), np.uint8), series, VALUES, NAMES, tmp_path / "empty.seg.dcm")
    assert [s.label_value for s in info.segments] == [3, 7, 12]
    back, _ = read_dicom_seg(info.path, series.sop_instance_uids)
    assert back.shape == (6, 10, 12) and not back.any()


def test_wrong_inputs_are_refused(tmp_path):
    series = _series(tmp_path)
    with pytest.raises(ValueError, match="not the series"):
        write_dicom_seg(np.zeros((5, 10, 12), np.uint8), series, VALUES, NAMES, tmp_path / "x.dcm")
    bad = _labels()
    bad[0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"label value\(s\) \[5\]"):
        write_dicom_seg(bad, series, VALUES, NAMES, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_info_to_dict_round_trip(tmp_path):
    series = _series(tmp_path)
    info = write_dicom_seg(_labels(), series, VALUES, NAMES, tmp_path / "a.seg.dcm")
    assert DicomSegInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_verse_ct_prediction_as_dicom_seg_reads_back_exactly(tmp_path):
    """The must-show: a real CT (VerSe, oblique) as a scanner-like DICOM series; its label map
    (standing in for a prediction) as DICOM-SEG; highdicom reads it back to the same labels, with
    the segment labels the dataset's label names."""
    hu, label, geometry, values, names = verse_case()
    write_dicom_series(hu, geometry, tmp_path / "ct", patient_id="VERSE007", series_number=2,
                       series_description="CT spine sag 3mm")
    series = find_dicom_series(tmp_path / "ct").series[0]
    image, got = read_dicom_series(series)
    np.testing.assert_array_equal(image[0], hu)
    assert got.matches(geometry, tol=1e-3) == []

    info = write_dicom_seg(label, series, values, names, tmp_path / "out" / dicom_seg_name(series.case_id()),
                           model_name="unet__3d_fullres")
    present = sorted(int(v) for v in np.unique(label) if v != 0)
    assert [s.label_value for s in info.segments] == present

    seg = hd.seg.segread(info.path)
    by_number = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    assert by_number == {s.segment_number: dict(zip(values, names))[s.label_value] for s in info.segments}
    numbered = seg.get_pixels_by_source_instance(series.sop_instance_uids, combine_segments=True,
                                                 assert_missing_frames_are_empty=True)
    lookup = np.zeros(max(info.label_values()) + 1, np.int64)
    for number, value in info.label_values().items():
        lookup[number] = value
    np.testing.assert_array_equal(lookup[numbered], label)

    # and through the NIfTI predict writes beside it
    write_prediction(label, got, tmp_path / "out" / "case.nii.gz")
    nifti, _ = read_label(tmp_path / "out" / "case.nii.gz")
    back, _ = read_dicom_seg(info.path, series.sop_instance_uids)
    np.testing.assert_array_equal(back, nifti)


def test_sources_missing_optional_patient_and_study_attributes(tmp_path):
    """Some exports drop empty type-2 attributes altogether; the SEG is still written."""
    from tests.dataset.dicom_cases import edit_headers

    series = _series(tmp_path)
    dropped = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName", "StudyTime")

    def drop(i, ds):
        for keyword in dropped:
            if keyword in ds:
                delattr(ds, keyword)

    edit_headers(series.files, drop)
    info = write_dicom_seg(_labels(), series, VALUES, NAMES, tmp_path / "a.seg.dcm")
    back, _ = read_dicom_seg(info.path, series.sop_instance_uids)
    np.testing.assert_array_equal(back, _labels())
