"""Reading and writing images, keeping their geometry.

Every image inside autoseg is a channels-first numpy array with three spatial axes in
numpy order ``(C, Z, Y, X)``; 2D images are stored with ``Z == 1``. That makes one code
path serve 2D and 3D data. :class:`Geometry` keeps what is needed to write a result back
exactly as the input was (spacing, origin, direction, and whether the file was 2D).

3D formats (NIfTI, NRRD, MHA/MHD, ...) and PNG/TIFF go through SimpleITK; a DICOM series
is read from its folder.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.atomic import atomic_path
from autoseg.errors import ImageReadError

IMAGE_2D_ENDINGS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
SUPPORTED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz") + IMAGE_2D_ENDINGS


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
    def from_dict(cls, d: dict) -> Geometry:
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]), int(d["file_ndim"]))

    def matches(self, other: Geometry, tol: float = 1e-3) -> list[str]:
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


def split_ending(name: str) -> tuple[str, str] | None:
    """``("case_001", ".nii.gz")`` for a supported image file name, else None."""
    lower = name.lower()
    for ending in sorted(SUPPORTED_ENDINGS, key=len, reverse=True):
        if lower.endswith(ending):
            return name[: len(name) - len(ending)], name[len(name) - len(ending):]
    return None


@dataclass(frozen=True)
class Header:
    """What a file's header declares, read before its pixels: ``ndim`` is the file's own number
    of axes (4 for an MSD multi-channel or a time series), ``size`` in ITK order (x, y, z, ...)."""

    ndim: int
    size: tuple[int, ...]
    components: int
    pixel_type: str


def _read_sitk(path: Path) -> tuple[sitk.Image, Header]:
    if not path.exists():
        if path.is_symlink():
            raise ImageReadError(f"{path}: broken symlink to {os.readlink(path)}")
        raise ImageReadError(f"{path}: file does not exist")
    try:
        if path.is_dir():
            return _read_series(path)
        reader = _header_reader(path)
        if reader is None:  # a NIfTI header, checked already: ITK's own header pass would double the cost
            img = sitk.ReadImage(str(path))
            header = _image_header(img)
            _check_header(path, header)
            return img, header
        header = Header(reader.GetDimension(), tuple(reader.GetSize()), reader.GetNumberOfComponents(),
                        sitk.GetPixelIDValueAsString(reader.GetPixelID()))
        _check_header(path, header)
        return reader.Execute(), header
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to read the image") from None
    except Exception as e:  # noqa: BLE001 - SimpleITK raises RuntimeError with a long ITK trace
        raise ImageReadError(f"{path}: unreadable or truncated image file ({_itk_reason(str(e))})") from None


def _read_series(path: Path) -> tuple[sitk.Image, Header]:
    if split_ending(path.name) is not None:  # imagesTr/case.nii.gz made a folder by mistake
        raise ImageReadError(f"{path}: is a folder, not an image file")
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(path))
    if not files:
        raise ImageReadError(f"{path}: folder holds no DICOM series")
    reader.SetFileNames(files)
    img = reader.Execute()
    return img, _image_header(img)


def _image_header(img: sitk.Image) -> Header:
    return Header(img.GetDimension(), tuple(img.GetSize()), img.GetNumberOfComponentsPerPixel(),
                  img.GetPixelIDTypeAsString())


def _header_reader(path: Path) -> sitk.ImageFileReader | None:
    """A reader that has read ``path``'s header only, after the checks that need no ITK:
    readable, not empty, and for NIfTI a sane header that its bytes fill (then None: that
    header needs no second reading)."""
    try:
        with open(path, "rb"):
            pass
        size = path.stat().st_size
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied: the file cannot be read") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot be opened ({e.strerror or e})") from None
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if _check_nifti(path):
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


_MAX_DIMENSION = 4  # 2D, 3D, and 4D whose 4th axis holds channels


def _check_header(path: Path, header: Header) -> None:
    """Refuse what cannot be read as ``(C, Z, Y, X)`` or would not fit memory, before reading pixels."""
    if header.ndim > _MAX_DIMENSION:
        raise ImageReadError(f"{path}: image has {header.ndim} axes (size {' x '.join(map(str, header.size))}); "
                             "autoseg reads 2D, 3D and 4D (channels along the 4th axis) images")
    bits = re.match(r"(?:vector of )?(\d+)-bit", header.pixel_type)
    nbytes = int(np.prod(header.size, dtype=np.float64)) * header.components * (int(bits.group(1)) // 8 if bits else 8)
    _check_fits_memory(path, header.size, nbytes)


def _check_fits_memory(path: Path, size: Sequence[int], nbytes: int) -> None:
    available = _physical_memory()
    if nbytes > available:
        raise ImageReadError(
            f"{path}: header declares a {' x '.join(map(str, size))} image ({_human(nbytes)} of pixels), more "
            f"than this machine's memory ({_human(available)}): a corrupt header, or not an image autoseg can read")


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: only absurd sizes are refused
        return 1 << 42


def _human(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if nbytes < 1000:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000
    return f"{nbytes:.3g} PB"


_ITK_PREFIX = re.compile(r"^(sitk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?|^\[\w+\]\s*")


def _itk_reason(text: str) -> str:
    """The informative line of an ITK exception: its first line is only a C++ source location."""
    if "Unable to determine ImageIO reader" in text:
        return "no image reader recognises its contents: not an image, or a wrong file ending"
    lines = [_ITK_PREFIX.sub("", line).strip() for line in text.strip().splitlines()[1:]]
    # ITK appends a stale errno ("No such file or directory") even when the file exists
    lines = [line for line in lines if line and not line.startswith("Reason:") and not line.endswith(("trouble", ":"))]
    reason = lines[-1] if lines else text.strip().splitlines()[0] if text.strip() else "unknown reason"
    return reason[:200]


@dataclass
class _NiftiHeader:
    endian: str
    datatype: int
    bitpix: int
    vox_offset: int
    num_voxels: int
    dim: tuple[int, ...]
    pixdim: tuple[float, ...]
    affine: tuple[float, ...] = ()  # NIfTI-1 qform (quaternion, offset) and sform rows that ITK will use

    @property
    def expected_bytes(self) -> int:
        return self.vox_offset + self.num_voxels * self.bitpix // 8


def _nifti_header(head: bytes) -> _NiftiHeader | None:
    """The fields of a single-file NIfTI-1/2 header that locate its voxels; None if not NIfTI."""
    if len(head) < 348:
        return None
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            pixdim = struct.unpack(endian + "8f", head[76:108])
            offset = struct.unpack(endian + "f", head[108:112])[0]
            qform_code, sform_code = struct.unpack(endian + "2h", head[252:256])
            affine = (struct.unpack(endian + "6f", head[256:280]) if qform_code > 0 else ()) + (
                struct.unpack(endian + "12f", head[280:328]) if sform_code > 0 else ())
            break
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            pixdim = struct.unpack(endian + "8d", head[104:168])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            affine = ()
            break
    else:
        return None
    ndim = dim[0]
    if not 1 <= ndim <= 7 or bitpix <= 0 or any(d <= 0 for d in dim[1:ndim + 1]):
        return None
    # float: a corrupt header's product overflows int64
    nvox = int(np.prod([float(d) for d in dim[1:ndim + 1]]))
    return _NiftiHeader(endian, int(datatype), int(bitpix), int(offset), nvox,
                        tuple(int(d) for d in dim[1:ndim + 1]), tuple(float(v) for v in pixdim[1:ndim + 1]),
                        tuple(float(v) for v in affine))


def _open_nifti(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz")) and not path.is_dir()


_NIFTI_FLOAT_DTYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64


def count_nonfinite_nifti(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(NaN count, infinity count)`` stored in a float NIfTI file; None for any other file.

    ITK's NIfTI reader silently replaces non-finite voxels with 0, so the array from
    :func:`read_image` cannot show them; only the raw bytes can.
    """
    path = Path(path)
    if not _is_nifti(path):
        return None
    try:
        with _open_nifti(path) as f:
            header = _nifti_header(f.read(540))
            if header is None or header.datatype not in _NIFTI_FLOAT_DTYPES:
                return None
            dtype = np.dtype(header.endian + _NIFTI_FLOAT_DTYPES[header.datatype])
            f.seek(header.vox_offset)
            n_nan = n_inf = 0
            left = header.num_voxels
            while left > 0:  # in chunks: a large CT as one float64 copy would double memory
                chunk = np.frombuffer(f.read(min(left, 1 << 24) * dtype.itemsize), dtype)
                if chunk.size == 0:
                    break
                if not np.isfinite(chunk).all():
                    n_nan += int(np.isnan(chunk).sum())
                    n_inf += int(np.isinf(chunk).sum())
                left -= chunk.size
    except (OSError, EOFError, zlib.error, ValueError):
        return None  # unreadable files are reported by read_image
    return n_nan, n_inf


