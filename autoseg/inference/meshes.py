"""Surface meshes of a label map, one file per label, in the image's physical (LPS) space.

Each label's binary mask goes through marching cubes (:func:`autoseg.evaluation.structure_stats.
surface_mesh`: padded so surfaces close at the volume's edge, optionally Gaussian-smoothed), its
vertices are mapped with the image's spacing, origin and direction (oblique ones included) into
ITK's LPS millimetres, and faces are wound outward. 3D Slicer reads STL, VTK and OBJ files as LPS
unless their header says otherwise, and each file's header says ``SPACE=LPS`` besides, so a mesh
overlays its image with no transform. Decimation is quadric edge collapse from
``fast-simplification`` (optional: ``pip install "autoseg[meshes]"``). Files are written with
meshio: STL binary, VTK legacy 4.2 (binary; read by every VTK since 4.2), OBJ text.

Per case: ``{case_id}_{value}_{name}.{ext}`` for each label present, then ``{case_id}_meshes.json``
(the index, written last: it marks the case's meshes done). Every file is written atomically.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from autoseg.atomic import atomic_path, read_json, write_json
from autoseg.dataset.imageio import Geometry
from autoseg.errors import UserError
from autoseg.evaluation.structure_stats import Surface, as_label_map, box_start, label_boxes, name_map, surface_mesh

MESH_FORMATS = ("stl", "vtk", "obj")
MESH_INDEX_SUFFIX = "_meshes.json"
MESH_INDEX_VERSION = 1
# Slicer reads the coordinate system from this text in a mesh file's header
_HEADER_TEXT = "autoseg surface mesh SPACE=LPS units=mm"


def check_mesh_options(fmt: str = "stl", smooth_mm: float = 0.0, decimate: float = 0.0) -> None:
    """Refuse bad mesh settings before any work: an unknown format, a negative sigma, a decimation
    fraction outside [0, 1), or a missing library."""
    if fmt not in MESH_FORMATS:
        raise UserError(f"--format: unknown mesh format '{fmt}'; choose one of {', '.join(MESH_FORMATS)}")
    if not np.isfinite(smooth_mm) or smooth_mm < 0:
        raise UserError(f"--smooth: the Gaussian sigma is in mm and must be >= 0, got {smooth_mm}")
    if not np.isfinite(decimate) or not 0.0 <= decimate < 1.0:
        raise UserError(f"--decimate: the fraction of triangles to remove must be in [0, 1), got {decimate}")
    try:
        import meshio  # noqa: F401
    except ImportError:
        raise UserError("writing meshes needs the meshio package: pip install meshio") from None
    if decimate > 0:
        try:
            import fast_simplification  # noqa: F401
        except ImportError:
            raise UserError("--decimate needs the fast-simplification package: pip install \"autoseg[meshes]\" "
                            "(or pip install fast-simplification); meshes without --decimate need nothing extra"
                            ) from None


def safe_name(name: str) -> str:
    """A label name usable in a file name on every file system: ASCII letters, digits, ``.-_``."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", name).strip("._-")[:64]


def mesh_file_name(case_id: str, value: int, name: str, fmt: str) -> str:
    stem = f"{case_id}_{int(value)}"
    clean = safe_name(name)
    return f"{stem}_{clean}.{fmt}" if clean else f"{stem}.{fmt}"


def mesh_index_name(case_id: str) -> str:
    return f"{case_id}{MESH_INDEX_SUFFIX}"


def decimate_surface(surface: Surface, fraction: float) -> Surface:
    """Remove about ``fraction`` of the triangles by quadric edge collapse (the decimation pyvista uses)."""
    if fraction <= 0 or len(surface.faces) < 8:
        return surface
    import fast_simplification

    points, faces = fast_simplification.simplify(surface.vertices, surface.faces.astype(np.int32),
                                                 target_reduction=float(fraction))
    return Surface(np.asarray(points, dtype=np.float64), np.asarray(faces, dtype=np.int64))


