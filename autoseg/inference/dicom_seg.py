"""A label map as a DICOM Segmentation (DICOM-SEG) of its source series, through highdicom.

highdicom is the maintained library for writing DICOM-SEG from Python (by the Imaging Data
Commons team; it validates what it writes against the standard's IOD while building it), so
autoseg builds the object with it rather than by hand.

One segment per foreground label present in the prediction, numbered 1, 2, ... in label-value
order, labelled with the label's name from dataset.json. A segment's label value is recorded in
its SegmentDescription (``label value 16``) and in the returned :class:`DicomSegInfo`, so
:func:`read_dicom_seg` gives back the label values, not the segment numbers. The object is a
BINARY segmentation (the type every viewer reads) referencing each source instance frame by
frame, with the algorithm identified as ``autoseg`` and its version. An empty prediction keeps
one (empty) segment per foreground label: a DICOM-SEG needs a segment, and "nothing found" is a
result a clinician should see.
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from autoseg.atomic import atomic_path
from autoseg.dataset.dicom import DicomSeries, read_source_headers
from autoseg.errors import UserError

_LABEL_VALUE = re.compile(r"label value (-?\d+)")
# distinguishable display colours (RGB), cycled over the segments
_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
            (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
            (0, 0, 128), (128, 128, 128)]
# Type 2 attributes highdicom copies from the source; some exports leave them out altogether
_COPIED_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                 "StudyDate", "StudyTime", "ReferringPhysicianName")


def require_highdicom() -> None:
    """Fail early, with the install line, when highdicom is missing."""
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise UserError('DICOM-SEG output needs highdicom: pip install "autoseg[dicom]"') from None


def _autoseg_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autoseg")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class SegmentInfo:
    segment_number: int
    label_value: int
    label_name: str


@dataclass
class DicomSegInfo:
    """One DICOM-SEG written: its UIDs, the series it segments, and segment number -> label value."""

    path: str
    sop_instance_uid: str
    series_instance_uid: str
    source_series_uid: str
    segments: list[SegmentInfo] = field(default_factory=list)

    def label_values(self) -> dict[int, int]:
        """Segment number -> label value."""
        return {s.segment_number: s.label_value for s in self.segments}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DicomSegInfo":
        return cls(**{**d, "segments": [SegmentInfo(**s) for s in d["segments"]]})


def dicom_seg_name(case_id: str) -> str:
    """The DICOM-SEG file of a case, beside its ``CASE<ending>`` label map."""
    return f"{case_id}.seg.dcm"


def _complete_headers(headers: list) -> list:
    for ds in headers:
        for keyword in _COPIED_TYPE2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return headers


def write_dicom_seg(
    segmentation: np.ndarray,
    series: DicomSeries,
    label_values: Sequence[int],
    label_names: Sequence[str],
    path: str | os.PathLike,
    *,
    model_name: str = "autoseg",
    series_number: int | None = None,
    series_description: str | None = None,
    property_codes: Mapping[int, tuple[Any, Any]] | None = None,
    source_headers: Sequence[Any] | None = None,
) -> DicomSegInfo:
    """Write ``segmentation`` (``(Z, Y, X)`` label values, in ``series``' slice order as
    :func:`autoseg.dataset.dicom.read_dicom_series` reads it) as a DICOM-SEG at ``path``, atomically.

    ``label_values`` / ``label_names`` are the model's (``plans.label_values``, ``plans.label_names``;
    value 0 is background). ``property_codes`` maps a label value to its (category, type) codes
    (pydicom ``Code`` or highdicom ``CodedConcept``); others get SNOMED "Tissue"/"Tissue", the
    usual placeholder for a structure without a coded meaning. ``source_headers``: the series'
    headers if already read (else read here, without pixels). The SEG's series number defaults to
    the source's plus 1000.
    """
    require_highdicom()
    import highdicom as hd
    from pydicom.sr.codedict import codes

    segmentation = np.asarray(segmentation)
    if segmentation.ndim == 4 and segmentation.shape[0] == 1:
        segmentation = segmentation[0]
    expected = (series.num_slices, series.rows, series.columns)
    if segmentation.shape != expected:
        raise ValueError(f"segmentation shape {segmentation.shape} is not the series' (slices, rows, columns) "
                         f"{expected}: {series.describe()}")
    values = [int(v) for v in label_values]
    if len(values) != len(label_names):
        raise ValueError(f"{len(values)} label values but {len(label_names)} label names")
    names = dict(zip(values, (str(n) for n in label_names)))
    present = set(np.unique(segmentation).tolist())
    unknown = sorted(present - set(values))
    if unknown:
        raise ValueError(f"segmentation holds label value(s) {unknown} that are not among {values}")
    foreground = sorted(v for v in values if v != 0)
    if not foreground:
        raise ValueError("the labels have no foreground value: nothing to write as a segment")
    chosen = [v for v in foreground if v in present] or foreground

    segments = [SegmentInfo(i + 1, v, names[v]) for i, v in enumerate(chosen)]
    lookup = np.zeros(max(values) - min(0, min(values)) + 1, dtype=np.uint16)
    offset = -min(0, min(values))
    for s in segments:
        lookup[s.label_value + offset] = s.segment_number
    numbered = lookup[segmentation.astype(np.int64) + offset]
    numbered = numbered.astype(np.uint8 if len(segments) < 256 else np.uint16)

    version = _autoseg_version()
    algorithm = hd.AlgorithmIdentificationSequence(
        name="autoseg", version=version, family=codes.cid7162.ArtificialIntelligence,
        parameters={"model": model_name[:64]})
    # older highdicom versions have no recommended display colour: segments go without
    with_colour = "display_color" in inspect.signature(hd.seg.SegmentDescription).parameters
    descriptions = []
    for s in segments:
        category, kind = (property_codes or {}).get(s.label_value, (codes.SCT.Tissue, codes.SCT.Tissue))
        colour = {"display_color": hd.color.CIELabColor.from_rgb(*_PALETTE[(s.segment_number - 1) % len(_PALETTE)])} \
            if with_colour else {}
        desc = hd.seg.SegmentDescription(
            segment_number=s.segment_number,
            segment_label=s.label_name[:64] or f"label {s.label_value}",
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"{s.label_name[:48]} ({s.label_value})",
            **colour,
        )
        desc.SegmentDescription = f"label value {s.label_value}"
        descriptions.append(desc)

    headers = _complete_headers(list(source_headers) if source_headers is not None else read_source_headers(series))
    if [str(h.SOPInstanceUID) for h in headers] != series.sop_instance_uids:
        raise ValueError(f"source headers are not the series' instances in slice order: {series.describe()}")
    number = series_number if series_number is not None else (series.series_number or 0) + 1000
    seg = hd.seg.Segmentation(
        source_images=headers,
        pixel_array=numbered,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="autoseg",
        manufacturer_model_name=model_name[:64],
        software_versions=version,
        device_serial_number="none",
        content_label="AUTOSEG",
        content_description="automatic segmentation",
        series_description=(series_description or f"autoseg {model_name}")[:64],
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return DicomSegInfo(str(path), str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID), series.series_uid, segments)


def read_dicom_seg(path: str | os.PathLike, source_sop_instance_uids: Sequence[str]) -> tuple[np.ndarray, DicomSegInfo]:
    """A DICOM-SEG as a ``(Z, Y, X)`` map of label values, slice ``k`` that of source instance
    ``source_sop_instance_uids[k]`` (e.g. ``DicomSeries.sop_instance_uids``), plus its segments.

    A segment's label value comes from its SegmentDescription ``label value N`` (as written by
    :func:`write_dicom_seg`), else it is the segment number.
    """
    require_highdicom()
    import highdicom as hd

    seg = hd.seg.segread(path)
    segments = []
    for item in seg.SegmentSequence:
        m = _LABEL_VALUE.fullmatch(str(getattr(item, "SegmentDescription", "") or ""))
        number = int(item.SegmentNumber)
        segments.append(SegmentInfo(number, int(m.group(1)) if m else number, str(item.SegmentLabel)))
    numbered = seg.get_pixels_by_source_instance(
        list(source_sop_instance_uids), combine_segments=True, assert_missing_frames_are_empty=True)
    values = np.array([s.label_value for s in segments], dtype=np.int64)
    lookup = np.zeros(max([s.segment_number for s in segments]) + 1, dtype=np.int64)
    lookup[[s.segment_number for s in segments]] = values
    labels = lookup[numbered.astype(np.int64)]
    dtype = np.uint8 if labels.min(initial=0) >= 0 and labels.max(initial=0) < 256 else np.int32
    source = seg.ReferencedSeriesSequence[0].SeriesInstanceUID if "ReferencedSeriesSequence" in seg else ""
    info = DicomSegInfo(str(path), str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID), str(source), segments)
    return labels.astype(dtype), info
