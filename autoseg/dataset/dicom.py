"""DICOM series as input: find the series in a folder, check them, read one as an image.

A scanner archive hands over a folder of single-frame DICOM files (``.dcm`` or extension-less),
often one folder per series, sometimes every series of a study in one folder. Files are grouped
by SeriesInstanceUID wherever they lie below the folder; each image series becomes one
:class:`DicomSeries`. Headers are read with pydicom (no pixels) to check, before any long work,
what SimpleITK's series reader would get wrong without a word: missing slices, mixed
orientations, gantry tilt, multi-frame (enhanced) objects, a lone slice. The pixels and the
geometry (slice order, spacing from the positions, oblique orientation, rescale slope and
intercept) are then SimpleITK's, as for every other image autoseg reads.

Objects that are no scanner volume (structured reports, RT structure sets, presentation
states, DICOMDIR, secondary captures, segmentations, dose maps) and localizer series are left
out with a note.

Output names come from the series, never from the patient unless asked (``identifiers``):
``"series"`` (the default) gives ``{SeriesNumber}_{SeriesDescription}_{uid hash}``,
``"patient"`` gives ``{PatientID}_{StudyDate}_{SeriesNumber}_{SeriesDescription}``.

pydicom comes with the ``dicom`` extra (``pip install "autoseg[dicom]"``); finding out whether a
folder holds DICOM at all needs nothing but the file's first 132 bytes.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from autoseg.dataset.imageio import Geometry, image_to_array
from autoseg.errors import ImageReadError, UserError

DICOM_ENDINGS = (".dcm", ".dicom", ".ima")
IDENTIFIERS = ("series", "patient")

# series positions: a step beyond this many times the median step is a missing slice
MISSING_SLICE_FACTOR = 1.5
# positions off the slice normal by more than this (mm + fraction of the distance along it) are a tilt
TILT_TOLERANCE_MM = 1e-2
TILT_TOLERANCE_FRACTION = 1e-3
ORIENTATION_TOLERANCE = 1e-4

_TAGS = [
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "PatientID", "StudyDate", "SeriesNumber", "SeriesDescription", "Modality", "ImageType",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "NumberOfFrames",
    "SamplesPerPixel",
]

# SOP classes that hold pixels but are no scanner volume to segment: left out with a note
_NOT_SOURCE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "label map segmentation",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT dose",
    "1.2.840.10008.5.1.4.1.1.30": "parametric map",
    "1.2.840.10008.1.3.10": "DICOMDIR",
}
_DICOMDIR = "1.2.840.10008.1.3.10"
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


def _need_pydicom():
    try:
        import pydicom
    except ImportError:
        raise UserError('reading DICOM needs pydicom: pip install "autoseg[dicom]" (installs highdicom and pydicom)') \
            from None
    return pydicom


@dataclass
class DicomSeries:
    """One image series: its files in slice order (the order of the array's z axis) and who it is.

    ``files`` and ``sop_instance_uids`` run along the slice normal (row x column direction), the
    order SimpleITK reads them in, so slice ``k`` of :func:`read_dicom_series`'s array is
    ``files[k]``: a DICOM Segmentation references its source instances through this.
    """

    series_uid: str
    files: list[Path]
    sop_instance_uids: list[str]
    sop_class_uid: str
    study_uid: str
    frame_of_reference_uid: str
    patient_id: str
    study_date: str
    series_number: int | None
    series_description: str
    modality: str
    rows: int
    columns: int
    folder: Path  # the folder holding all its files

    def __post_init__(self) -> None:
        self.files = [Path(f) for f in self.files]
        self.folder = Path(self.folder)

    @property
    def num_slices(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        """How messages name the series: its UID, number, description and folder."""
        what = f"number {self.series_number}" if self.series_number is not None else "no series number"
        desc = f" '{self.series_description}'" if self.series_description else ""
        return f"DICOM series {self.series_uid} ({what}{desc}, {self.modality or 'no modality'}) in {self.folder}"

    def case_id(self, identifiers: str = "series") -> str:
        """The output name: ``series`` -> ``{SeriesNumber}_{SeriesDescription}_{uid hash}``, ``patient``
        -> ``{PatientID}_{StudyDate}_{SeriesNumber}_{SeriesDescription}``; letters, digits, ``-`` and ``_`` only."""
        check_identifiers(identifiers)
        number = str(self.series_number) if self.series_number is not None else "noSeriesNumber"
        parts = [number, _clean(self.series_description, 48)]
        if identifiers == "patient":
            parts = [_clean(self.patient_id, 32) or "noPatientID", _clean(self.study_date, 8) or "noStudyDate"] + parts
        else:
            parts.append(self.uid_hash)
        return "_".join(p for p in parts if p)

    @property
    def uid_hash(self) -> str:
        """8 hex digits of the SeriesInstanceUID's SHA-1: tells series apart without showing the UID."""
        return hashlib.sha1(self.series_uid.encode()).hexdigest()[:8]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["files"] = [str(f) for f in self.files]
        d["folder"] = str(self.folder)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DicomSeries":
        return cls(**{**d, "files": [Path(f) for f in d["files"]], "folder": Path(d["folder"])})


@dataclass
class DicomScan:
    """What :func:`find_dicom_series` found: the usable series, what it left out (``notes``) and the
    series it cannot read (``problems``, one line each; non-empty only with ``strict=False``)."""

    folder: Path
    series: list[DicomSeries]
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def case_ids(self, identifiers: str = "series") -> list[str]:
        """One output name per series (in ``series`` order), made unique by the UID hash where two
        series would share a name."""
        return unique_case_ids(self.series, identifiers)


class DicomSeriesError(UserError):
    """A DICOM series autoseg cannot read correctly; the message names every such series."""

    def __init__(self, problems: Sequence[str], folder: str | os.PathLike):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = "\n".join([f"{folder}: {len(self.problems)} DICOM series cannot be read:"]
                                + [f"  - {p}" for p in self.problems])
        super().__init__(message)


def check_identifiers(identifiers: str) -> None:
    if identifiers not in IDENTIFIERS:
        raise UserError(f"DICOM identifiers must be one of {', '.join(IDENTIFIERS)} (output names from the series "
                        f"only, or with PatientID and StudyDate), got {identifiers!r}")


def _clean(text: Any, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", str(text or "")).strip("_")[:limit].strip("_")


def unique_case_ids(series: Sequence[DicomSeries], identifiers: str = "series") -> list[str]:
    """:meth:`DicomSeries.case_id` of each series, with the UID hash appended where names collide."""
    ids = [s.case_id(identifiers) for s in series]
    counts = Counter(ids)
    ids = [f"{cid}_{s.uid_hash}" if counts[cid] > 1 and not cid.endswith(s.uid_hash) else cid
           for cid, s in zip(ids, series)]
    if len(set(ids)) != len(ids):  # one series found twice: find_dicom_series merges by UID, so only by hand
        raise UserError("two DICOM series share a SeriesInstanceUID: " + ", ".join(sorted(
            c for c, n in Counter(ids).items() if n > 1)))
    return ids


def has_dicom_magic(path: str | os.PathLike) -> bool:
    """Whether the file starts like a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """A DICOM file by its contents (the ``DICM`` marker) or, for files without the preamble, by
    a ``.dcm``/``.dicom``/``.ima`` ending."""
    path = Path(path)
    if path.name.startswith(".") or not path.is_file():
        return False
    return has_dicom_magic(path) or path.name.lower().endswith(DICOM_ENDINGS)


def _walk_files(folder: Path) -> Iterable[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def is_dicom_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` (or a folder below it) holds DICOM files; stops at the first one."""
    folder = Path(folder)
    return folder.is_dir() and any(is_dicom_file(f) for f in _walk_files(folder))


def _read_header(path: Path, pydicom) -> Any | None:
    """The header's tags autoseg checks, or None for a file that is not DICOM."""
    magic = has_dicom_magic(path)
    if not magic and not path.name.lower().endswith(DICOM_ENDINGS):
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS, force=not magic)
    except Exception as e:  # pydicom raises several kinds on a broken file
        raise ImageReadError(f"{path}: unreadable DICOM file ({type(e).__name__}: {str(e)[:200]})") from None
    # pydicom reads a damaged file leniently: what it gives lacks the attributes every object has
    sop = _sop_class(ds)
    if "SOPClassUID" not in ds and sop != _DICOMDIR:
        raise ImageReadError(f"{path}: unreadable DICOM file (no SOP Class UID: damaged, truncated or not DICOM)")
    if ("Rows" not in ds or "Columns" not in ds) and _sop_class_name(sop).endswith("Image Storage"):
        raise ImageReadError(f"{path}: unreadable DICOM file ({_sop_class_name(sop)} without Rows/Columns: "
                             "damaged or truncated)")
    return ds


def _sop_class(ds) -> str:
    uid = ds.get("SOPClassUID", None)
    if uid is None and getattr(ds, "file_meta", None) is not None:
        uid = ds.file_meta.get("MediaStorageSOPClassUID", None)
    return str(uid or "")


def _sop_class_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        name = UID(uid).name
    except Exception:
        name = uid
    return name or uid or "no SOP class"


def _floats(value, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _leave_out_reason(ds) -> str | None:
    """Why an object is no scanner volume to segment (None: it is one)."""
    sop = _sop_class(ds)
    if sop in _NOT_SOURCE_SOP_CLASSES:
        return _NOT_SOURCE_SOP_CLASSES[sop]
    if "Rows" not in ds or "Columns" not in ds:
        return f"non-image ({_sop_class_name(sop)})"
    if sop.startswith(_SECONDARY_CAPTURE_PREFIX):
        return "secondary capture (screenshot or report)"
    image_type = [str(v).upper() for v in (ds.get("ImageType", None) or [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    return None


@dataclass
class _Slice:
    path: Path
    sop_uid: str
    position: np.ndarray | None
    orientation: np.ndarray | None
    frames: int
    samples: int
    rows: int
    columns: int
    pixel_spacing: np.ndarray | None


def _describe(ds, folder: Path) -> str:
    number = ds.get("SeriesNumber", None)
    desc = str(ds.get("SeriesDescription", "") or "")
    what = f"number {number}" if number not in (None, "") else "no series number"
    what += f" '{desc}'" if desc else ""
    return (f"DICOM series {ds.get('SeriesInstanceUID', '?')} ({what}, {ds.get('Modality', '') or 'no modality'}) "
            f"in {folder}")


def _common_folder(paths: Sequence[Path]) -> Path:
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def _series_problem(slices: list[_Slice]) -> tuple[str | None, list[int], list[str]]:
    """(what is wrong or None, slice order along the normal, notes) for one series' slices."""
    notes: list[str] = []
    multi = [s for s in slices if s.frames > 1]
    if multi:
        return (f"multi-frame (enhanced) object with {multi[0].frames} frames ({multi[0].path.name}); only series of "
                "single-frame images are supported: export the series as classic single-frame images"), [], notes
    colour = [s for s in slices if s.samples != 1]
    if colour:
        return (f"colour images ({colour[0].samples} samples per pixel, {colour[0].path.name}): not a CT or MR "
                "volume"), [], notes
    if len(slices) == 1:
        return (f"a series of one slice ({slices[0].path.name}): a volume needs at least two slices"), [], notes
    if any(s.orientation is None for s in slices) or any(s.position is None for s in slices):
        bad = next(s for s in slices if s.orientation is None or s.position is None)
        return (f"{bad.path.name} lacks ImagePositionPatient or ImageOrientationPatient: its place in the volume "
                "is unknown"), [], notes
    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        return f"slices of different sizes {sorted(sizes)} (rows, columns)", [], notes
    spacings = {None if s.pixel_spacing is None else tuple(np.round(s.pixel_spacing, 4).tolist()) for s in slices}
    if len(spacings) > 1:
        return f"slices with different PixelSpacing {sorted(map(str, spacings))}", [], notes
    first = slices[0].orientation
    distinct = []
    for s in slices:
        if not any(np.allclose(s.orientation, o, atol=ORIENTATION_TOLERANCE) for o in distinct):
            distinct.append(s.orientation)
    if len(distinct) > 1:
        return (f"mixed orientations: {len(distinct)} different ImageOrientationPatient values among its "
                f"{len(slices)} slices (several stacks in one series?)"), [], notes
    row, col = first[:3], first[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-3):
        return f"ImageOrientationPatient {list(first)} is not two orthogonal unit vectors", [], notes
    positions = np.stack([s.position for s in slices])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along, positions = along[order], positions[order]
    steps = np.diff(along)
    median = float(np.median(steps))
    repeated = int(np.sum(steps <= max(1e-3, 1e-3 * abs(median))))
    if repeated:
        return (f"its {len(slices)} slices lie at only {len(slices) - repeated} distinct positions (several volumes "
                "in one series: echoes, phases or time points?); split them into one series each"), [], notes
    offsets = positions - positions[0]
    distance = np.abs(along - along[0])
    off_normal = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    if (off_normal > TILT_TOLERANCE_MM + TILT_TOLERANCE_FRACTION * distance).any():
        angle = float(np.degrees(np.arctan(np.max(off_normal[1:] / distance[1:]))))
        return (f"gantry tilt: slice positions run {angle:.2f} degrees off the slice normal; resample it to an "
                "untilted volume first (e.g. with the scanner's or a viewer's tilt correction)"), [], notes
    gaps = np.flatnonzero(steps > MISSING_SLICE_FACTOR * median)
    if gaps.size:
        g = int(gaps[np.argmax(steps[gaps])])
        return (f"missing slices: {gaps.size} gap(s) in the slice positions, the largest {steps[g]:.4g} mm after "
                f"{slices[order[g]].path.name} (median step {median:.4g} mm)"), [], notes
    if steps.max() - steps.min() > 0.01 * median:
        notes.append(f"irregular slice spacing ({steps.min():.4g} to {steps.max():.4g} mm): the volume is read with "
                     "SimpleITK's spacing")
    return None, order, notes


def find_dicom_series(folder: str | os.PathLike, strict: bool = True, progress: bool = True) -> DicomScan:
    """Every image series below ``folder``, checked and with its files in slice order.

    Raises :class:`DicomSeriesError` naming each series that cannot be read as one volume; with
    ``strict=False`` such series are left out and listed in ``DicomScan.problems`` instead. Files
    are read only up to their pixels.
    """
    pydicom = _need_pydicom()
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"DICOM folder {folder} does not exist")
    from tqdm import tqdm

    candidates = [f for f in _walk_files(folder) if f.is_file()]
    groups: dict[str, list[tuple[Path, Any]]] = {}
    left_out: Counter = Counter()
    duplicates = 0
    seen: set[str] = set()
    for path in tqdm(candidates, desc="DICOM headers", dynamic_ncols=True, leave=False,
                     disable=None if progress and len(candidates) > 200 else True):
        ds = _read_header(path, pydicom)
        if ds is None:
            continue
        reason = _leave_out_reason(ds)
        if reason is not None:
            left_out[reason] += 1
            continue
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid and uid in seen:
            duplicates += 1
            continue
        seen.add(uid)
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not series_uid:
            raise ImageReadError(f"{path}: DICOM image without a SeriesInstanceUID")
        groups.setdefault(series_uid, []).append((path, ds))

    notes = [f"left out {n} {reason} file(s)" for reason, n in sorted(left_out.items())]
    if duplicates:
        notes.append(f"left out {duplicates} file(s) repeating a SOPInstanceUID already read")
    series, problems = [], []
    for series_uid, members in sorted(groups.items()):
        first = members[0][1]
        where = _common_folder([p for p, _ in members])
        slices = [_Slice(
            path=p,
            sop_uid=str(ds.get("SOPInstanceUID", "") or ""),
            position=_floats(ds.get("ImagePositionPatient", None), 3),
            orientation=_floats(ds.get("ImageOrientationPatient", None), 6),
            frames=int(ds.get("NumberOfFrames", 1) or 1),
            samples=int(ds.get("SamplesPerPixel", 1) or 1),
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            pixel_spacing=_floats(ds.get("PixelSpacing", None), 2),
        ) for p, ds in members]
        problem, order, series_notes = _series_problem(slices)
        label = _describe(first, where)
        if problem is not None:
            problems.append(f"{label}: {problem}")
            continue
        notes += [f"{label}: {n}" for n in series_notes]
        number = first.get("SeriesNumber", None)
        series.append(DicomSeries(
            series_uid=series_uid,
            files=[slices[i].path for i in order],
            sop_instance_uids=[slices[i].sop_uid for i in order],
            sop_class_uid=_sop_class(first),
            study_uid=str(first.get("StudyInstanceUID", "") or ""),
            frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
            patient_id=str(first.get("PatientID", "") or ""),
            study_date=str(first.get("StudyDate", "") or ""),
            series_number=int(number) if number not in (None, "") else None,
            series_description=str(first.get("SeriesDescription", "") or ""),
            modality=str(first.get("Modality", "") or ""),
            rows=slices[0].rows,
            columns=slices[0].columns,
            folder=where,
        ))
    if problems and strict:
        raise DicomSeriesError(problems, folder)
    if not series and not problems:
        raise UserError(f"{folder} holds no DICOM image series" + (f" ({'; '.join(notes)})" if notes else ""))
    return DicomScan(folder, series, notes, problems)


def read_dicom_series(series: DicomSeries) -> tuple[np.ndarray, Geometry]:
    """The series as ``(1, Z, Y, X)`` (rescaled: HU for CT) plus its geometry, read by SimpleITK from
    ``series.files`` in that order."""
    import SimpleITK as sitk

    missing = [f for f in series.files if not f.is_file()]
    if missing:
        raise ImageReadError(f"{series.describe()}: {missing[0]} no longer exists")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except Exception as e:
        first = [line for line in str(e).strip().splitlines() if line.strip()]
        reason = (first[-1] if first else "")[:200]
        raise ImageReadError(f"{series.describe()}: pixel data could not be read ({reason})") from None
    array, geometry = image_to_array(image)
    if array.shape[1:] != (series.num_slices, series.rows, series.columns):
        raise ImageReadError(f"{series.describe()}: read {array.shape[1:]} voxels, the headers describe "
                             f"{(series.num_slices, series.rows, series.columns)}")
    return array, geometry


def read_source_headers(series: DicomSeries) -> list:
    """The full headers (no pixels) of the series' files as pydicom datasets, in slice order."""
    pydicom = _need_pydicom()
    out = []
    for f in series.files:
        try:
            out.append(pydicom.dcmread(f, stop_before_pixels=True, force=not has_dicom_magic(f)))
        except Exception as e:
            raise ImageReadError(f"{f}: unreadable DICOM file ({type(e).__name__}: {str(e)[:200]})") from None
    return out