def _facet_normals(surface: Surface) -> np.ndarray:
    v = surface.vertices[surface.faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    # a degenerate triangle left by decimation gets a zero normal, not NaN, in the STL
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def _stamp_header(path: Path, fmt: str) -> None:
    """Put ``SPACE=LPS`` in the file's header comment, where Slicer looks for the coordinate system."""
    data = path.read_bytes()
    if fmt == "stl":  # binary STL: an 80-byte free header; it must not start with "solid"
        data = _HEADER_TEXT.encode("ascii").ljust(80, b" ") + data[80:]
    elif fmt == "vtk":  # legacy VTK: line 1 the version, line 2 a free title of up to 256 characters
        first = data.index(b"\n") + 1
        second = data.index(b"\n", first)
        data = data[:first] + _HEADER_TEXT.encode("ascii") + data[second:]
    elif fmt == "obj":
        line_end = data.find(b"\n")
        rest = data[line_end + 1:] if data.startswith(b"#") and line_end >= 0 else data
        data = f"# {_HEADER_TEXT}\n".encode("ascii") + rest
    path.write_bytes(data)


def write_surface(surface: Surface, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write ``surface`` as STL (binary), VTK (legacy 4.2, binary) or OBJ, atomically; ``fmt``
    defaults to the file's ending."""
    import meshio

    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in MESH_FORMATS:
        raise UserError(f"{path}: unknown mesh format '{fmt}'; choose one of {', '.join(MESH_FORMATS)}")
    mesh = meshio.Mesh(surface.vertices, [("triangle", surface.faces)])
    with atomic_path(path) as tmp:
        if fmt == "stl":
            mesh.cell_data["facet_normals"] = [_facet_normals(surface)]
            meshio.write(tmp, mesh, file_format="stl", binary=True)
        elif fmt == "vtk":
            meshio.write(tmp, mesh, file_format="vtk42", binary=True)
        else:
            meshio.write(tmp, mesh, file_format="obj")
        _stamp_header(tmp, fmt)
    return path


@dataclass
class MeshEntry:
    """One label's mesh file; area and enclosed volume measured on the mesh as written."""

    label: int
    name: str
    file: str
    vertices: int
    faces: int
    area_mm2: float
    volume_ml: float


@dataclass
class AbsentLabel:
    """A requested label with no mesh: not in the map, or smoothed below the 0.5 level."""

    label: int
    name: str
    reason: str


@dataclass
class MeshIndex:
    """``{case_id}_meshes.json``: the case's mesh files and the settings that made them."""

    case_id: str
    format: str
    smooth_mm: float
    decimate: float
    labels: list[int] | None  # the labels asked for; None: every nonzero value present
    meshes: list[MeshEntry] = field(default_factory=list)
    absent: list[AbsentLabel] = field(default_factory=list)
    space: str = "LPS"
    units: str = "mm"
    version: int = MESH_INDEX_VERSION

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MeshIndex":
        return cls(str(d["case_id"]), str(d["format"]), float(d["smooth_mm"]), float(d["decimate"]),
                   None if d.get("labels") is None else [int(v) for v in d["labels"]],
                   [MeshEntry(**m) for m in d.get("meshes", [])], [AbsentLabel(**a) for a in d.get("absent", [])],
                   str(d.get("space", "LPS")), str(d.get("units", "mm")), int(d.get("version", MESH_INDEX_VERSION)))

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MeshIndex":
        return cls.from_dict(read_json(path))

    def same_settings(self, fmt: str, smooth_mm: float, decimate: float, labels: Sequence[int] | None) -> bool:
        wanted = None if labels is None else sorted(int(v) for v in labels)
        mine = None if self.labels is None else sorted(self.labels)
        return (self.format, self.smooth_mm, self.decimate, mine) == (fmt, float(smooth_mm), float(decimate), wanted)


def meshes_done(output_folder: str | os.PathLike, case_id: str, fmt: str = "stl", smooth_mm: float = 0.0,
                decimate: float = 0.0, label_values: Sequence[int] | None = None) -> bool:
    """Whether the case's index exists, was made with these settings, and its files are all there."""
    folder = Path(output_folder)
    path = folder / mesh_index_name(case_id)
    if not path.is_file():
        return False
    try:
        index = MeshIndex.load(path)
    except (ValueError, KeyError, TypeError):
        return False
    return (index.same_settings(fmt, smooth_mm, decimate, _foreground(label_values))
            and all((folder / m.file).is_file() for m in index.meshes))


def _foreground(label_values: Sequence[int] | None) -> list[int] | None:
    return None if label_values is None else sorted({int(v) for v in label_values if int(v) != 0})


def write_case_meshes(output_folder: str | os.PathLike, case_id: str, segmentation: np.ndarray, geometry: Geometry,
                      label_values: Sequence[int] | None = None,
                      label_names: Sequence[str] | Mapping[int, str] | None = None, fmt: str = "stl",
                      smooth_mm: float = 0.0, decimate: float = 0.0) -> MeshIndex:
    """One mesh file per label of ``segmentation`` ((Z, Y, X) label values) present, then the index.

    ``label_values``: the labels to mesh (background 0 is skipped; default every nonzero value
    present); ``label_names``, parallel to it or ``{value: name}``, names the files. A label asked
    for but absent writes nothing and is listed in the index's ``absent``. Files that a previous
    index of this case listed and this one does not (another format, say) are removed after the
    new index is written.
    """
    check_mesh_options(fmt, smooth_mm, decimate)
    if geometry.file_ndim != 3:
        raise UserError(f"case {case_id}: surface meshes are 3D only; its label map came from a 2D file")
    try:
        seg = as_label_map(segmentation)
    except ValueError as e:
        raise UserError(f"case {case_id}: {e}") from None
    names = name_map(label_values, label_names)
    wanted = _foreground(label_values)
    folder = Path(output_folder)
    folder.mkdir(parents=True, exist_ok=True)
    index_path = folder / mesh_index_name(case_id)
    previous = None
    if index_path.is_file():
        try:
            previous = MeshIndex.load(index_path)
        except (ValueError, KeyError, TypeError):
            previous = None

    boxes = label_boxes(seg)
    index = MeshIndex(case_id, fmt, float(smooth_mm), float(decimate), wanted)
    for v in (sorted(boxes) if wanted is None else wanted):
        name = str(names.get(v, ""))
        if v not in boxes:
            index.absent.append(AbsentLabel(int(v), name, "not in the label map"))
            continue
        box = boxes[v]
        # the crop keeps the smoothing's reach: surface_mesh pads it with background
        surface = surface_mesh(seg[box] == v, geometry, smooth_mm, box_start(box))
        if surface is None:
            index.absent.append(AbsentLabel(int(v), name, f"smoothed away (sigma {smooth_mm} mm)"))
            continue
        surface = decimate_surface(surface, decimate)
        file_name = mesh_file_name(case_id, v, name, fmt)
        write_surface(surface, folder / file_name, fmt)
        index.meshes.append(MeshEntry(int(v), name, file_name, int(len(surface.vertices)), int(len(surface.faces)),
                                      surface.area_mm2, surface.volume_ml))
    index.save(index_path)
    if previous is not None:
        keep = {m.file for m in index.meshes}
        for m in previous.meshes:
            if m.file not in keep and Path(m.file).name == m.file:
                (folder / m.file).unlink(missing_ok=True)
    return index
