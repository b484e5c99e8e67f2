"""Reading and writing images, keeping their geometry.

Every image inside autoseg is a channels-first numpy array with three spatial axes in
numpy order ``(C, Z, Y, X)``; 2D images are stored with ``Z == 1``. That makes one code
path serve 2D and 3D data. :class:`Geometry` keeps what is needed to write a result back
exactly as the input was (spacing, origin, direction, and whether the file was 2D).

3D formats (NIfTI, NRRD, MHA/MHD, ...) and PNG/TIFF go through SimpleITK; a DICOM series
is read from its folder.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.atomic import atomic_path

IMAGE_2D_ENDINGS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz") + IMAGE_2D_ENDINGS


class ImageReadError(Exception):
    """A file could not be read as an image; the message names the file."""


@dataclass
class Geometry:
    """Physical geometry of an image as stored in its file.

    ``spacing`` follows the numpy axis order ``(z, y, x)`` used for arrays; ``origin`` and
    ``direction`` are kept in ITK's physical order so they round-trip exactly.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    file_ndim: int  # 2 or 3: how many spatial axes the source file had

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]), int(d["file_ndim"]))

    def matches(self, other: "Geometry", tol: float = 1e-3) -> list[str]:
        """Differences beyond ``tol`` (relative for spacing, absolute mm for origin) as readable text."""
        problems = []
        if not np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol):
            problems.append(f"spacing {fmt(self.spacing)} vs {fmt(other.spacing)}")
        if len(self.origin) != len(other.origin) or not np.allclose(self.origin, other.origin, atol=max(tol, 1e-2)):
            problems.append(f"origin {fmt(self.origin)} vs {fmt(other.origin)}")
        if len(self.direction) != len(other.direction) or not np.allclose(self.direction, other.direction, atol=tol):
            problems.append(f"direction {fmt(self.direction)} vs {fmt(other.direction)}")
        return problems


def fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def has_supported_ending(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return Path(path).is_dir() or name.endswith(SUPPORTED_ENDINGS)


def _read_sitk(path: Path) -> sitk.Image:
    if not path.exists():
        raise ImageReadError(f"{path}: file does not exist")
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise ImageReadError(f"{path}: folder holds no DICOM series")
            reader.SetFileNames(files)
            return reader.Execute()
        return sitk.ReadImage(str(path))
    except ImageReadError:
        raise
    except Exception as e:  # SimpleITK raises RuntimeError with a long ITK trace
        first = str(e).strip().splitlines()
        reason = next((line for line in first if "rror" in line or "annot" in line), first[0] if first else "")
        raise ImageReadError(f"{path}: unreadable or truncated image file ({reason.strip()[:200]})") from None


def _split_geometry(img: sitk.Image) -> Geometry:
    dim = img.GetDimension()
    spacing = list(img.GetSpacing())
    origin = list(img.GetOrigin())
    direction = list(img.GetDirection())
    if dim == 4:  # MSD multi-channel volume: the 4th axis holds channels
        spacing, origin = spacing[:3], origin[:3]
        d = np.array(direction).reshape(4, 4)[:3, :3]
        direction = list(d.ravel())
        dim = 3
    if dim == 2:
        return Geometry((1.0, float(spacing[1]), float(spacing[0])), tuple(origin), tuple(direction), 2)
    return Geometry(tuple(float(s) for s in spacing[::-1]), tuple(origin), tuple(direction), 3)


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an image as ``(C, Z, Y, X)`` plus its geometry.

    Vector pixels (RGB) and the 4th axis of a 4D volume become channels.
    """
    path = Path(path)
    img = _read_sitk(path)
    geometry = _split_geometry(img)
    try:
        arr = sitk.GetArrayFromImage(img)
    except Exception as e:
        raise ImageReadError(f"{path}: pixel data could not be decoded ({e})") from None
    ncomp = img.GetNumberOfComponentsPerPixel()
    if ncomp > 1:
        arr = np.moveaxis(arr, -1, 0)  # vector components -> channels
        if img.GetDimension() == 2:
            arr = arr[:, None]
    elif img.GetDimension() == 4:
        pass  # already (C, Z, Y, X)
    elif img.GetDimension() == 2:
        arr = arr[None, None]
    else:
        arr = arr[None]
    if arr.ndim != 4:
        raise ImageReadError(f"{path}: unsupported image layout with array shape {arr.shape}")
    return arr, geometry


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a label map as ``(Z, Y, X)``; a multi-channel label file is an error."""
    arr, geometry = read_image(path)
    if arr.shape[0] != 1:
        raise ImageReadError(f"{path}: label file has {arr.shape[0]} channels, expected a single-channel label map")
    return arr[0], geometry


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` array (a label map or a single-channel map) atomically.

    A 2D source is written 2D again; PNG/BMP/JPEG need 8-bit pixels, so integer labels are
    cast to uint8 there.
    """
    path = Path(path)
    if array.ndim != 3:
        raise ValueError(f"write_image expects (Z, Y, X), got shape {array.shape}")
    name = path.name.lower()
    if geometry.file_ndim == 2:
        if array.shape[0] != 1:
            raise ValueError(f"{path}: cannot write {array.shape[0]} slices into a 2D file")
        arr2 = array[0]
        if name.endswith((".png", ".bmp", ".jpg", ".jpeg")) and arr2.dtype != np.uint8:
            arr2 = arr2.astype(np.uint8)
        img = sitk.GetImageFromArray(arr2)
        img.SetSpacing((geometry.spacing[2], geometry.spacing[1]))
        if len(geometry.origin) == 2:
            img.SetOrigin(geometry.origin)
        if len(geometry.direction) == 4:
            img.SetDirection(geometry.direction)
    else:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
        img.SetOrigin(geometry.origin)
        img.SetDirection(geometry.direction)
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)
