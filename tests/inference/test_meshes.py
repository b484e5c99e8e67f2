"""Surface mesh files: physical placement (the 3D Slicer overlay), orientation, names, index, formats."""
from __future__ import annotations

import sys

import meshio
import numpy as np
import pytest

from autoseg.dataset.imageio import Geometry, array_to_image
from autoseg.errors import UserError
from autoseg.evaluation.structure_stats import Surface
from autoseg.inference.meshes import (
    MESH_FORMATS, MeshIndex, check_mesh_options, decimate_surface, mesh_file_name, mesh_index_name, meshes_done,
    safe_name, write_case_meshes, write_surface)

from tests.evaluation.test_structure_stats import DIRECTIONS, oblique_geometry, sphere


def signed_volume_mm3(points: np.ndarray, faces: np.ndarray) -> float:
    return Surface(np.asarray(points, np.float64), np.asarray(faces, np.int64)).signed_volume_mm3


def two_labels() -> np.ndarray:
    seg = sphere().astype(np.int16)
    seg[2:5, 2:8, 30:37] = 5
    return seg


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_mesh_overlays_the_image_in_physical_space(tmp_path, name):
    """The Slicer claim: vertices sit where SimpleITK puts the label's voxels, for any direction."""
    g = oblique_geometry(DIRECTIONS[name])
    mask = sphere()
    index = write_case_meshes(tmp_path, "case", mask, g, [1], ["ball"], "stl")
    (entry,) = index.meshes
    img = array_to_image(mask, g)
    centroid_index_xyz = np.argwhere(mask).mean(axis=0)[::-1]
    voxel_centroid = np.array(img.TransformContinuousIndexToPhysicalPoint(centroid_index_xyz.tolist()))
    points = meshio.read(tmp_path / entry.file).points
    assert np.all(np.abs(points.mean(axis=0) - voxel_centroid) < 0.5 * 0.8)  # half the smallest voxel side
    voxel_ml = mask.sum() * 2.5 * 0.8 * 0.8 / 1000
    assert entry.volume_ml == pytest.approx(voxel_ml, rel=0.05)
    # read back from disk, faces still point outward
    m = meshio.read(tmp_path / entry.file)
    assert signed_volume_mm3(m.points, m.cells_dict["triangle"]) / 1000 == pytest.approx(voxel_ml, rel=0.05)


@pytest.mark.parametrize("fmt", MESH_FORMATS)
def test_written_files_read_back_with_the_same_vertices(tmp_path, fmt):
    g = oblique_geometry()
    mask = sphere()
    index = write_case_meshes(tmp_path, "case", mask, g, fmt=fmt)
    (entry,) = index.meshes
    assert entry.file == f"case_1.{fmt}"
    from autoseg.evaluation.structure_stats import surface_mesh

    expected = surface_mesh(mask, g)
    path = tmp_path / entry.file
    m = meshio.read(path, file_format="vtk" if fmt == "vtk" else fmt)
    if fmt == "stl":  # float32 facets, vertices merged and sorted on reading
        got = np.unique(m.points.astype(np.float32), axis=0)
        want = np.unique(expected.vertices.astype(np.float32), axis=0)
        assert got.shape == want.shape and np.allclose(got, want, atol=1e-4)
    else:
        assert np.allclose(m.points, expected.vertices, atol=1e-9)
        assert np.array_equal(m.cells_dict["triangle"], expected.faces)
    head = path.read_bytes()[:120]
    assert b"SPACE=LPS" in head  # where 3D Slicer reads the coordinate system
    assert not head.startswith(b"solid")  # a binary STL header must not look like ASCII STL
    assert (entry.vertices, entry.faces) == (len(expected.vertices), len(expected.faces))


def test_names_index_and_absent_labels(tmp_path):
    g = oblique_geometry()
    index = write_case_meshes(tmp_path, "pat01", two_labels(), g, [1, 5, 7, 0],
                              ["ball", "left kidney/ø", "absent one", "background"])
    assert [m.file for m in index.meshes] == ["pat01_1_ball.stl", "pat01_5_left_kidney.stl"]
    assert [(a.label, a.name) for a in index.absent] == [(7, "absent one")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pat01_1_ball.stl", "pat01_5_left_kidney.stl",
                                                         mesh_index_name("pat01")]
    saved = MeshIndex.load(tmp_path / "pat01_meshes.json")
    assert saved == index and saved.space == "LPS" and saved.labels == [1, 5, 7]
    box = saved.meshes[1]
    assert box.volume_ml > 0 and box.area_mm2 > 0 and box.faces > 0
    # names as a {value: name} mapping and every label present by default
    again = write_case_meshes(tmp_path / "b", "pat01", two_labels(), g, label_names={5: "kidney"})
    assert [m.file for m in again.meshes] == ["pat01_1.stl", "pat01_5_kidney.stl"] and again.labels is None