def _gzip_payload_size(path: Path) -> int:
    """Bytes that decompress from ``path`` before its data ends or breaks (all gzip members)."""
    total = 0
    d = zlib.decompressobj(wbits=31)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                try:
                    total += len(d.decompress(chunk))
                except zlib.error:
                    return total
                if not d.eof:
                    break
                chunk = d.unused_data  # another gzip member follows
                d = zlib.decompressobj(wbits=31)
    return total


def _check_nifti(path: Path) -> bool:
    """Refuse a NIfTI file whose header ITK would misread silently or which its bytes do not fill.

    ITK reads a zero or NaN voxel size as 1 and a negative one as a flipped axis, and it reads
    a truncated ``.nii``/``.nii.gz`` without complaint, filling the missing voxels with zeros:
    each would silently train on wrong data. A header that is not NIfTI is left to ITK (False).
    """
    if not _is_nifti(path):
        return False
    try:
        with _open_nifti(path) as f:
            header = _nifti_header(f.read(540))
    except (OSError, EOFError, zlib.error):
        return False  # not gzip or not NIfTI after all: ITK says what it is
    if header is None:
        return False
    spatial = header.pixdim[:3]
    bad = [i for i, v in enumerate(spatial) if not (np.isfinite(v) and v > 0)]
    if bad:
        axes = ", ".join(f"{'xyz'[i]} = {spatial[i]:g}" for i in bad)
        raise ImageReadError(f"{path}: invalid voxel spacing in the NIfTI header (pixdim {axes}): "
                             "every voxel size must be a positive number")
    if not np.isfinite(header.affine).all():
        raise ImageReadError(f"{path}: the NIfTI header's origin or orientation (qform/sform) holds NaN or "
                             "infinite values")
    _check_fits_memory(path, header.dim, header.expected_bytes - header.vox_offset)
    _check_nifti_complete(path, header)
    return True


