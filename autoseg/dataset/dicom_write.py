"""Write a volume as a DICOM series, one single-frame file per slice, with the tags a scanner writes.

For turning a NIfTI (a research dataset, a benchmark case) into the DICOM a scanner archive
would hand over, so the DICOM path of ``autoseg predict`` can be tried and tested end to end.
Pixels and geometry go through SimpleITK's GDCM writer, one 2D image per slice carrying its own
ImagePositionPatient and the volume's ImageOrientationPatient (SimpleITK's "Dicom Series From
Array" recipe). Only SimpleITK is needed: UIDs are UUID-derived (``2.25.<uuid>``).

What it writes is marked as converted (ImageType DERIVED\\SECONDARY, Manufacturer "autoseg",
ConversionType WSD): it must never pass for an acquisition.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.atomic import atomic_path
from autoseg.dataset.imageio import Geometry

SOP_CLASS_UIDS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
}
_INT16 = (-32768, 32767)


def new_uid() -> str:
    """A globally unique DICOM UID without a registered root: ``2.25.`` + a random UUID as an integer."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class WrittenSeries:
    """What :func:`write_dicom_series` wrote: its files in slice order and the UIDs it used."""

    folder: str
    files: list[str]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    sop_instance_uids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WrittenSeries":
        return cls(**d)


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters (the DS limit), as precise as fits."""
    value = float(value)
    if abs(value) < 1e-9:
        return "0"
    for digits in range(10, -1, -1):
        text = f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} does not fit a DICOM decimal string")


def _text(value: str, limit: int) -> str:
    # backslash separates DICOM values: a description holding one would split into several
    return str(value).replace("\\", "/")[:limit]


def write_dicom_series(
    volume: np.ndarray,
    geometry: Geometry,
    folder: str | os.PathLike,
    *,
    modality: str = "CT",
    patient_id: str = "ANONYMOUS",
    patient_name: str = "Anonymous^",
    study_date: str | None = None,
    study_description: str = "",
    series_number: int = 1,
    series_description: str = "",
    rescale_intercept: float | None = None,
    rescale_slope: float = 1.0,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    file_pattern: str = "IM{index:04d}.dcm",
    patient_position: str = "HFS",
) -> WrittenSeries:
    """Write a ``(Z, Y, X)`` (or ``(1, Z, Y, X)``) volume as single-frame DICOM files in ``folder``.

    Values are stored as ``round((value - intercept) / slope)`` in 16 bits: for CT give Hounsfield
    units (intercept defaults to -1024, the usual scanner choice); for MR the intercept defaults
    to 0. ``file_pattern`` names slice ``index`` (0-based, the volume's z order); a pattern
    without an ending gives extension-less files, as many archives export. Each file is written
    atomically; new UIDs are made for what is not given, so two calls give two series of one
    study only when ``study_instance_uid`` (and ``frame_of_reference_uid``) are passed.
    """
    volume = np.asarray(volume)
    if volume.ndim == 4 and volume.shape[0] == 1:
        volume = volume[0]
    if volume.ndim != 3:
        raise ValueError(f"write_dicom_series expects a (Z, Y, X) volume, got shape {volume.shape}")
    if geometry.file_ndim != 3 or len(geometry.direction) != 9:
        raise ValueError("write_dicom_series needs a 3D geometry (a 2D image is not a series)")
    if modality not in SOP_CLASS_UIDS:
        raise ValueError(f"modality must be one of {', '.join(SOP_CLASS_UIDS)}, got {modality!r}")
    if rescale_slope <= 0:
        raise ValueError(f"rescale_slope must be positive, got {rescale_slope}")
    intercept = float(rescale_intercept if rescale_intercept is not None else (-1024.0 if modality == "CT" else 0.0))
    slope = float(rescale_slope)
    if not np.isfinite(volume).all():
        raise ValueError("the volume holds NaN or infinite values, which DICOM pixels cannot store")
    stored = np.round((volume.astype(np.float64) - intercept) / slope)
    if stored.size and (stored.min() < _INT16[0] or stored.max() > _INT16[1]):
        raise ValueError(f"values {volume.min():g}..{volume.max():g} do not fit 16-bit pixels with intercept "
                         f"{intercept:g} and slope {slope:g}")
    # GDCM rescales on writing (stored = (value - intercept) / slope), so it is given values that
    # are exact multiples of the slope: integers when the slope is 1, as on a CT scanner
    values = stored * slope + intercept
    pixels = values.astype(np.int16) if slope == 1 and intercept.is_integer() else values

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_instance_uid or new_uid()
    series_uid = series_instance_uid or new_uid()
    frame_uid = frame_of_reference_uid or new_uid()
    now_date, now_time = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    study_date = study_date or now_date

    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(geometry.origin, dtype=np.float64)
    sz, sy, sx = (float(s) for s in geometry.spacing)
    row, col, slice_axis = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row, col)
    orientation = "\\".join(_ds(v) for v in (*row, *col))
    name_value = _text(patient_name, 64)
    series_tags = {
        "0008|0005": "ISO_IR 100" if (name_value + series_description + study_description).isascii() else "ISO_IR 192",
        "0008|0008": "DERIVED\\SECONDARY",  # converted, not acquired
        "0008|0016": SOP_CLASS_UIDS[modality],
        "0008|0020": study_date,
        "0008|0021": now_date,
        "0008|0023": now_date,
        "0008|0030": now_time,
        "0008|0031": now_time,
        "0008|0033": now_time,
        "0008|0050": "",
        "0008|0060": modality,
        "0008|0064": "WSD",  # conversion type: workstation
        "0008|0070": "autoseg",
        "0008|0090": "",
        "0008|1030": _text(study_description, 64),
        "0008|103e": _text(series_description, 64),
        "0010|0010": name_value,
        "0010|0020": _text(patient_id, 64),
        "0010|0030": "",
        "0010|0040": "",
        "0018|0050": _ds(sz),  # slice thickness: the volume knows only the spacing
        "0018|0088": _ds(sz),
        "0018|5100": patient_position,
        "0020|000d": study_uid,
        "0020|000e": series_uid,
        "0020|0010": "1",
        "0020|0011": str(int(series_number)),
        "0020|0012": "1",
        "0020|0037": orientation,
        "0020|0052": frame_uid,
        "0020|1040": "",
        "0028|0030": f"{_ds(sy)}\\{_ds(sx)}",  # row spacing (between rows: y), then column spacing (x)
        # signed 16-bit storage, stated because GDCM cannot choose it for a float buffer
        "0028|0100": "16",
        "0028|0101": "16",
        "0028|0102": "15",
        "0028|0103": "1",
        "0028|1052": _ds(intercept),
        "0028|1053": _ds(slope),
        "0028|1054": "HU" if modality == "CT" else "US",
    }
    if modality == "CT":
        series_tags.update({"0028|1050": "40", "0028|1051": "400"})

    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # chosen explicitly: extension-less names carry no format
    writer.KeepOriginalImageUIDOn()  # the UIDs set below, not GDCM's own
    files, sop_uids = [], []
    for i in range(volume.shape[0]):
        position = origin + slice_axis * sz * i
        # a one-slice 3D image: a 2D one would make GDCM write SpacingBetweenSlices 1 for MR
        image = sitk.GetImageFromArray(pixels[i:i + 1])
        image.SetSpacing((sx, sy, sz))
        image.SetOrigin(tuple(position))
        image.SetDirection(tuple(direction.ravel()))
        sop_uid = new_uid()
        for tag, value in series_tags.items():
            image.SetMetaData(tag, value)
        image.SetMetaData("0008|0012", now_date)
        image.SetMetaData("0008|0013", now_time)
        image.SetMetaData("0008|0018", sop_uid)
        image.SetMetaData("0020|0013", str(i + 1))
        image.SetMetaData("0020|0032", "\\".join(_ds(v) for v in position))
        image.SetMetaData("0020|1041", _ds(float(position @ normal)))
        path = folder / file_pattern.format(index=i)
        with atomic_path(path) as tmp:
            writer.SetFileName(str(tmp))
            writer.Execute(image)
        files.append(str(path))
        sop_uids.append(sop_uid)
    return WrittenSeries(str(folder), files, study_uid, series_uid, frame_uid, sop_uids)