def test_safe_names():
    assert safe_name("Left Kidney (upper pole)") == "Left_Kidney_upper_pole"
    assert safe_name("../../etc") == "etc" and safe_name("ø") == ""
    assert mesh_file_name("c", 3, "a b", "obj") == "c_3_a_b.obj" and mesh_file_name("c", 3, "", "vtk") == "c_3.vtk"


def test_done_check_and_a_rewrite_in_another_format_removes_old_files(tmp_path):
    g = oblique_geometry()
    seg = two_labels()
    assert not meshes_done(tmp_path, "c")
    write_case_meshes(tmp_path, "c", seg, g, fmt="stl")
    assert meshes_done(tmp_path, "c", "stl") and not meshes_done(tmp_path, "c", "obj")
    assert not meshes_done(tmp_path, "c", "stl", smooth_mm=1.0) and not meshes_done(tmp_path, "c", "stl", label_values=[1])
    write_case_meshes(tmp_path, "c", seg, g, fmt="obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c_1.obj", "c_5.obj", "c_meshes.json"]
    (tmp_path / "c_5.obj").unlink()
    assert not meshes_done(tmp_path, "c", "obj")  # a listed file went missing


def test_smoothing_and_a_label_smoothed_away(tmp_path):
    g = oblique_geometry()
    seg = sphere().astype(np.int16)
    seg[12, 35, 35] = 2  # one voxel: gone under a 3 mm blur
    plain = write_case_meshes(tmp_path / "a", "c", seg, g, [1, 2])
    smooth = write_case_meshes(tmp_path / "b", "c", seg, g, [1, 2], smooth_mm=3.0)
    assert [m.label for m in plain.meshes] == [1, 2]
    assert [m.label for m in smooth.meshes] == [1] and smooth.absent[0].label == 2
    assert "smoothed away" in smooth.absent[0].reason
    assert smooth.meshes[0].area_mm2 < plain.meshes[0].area_mm2  # voxel steps gone


def test_decimation_keeps_a_closed_outward_surface(tmp_path):
    pytest.importorskip("fast_simplification")
    g = oblique_geometry()
    full = write_case_meshes(tmp_path / "a", "c", sphere(), g).meshes[0]
    fewer = write_case_meshes(tmp_path / "b", "c", sphere(), g, decimate=0.8).meshes[0]
    assert fewer.faces == pytest.approx(0.2 * full.faces, rel=0.15)
    assert fewer.volume_ml == pytest.approx(full.volume_ml, rel=0.05)


def test_decimate_surface_is_a_no_op_at_zero():
    s = Surface(np.zeros((3, 3)), np.array([[0, 1, 2]]))
    assert decimate_surface(s, 0.0) is s


def test_bad_options_are_refused_before_any_work(monkeypatch):
    with pytest.raises(UserError, match="unknown mesh format 'ply'"):
        check_mesh_options("ply")
    with pytest.raises(UserError, match="--smooth"):
        check_mesh_options("stl", -1.0)
    with pytest.raises(UserError, match="--decimate"):
        check_mesh_options("stl", 0.0, 1.0)
    monkeypatch.setitem(sys.modules, "fast_simplification", None)  # as if not installed
    with pytest.raises(UserError, match="fast-simplification"):
        check_mesh_options("stl", 0.0, 0.5)
    check_mesh_options("stl", 0.0, 0.0)  # meshes without decimation need nothing extra


def test_2d_and_non_label_maps_are_refused(tmp_path):
    g2 = Geometry((1.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2)
    with pytest.raises(UserError, match="3D only"):
        write_case_meshes(tmp_path, "c", np.ones((1, 4, 4), np.uint8), g2)
    with pytest.raises(UserError, match="case c: not a label map"):
        write_case_meshes(tmp_path, "c", np.full((3, 3, 3), 0.25, np.float32), oblique_geometry())
    with pytest.raises(UserError, match="unknown mesh format"):
        write_surface(Surface(np.zeros((3, 3)), np.array([[0, 1, 2]])), tmp_path / "x.ply")
    assert not list(tmp_path.iterdir())
