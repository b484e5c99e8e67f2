"""DICOM fixtures shared by the DICOM reader, DICOM-SEG and predict tests: a small oblique CT-like
volume, a cropped VerSe case, and header edits that make a series unreadable in one known way."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry, read_image, read_label

VERSE = Path(__file__).resolve().parents[3] / "shared" / "data" / "VerSe_sample"
OBLIQUE_CASE = "verse007"  # the one oblique affine of the four (sagittal 3 mm slices, tilted about 4 degrees)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def synthetic_ct(shape=(6, 10, 12), seed: int = 0, oblique: bool = True) -> tuple[np.ndarray, Geometry]:
    """Integer HU in -1000..1500 with an oblique (right-handed) direction and anisotropic spacing."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    direction = rotation(0.3, -0.2, 0.5) if oblique else np.eye(3)
    return hu, Geometry((2.5, 0.8, 0.7), (10.0, -20.0, 30.0), tuple(direction.ravel()), 3)


def crop_geometry(geometry: Geometry, start_zyx) -> Geometry:
    """The geometry of a crop starting at voxel ``start_zyx`` (ITK origin moves, the rest stays)."""
    d = np.asarray(geometry.direction).reshape(3, 3)
    index_xyz = np.asarray(start_zyx[::-1], dtype=np.float64)
    spacing_xyz = np.asarray(geometry.spacing[::-1], dtype=np.float64)
    origin = np.asarray(geometry.origin) + d @ (index_xyz * spacing_xyz)
    return Geometry(geometry.spacing, tuple(float(v) for v in origin), geometry.direction, 3)


def verse_case(case: str = OBLIQUE_CASE, box=(40, 64, 64)):
    """(HU volume rounded to integers, label map, geometry, label values, label names) of a VerSe case,
    cropped to ``box`` (z, y, x) around its labels' centre; skips when the data is absent."""
    if not (VERSE / "dataset.json").is_file():
        pytest.skip(f"{VERSE} not available")
    image, geometry = read_image(VERSE / "imagesTr" / f"{case}.nii.gz")
    label, _ = read_label(VERSE / "labelsTr" / f"{case}.nii.gz")
    centre = np.argwhere(label > 0).mean(axis=0).round().astype(int)
    start = [int(np.clip(c - b // 2, 0, max(0, s - b))) for c, b, s in zip(centre, box, label.shape)]
    box_slices = tuple(slice(s, s + b) for s, b in zip(start, box))
    labels = json.loads((VERSE / "dataset.json").read_text())["labels"]
    values = sorted(int(v) for v in labels)
    names = [labels[str(v)] for v in values]
    hu = np.round(image[0][box_slices]).astype(np.int16)  # three of the four cases store float HU
    return hu, label[box_slices], crop_geometry(geometry, start), values, names


def edit_headers(files, edit) -> None:
    """Rewrite DICOM files in place after ``edit(index, dataset)``."""
    import pydicom

    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        edit(i, ds)
        ds.save_as(f)
