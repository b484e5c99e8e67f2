"""Per-structure statistics of a label map, in physical units, and the surface they rest on.

For each label present: volume (mL), surface area (mm², from a marching-cubes surface in
physical space), mean and standard deviation of each image channel inside the label (Hounsfield
units for CT), the number of connected components (full connectivity) and the bounding box of
the label's voxel corners in LPS millimetres. 2D label maps (a PNG, a 2D TIFF) report area (mm²)
and perimeter (mm) instead of volume and surface area.

Physical space is ITK's: ``point = origin + direction @ (spacing * index)`` with index, spacing,
origin and direction in ``(x, y, z)`` order. That is the LPS patient space of DICOM, ITK and 3D
Slicer's files, so numbers and meshes here line up with the image in any of them.

:func:`surface_mesh` lives here rather than in ``autoseg.inference.meshes`` because surface area
is a statistic and this stage sits below inference: the mesh writer imports it from here, so
the area in ``structures.csv`` and the surface written to disk come from one piece of code.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.atomic import atomic_path, read_json, write_json
from autoseg.dataset.imageio import Geometry

STATS_SCHEMA_VERSION = 1
STRUCTURES_CSV = "structures.csv"
STRUCTURES_JSON = "structures.json"

# skimage's marching cubes winds its triangles so that, read in (z, y, x) index coordinates as a
# right-handed frame, the signed volume of a closed surface is negative (tests check this).
_SKIMAGE_INDEX_ORIENTATION = -1.0


def index_to_physical(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``physical = b + A @ index``: index in array order ``(z, y, x)`` (2D: ``(y, x)``),
    physical LPS millimetres in ITK's order ``(x, y, z)`` (2D: ``(x, y)``)."""
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    if geometry.file_ndim == 2:
        direction = np.asarray(geometry.direction if len(geometry.direction) == 4 else (1, 0, 0, 1), np.float64)
        origin = np.asarray(tuple(geometry.origin)[:2] if len(geometry.origin) >= 2 else (0.0, 0.0), np.float64)
        a = direction.reshape(2, 2) @ np.diag(spacing[:0:-1])  # spacing (z, y, x) -> (x, y)
    else:
        direction = np.asarray(geometry.direction, np.float64)
        origin = np.asarray(geometry.origin, np.float64)
        a = direction.reshape(3, 3) @ np.diag(spacing[::-1])
    # the array's axes are ITK's reversed: column j of A belongs to array axis j
    return a[:, ::-1].copy(), origin


@dataclass
class Surface:
    """A closed triangle surface: vertices in LPS millimetres, faces wound outward."""

    vertices: np.ndarray  # (N, 3) float64, physical (x, y, z)
    faces: np.ndarray  # (M, 3) int64 indices into vertices

    @property
    def area_mm2(self) -> float:
        from skimage.measure import mesh_surface_area

        return float(mesh_surface_area(self.vertices, self.faces)) if len(self.faces) else 0.0

    @property
    def signed_volume_mm3(self) -> float:
        """Enclosed volume by the divergence theorem: positive when the faces point outward."""
        v = self.vertices[self.faces]
        return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)

    @property
    def volume_ml(self) -> float:
        return self.signed_volume_mm3 / 1000.0


def surface_mesh(mask: np.ndarray, geometry: Geometry, smooth_mm: float = 0.0,
                 start: Sequence[int] = (0, 0, 0)) -> Surface | None:
    """The marching-cubes surface (level 0.5) of a binary ``(Z, Y, X)`` mask in physical space.

    ``mask`` may be a crop of the label map whose first voxel is ``start`` (array order). The mask
    is padded with background so the surface closes at the volume's edge. ``smooth_mm > 0``
    Gaussian-smooths the mask first (sigma in mm, per axis in voxels through the spacing).
    None when nothing reaches the level (an empty mask, or one smoothed away).
    """
    from scipy import ndimage
    from skimage.measure import marching_cubes

    if geometry.file_ndim != 3:
        raise ValueError("surface meshes need a 3D label map; this one came from a 2D file")
    if mask.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) mask, got shape {mask.shape}")
    if smooth_mm < 0:
        raise ValueError(f"smoothing sigma must be >= 0 mm, got {smooth_mm}")
    if not mask.any():
        return None
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    if smooth_mm > 0:
        sigma = smooth_mm / spacing
        truncate = 4.0
        pad = 1 + np.ceil(truncate * sigma).astype(int)  # room for the blur to fall to zero
        volume = np.pad(mask.astype(np.float32), [(int(p), int(p)) for p in pad])
        volume = ndimage.gaussian_filter(volume, sigma, mode="constant", truncate=truncate)
        if volume.max() <= 0.5:
            return None
    else:
        pad = np.ones(3, dtype=int)
        volume = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = marching_cubes(volume, 0.5, allow_degenerate=False)
    verts = verts.astype(np.float64) + (np.asarray(start, dtype=np.float64) - pad)
    a, b = index_to_physical(geometry)
    faces = faces.astype(np.int64)
    # a reflection anywhere in index -> physical (axis order, a det -1 direction) turns faces inward
    if _SKIMAGE_INDEX_ORIENTATION * np.linalg.det(a) < 0:
        faces = faces[:, ::-1].copy()
    return Surface(verts @ a.T + b, faces)