def _check_nifti_complete(path: Path, header: _NiftiHeader) -> None:
    compressed = path.name.lower().endswith(".gz")
    expected = header.expected_bytes
    try:
        if not compressed:
            actual = path.stat().st_size
        else:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                isize = int.from_bytes(f.read(4), "little")  # gzip trailer: size mod 2**32
            if isize == expected % 2**32:
                return
            # trailer disagrees: truncated, or a multi-member gzip; decompress to be sure
            actual = _gzip_payload_size(path)
    except (OSError, EOFError, zlib.error) as e:
        raise ImageReadError(f"{path}: unreadable or truncated image file ({e})") from None
    if actual < expected:
        raise ImageReadError(
            f"{path}: truncated NIfTI file: it holds {actual} of the {expected} bytes its header declares"
            + (" (uncompressed)" if compressed else ""))


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
    origin = tuple(float(v) for v in origin)
    direction = tuple(float(v) for v in direction)
    if dim == 2:
        return Geometry((1.0, float(spacing[1]), float(spacing[0])), origin, direction, 2)
    return Geometry(tuple(float(s) for s in spacing[::-1]), origin, direction, 3)


def image_to_array(img: sitk.Image) -> tuple[np.ndarray, Geometry]:
    """A SimpleITK image as ``(C, Z, Y, X)`` plus its geometry: vector pixels (RGB) and the 4th
    axis of a 4D volume become channels. Raises ValueError for a layout with no such reading."""
    geometry = _split_geometry(img)
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = np.moveaxis(arr, -1, 0)  # vector components -> channels
        if img.GetDimension() == 2:
            arr = arr[:, None]
    elif img.GetDimension() == 2:
        arr = arr[None, None]
    elif img.GetDimension() == 3:
        arr = arr[None]
    # 4D: already (C, Z, Y, X)
    if arr.ndim != 4:
        raise ValueError(f"unsupported image layout with array shape {arr.shape}")
    return arr, geometry


def array_to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A ``(Z, Y, X)`` array as a SimpleITK image with ``geometry``; a 2D source gives a 2D image."""
    if geometry.file_ndim == 2:
        img = sitk.GetImageFromArray(array[0])
        img.SetSpacing((geometry.spacing[2], geometry.spacing[1]))
        if len(geometry.origin) == 2:
            img.SetOrigin(geometry.origin)
        if len(geometry.direction) == 4:
            img.SetDirection(geometry.direction)
        return img
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in geometry.spacing[::-1]))
    img.SetOrigin(geometry.origin)
    img.SetDirection(geometry.direction)
    return img


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read an image as ``(C, Z, Y, X)`` plus its geometry (see :func:`image_to_array`)."""
    arr, geometry, _ = read_image_with_header(path)
    return arr, geometry