@dataclass
class StructureStats:
    """One label of one case. Lengths in mm, coordinates LPS ``(x, y, z)`` (2D: ``(x, y)``)."""

    case_id: str
    label: int
    name: str
    dims: int  # 3: volume and surface area; 2: area and perimeter
    voxels: int
    volume_ml: float | None
    surface_area_mm2: float | None
    area_mm2: float | None
    perimeter_mm: float | None
    n_components: int  # full connectivity: 26 neighbours in 3D, 8 in 2D
    bbox_min_mm: list[float]
    bbox_max_mm: list[float]
    bbox_size_mm: list[float]
    intensity_mean: list[float] = field(default_factory=list)  # per image channel; empty without an image
    intensity_std: list[float] = field(default_factory=list)  # population standard deviation

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StructureStats":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class StructureReport:
    """``structures.json``: every row of ``structures.csv`` with units spelled out."""

    structures: list[StructureStats]
    schema_version: int = STATS_SCHEMA_VERSION
    space: str = "LPS"
    units: dict = field(default_factory=lambda: {
        "volume_ml": "mL", "surface_area_mm2": "mm^2", "area_mm2": "mm^2", "perimeter_mm": "mm",
        "bbox": "mm, LPS (x, y, z), over the label's voxel corners",
        "intensity": "image units (HU for CT), per channel"})

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "space": self.space, "units": self.units,
                "structures": [s.to_dict() for s in self.structures]}

    @classmethod
    def from_dict(cls, d: dict) -> "StructureReport":
        return cls([StructureStats.from_dict(s) for s in d["structures"]], int(d["schema_version"]),
                   str(d.get("space", "LPS")), dict(d.get("units", {})))

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "StructureReport":
        return cls.from_dict(read_json(path))


def as_label_map(segmentation: np.ndarray) -> np.ndarray:
    """An integer ``(Z, Y, X)`` label map; ValueError for non-integer or negative values."""
    seg = np.asarray(segmentation)
    if seg.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) label map, got shape {seg.shape}")
    if seg.dtype == bool:
        return seg.astype(np.uint8)
    if not np.issubdtype(seg.dtype, np.integer):
        if not np.all(np.isfinite(seg)) or not np.array_equal(seg, np.round(seg)):
            raise ValueError("not a label map: it holds non-integer values")
        seg = seg.astype(np.int32)
    if seg.size and seg.min() < 0:
        raise ValueError(f"not a label map: negative value {int(seg.min())}")
    return seg