def read_image_with_header(path: str | os.PathLike) -> tuple[np.ndarray, Geometry, Header]:
    """:func:`read_image` plus what the file's header declared (its own number of axes, ...).

    The header is checked before any pixel is read: a size that would not fit memory, a
    NIfTI voxel size ITK would misread, a file shorter than its header; then the geometry.
    """
    path = Path(path)
    img, header = _read_sitk(path)
    try:
        arr, geometry = image_to_array(img)
    except ValueError as e:
        raise ImageReadError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - ITK's errors for undecodable pixels have no common type
        raise ImageReadError(f"{path}: pixel data could not be decoded ({e})") from None
    _check_geometry(path, geometry)
    return arr, geometry, header


def _check_geometry(path: Path, geometry: Geometry) -> None:
    if not all(np.isfinite(v) and v > 0 for v in geometry.spacing):
        raise ImageReadError(f"{path}: invalid voxel spacing {fmt(geometry.spacing)} (z, y, x): "
                             "every voxel size must be a positive number")
    if not np.isfinite(geometry.origin).all() or not np.isfinite(geometry.direction).all():
        raise ImageReadError(f"{path}: origin {fmt(geometry.origin)} or direction {fmt(geometry.direction)} "
                             "is not finite")


def read_channels(files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, Geometry]:
    """A case's channel files as one float32 ``(C, Z, Y, X)`` array, with the first file's geometry."""
    arrays, geometry = [], None
    for f in files:
        arr, g = read_image(f)
        if arrays and arr.shape[1:] != arrays[0].shape[1:]:
            raise ImageReadError(f"{f}: shape {arr.shape[1:]} differs from the case's first channel "
                                 f"{files[0]} {arrays[0].shape[1:]}")
        geometry = geometry or g
        arrays.append(arr.astype(np.float32, copy=False))
    return (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)), geometry


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
        if name.endswith((".png", ".bmp", ".jpg", ".jpeg")) and array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating) or not name.endswith(".png"):
                raise ValueError(f"{path}: {array.dtype} pixels cannot be stored in this 8-bit format; use .tif or .nii.gz")
            lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
            if lo < 0 or hi > 65535:
                raise ValueError(f"{path}: values {lo}..{hi} do not fit a PNG (0..65535)")
            # PNG holds 16-bit grey too: label values above 255 must not wrap around
            array = array.astype(np.uint8 if hi <= 255 else np.uint16)
    img = array_to_image(array, geometry)
    if name.endswith(HEADER_DATA_ENDINGS):
        _write_header_and_data(img, path)
        return
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), useCompression=True)


HEADER_DATA_ENDINGS = (".mhd", ".nhdr")


def _write_header_and_data(img: sitk.Image, path: Path) -> None:
    """Write a header + data-file pair (MHD/NHDR) under their final names, header last.

    The header names its data file, so both must be written with their final names: they go
    to a hidden temporary folder first, then the data file and finally the header are moved
    into place, so a header that is present always points at complete data.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".partialdir-") as tmpdir:
        sitk.WriteImage(img, str(Path(tmpdir) / path.name), useCompression=True)
        for f in sorted(Path(tmpdir).iterdir(), key=lambda f: f.name == path.name):
            os.replace(f, path.parent / f.name)


def read_header(path: str | os.PathLike) -> tuple[int, tuple[int, ...], tuple[float, ...], tuple[float, ...],
                                                  tuple[float, ...], int]:
    """(spatial dimension, size, spacing, origin, direction, channels) from the file header,
    without reading pixels; an MSD 4D file's fourth axis counts as channels."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as e:  # noqa: BLE001 - SimpleITK raises RuntimeError with a long ITK trace
        first = str(e).strip().splitlines()
        raise ImageReadError(f"{path}: unreadable image file ({(first[-1] if first else '')[:200]})") from None
    dim = reader.GetDimension()
    size, spacing, origin = reader.GetSize(), reader.GetSpacing(), reader.GetOrigin()
    direction = reader.GetDirection()
    channels = reader.GetNumberOfComponents()
    if dim == 4:  # MSD multi-channel volume: the 4th axis holds channels
        channels *= size[3]
        size, spacing, origin = size[:3], spacing[:3], origin[:3]
        direction = tuple(np.asarray(direction).reshape(4, 4)[:3, :3].ravel())
        dim = 3
    return dim, tuple(size), tuple(spacing), tuple(origin), tuple(direction), channels