def label_boxes(segmentation: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """``{value: bounding-box slices}`` of every nonzero value present, in one pass."""
    from scipy import ndimage

    seg = as_label_map(segmentation)
    return {i + 1: box for i, box in enumerate(ndimage.find_objects(seg)) if box is not None}


def _voxel_corner_bbox(mask: np.ndarray, start: np.ndarray, a: np.ndarray,
                       b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical box over all corners of the mask's voxels (exact for oblique directions)."""
    from scipy import ndimage

    # a linear function is extreme over the voxels at a voxel with a background face neighbour
    edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
    idx = np.stack(np.nonzero(edge), axis=1).astype(np.float64) + start
    centres = idx @ a.T
    half = 0.5 * np.abs(a).sum(axis=1)  # a voxel's corners reach this far from its centre, per axis
    return centres.min(axis=0) - half + b, centres.max(axis=0) + half + b


def _perimeter_mm(mask2d: np.ndarray, a: np.ndarray) -> float:
    from skimage.measure import find_contours

    total = 0.0
    for contour in find_contours(np.pad(mask2d.astype(np.float32), 1), 0.5):
        total += float(np.linalg.norm(np.diff(contour @ a.T, axis=0), axis=1).sum())
    return total


def structure_statistics(case_id: str, segmentation: np.ndarray, geometry: Geometry, image: np.ndarray | None = None,
                         label_values: Sequence[int] | None = None,
                         label_names: Sequence[str] | Mapping[int, str] | None = None) -> list[StructureStats]:
    """One :class:`StructureStats` per label present (``label_values``: which to report, default
    every nonzero value present; ``label_names`` parallel to it, or ``{value: name}``). ``image``:
    ``(C, Z, Y, X)`` in the label map's grid, for the intensity columns."""
    from scipy import ndimage

    seg = as_label_map(segmentation)
    if image is not None:
        image = np.asarray(image)
        if image.ndim == 3:
            image = image[None]
        if image.shape[1:] != seg.shape:
            raise ValueError(f"image shape {image.shape[1:]} differs from the label map's {seg.shape}")
    names = name_map(label_values, label_names)
    boxes = label_boxes(seg)
    wanted = sorted(boxes) if label_values is None else sorted(v for v in set(label_values) if v in boxes and v != 0)
    is_2d = geometry.file_ndim == 2
    a, b = index_to_physical(geometry)
    spacing = np.asarray(geometry.spacing, dtype=np.float64)
    full = np.ones((3, 3, 3), dtype=bool)
    rows = []
    for v in wanted:
        box = boxes[v]
        mask = seg[box] == v
        start = np.array([s.start for s in box], dtype=np.float64)
        voxels = int(mask.sum())
        n_components = int(ndimage.label(mask, structure=full)[1])
        if is_2d:
            lo, hi = _voxel_corner_bbox(mask[0], start[1:], a, b)
            volume = surface = None
            area = voxels * float(spacing[1] * spacing[2])
            perimeter = _perimeter_mm(mask[0], a)
        else:
            lo, hi = _voxel_corner_bbox(mask, start, a, b)
            volume = voxels * float(np.prod(spacing)) / 1000.0
            mesh = surface_mesh(mask, geometry, 0.0, box_start(box))
            surface = mesh.area_mm2 if mesh is not None else 0.0
            area = perimeter = None
        means, stds = [], []
        if image is not None:
            for c in range(image.shape[0]):
                values = image[c][box][mask].astype(np.float64)
                means.append(float(values.mean()))
                stds.append(float(values.std()))
        rows.append(StructureStats(case_id, int(v), str(names.get(v, "")), 2 if is_2d else 3, voxels, volume, surface,
                                   area, perimeter, n_components, lo.tolist(), hi.tolist(), (hi - lo).tolist(),
                                   means, stds))
    return rows


def name_map(label_values: Sequence[int] | None,
             label_names: Sequence[str] | Mapping[int, str] | None) -> dict[int, str]:
    """``{value: name}`` from names parallel to ``label_values`` or already keyed by value."""
    if label_names is None:
        return {}
    if isinstance(label_names, Mapping):
        return {int(v): str(n) for v, n in label_names.items()}
    if label_values is None or len(label_names) != len(label_values):
        raise ValueError("label_names must be parallel to label_values, or a {value: name} mapping")
    return {int(v): str(n) for v, n in zip(label_values, label_names)}


def box_start(box: Sequence[slice]) -> tuple[int, ...]:
    return tuple(int(s.start) for s in box)


def _csv_value(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def structures_csv_text(rows: Sequence[StructureStats]) -> str:
    """One row per case and label; blank cells where a column does not apply (2D vs 3D)."""
    channels = max((len(r.intensity_mean) for r in rows), default=0)
    axes = "xyz"
    header = (["case_id", "label", "name", "dims", "voxels", "volume_ml", "surface_area_mm2", "area_mm2",
               "perimeter_mm", "n_components"]
              + [f"bbox_{what}_{ax}_mm" for what in ("min", "max", "size") for ax in axes]
              + [f"intensity_{what}_{c}" for c in range(channels) for what in ("mean", "std")])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in sorted(rows, key=lambda r: (r.case_id, r.label)):
        def padded(values: list[float]) -> list:
            return list(values) + [None] * (3 - len(values))

        intensity = []
        for c in range(channels):
            intensity += ([r.intensity_mean[c], r.intensity_std[c]] if c < len(r.intensity_mean) else [None, None])
        w.writerow([_csv_value(x) for x in
                    [r.case_id, r.label, r.name, r.dims, r.voxels, r.volume_ml, r.surface_area_mm2, r.area_mm2,
                     r.perimeter_mm, r.n_components]
                    + padded(r.bbox_min_mm) + padded(r.bbox_max_mm) + padded(r.bbox_size_mm) + intensity])
    return buf.getvalue()


def write_structure_statistics(folder: str | os.PathLike, rows: Sequence[StructureStats]) -> tuple[Path, Path]:
    """``structures.csv`` and ``structures.json`` in ``folder``, each atomic; returns their paths."""
    folder = Path(folder)
    rows = sorted(rows, key=lambda r: (r.case_id, r.label))
    csv_path, json_path = folder / STRUCTURES_CSV, folder / STRUCTURES_JSON
    with atomic_path(csv_path) as tmp:
        tmp.write_text(structures_csv_text(rows), encoding="utf-8")
    StructureReport(list(rows)).save(json_path)
    return csv_path, json_path
