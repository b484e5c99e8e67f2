"""Per-structure statistics and the physical-space surface they are measured on."""
from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.dataset.imageio import Geometry, array_to_image
from autoseg.evaluation.structure_stats import (
    STRUCTURES_CSV, STRUCTURES_JSON, StructureReport, index_to_physical, structure_statistics, surface_mesh,
    write_structure_statistics)


def rotation(degrees=(20.0, -35.0, 50.0)) -> np.ndarray:
    """A proper rotation about all three axes: an oblique scan."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "identity": np.eye(3),
    "rotated": rotation(),
    "oblique_det_minus_1": rotation() @ np.diag([1.0, -1.0, 1.0]),
}


def oblique_geometry(direction: np.ndarray = DIRECTIONS["oblique_det_minus_1"]) -> Geometry:
    """Origin (10, -20, 30), spacing x, y, z = (0.8, 0.8, 2.5): arrays hold (z, y, x)."""
    return Geometry((2.5, 0.8, 0.8), (10.0, -20.0, 30.0), tuple(float(v) for v in direction.ravel()), 3)


def sphere(shape=(14, 40, 40), centre=(6.6, 19.3, 20.2), radius_mm=12.0, spacing=(2.5, 0.8, 0.8)) -> np.ndarray:
    """A ball of ``radius_mm`` in physical space (anisotropic voxels), as a uint8 (Z, Y, X) mask."""
    z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((z, y, x), centre, spacing))
    return (d2 < radius_mm ** 2).astype(np.uint8)


def sitk_physical(geometry: Geometry, index_zyx) -> np.ndarray:
    """SimpleITK's own index -> physical mapping, the reference for ours."""
    img = array_to_image(np.zeros((2, 2, 2), np.uint8), geometry)
    return np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.asarray(index_zyx)[::-1]]))


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_index_to_physical_matches_simpleitk(name):
    g = oblique_geometry(DIRECTIONS[name])
    a, b = index_to_physical(g)
    for idx in [(0, 0, 0), (3, 1, 2), (-0.5, 7.25, 11.5)]:
        assert b + a @ np.asarray(idx, float) == pytest.approx(sitk_physical(g, idx), abs=1e-9)


def test_index_to_physical_2d():
    g = Geometry((1.0, 0.5, 2.0), (3.0, 4.0), (0.0, -1.0, 1.0, 0.0), 2)
    a, b = index_to_physical(g)
    img = sitk.GetImageFromArray(np.zeros((4, 4), np.uint8))
    img.SetSpacing((2.0, 0.5))
    img.SetOrigin((3.0, 4.0))
    img.SetDirection((0.0, -1.0, 1.0, 0.0))
    assert b + a @ np.array([1.0, 3.0]) == pytest.approx(img.TransformContinuousIndexToPhysicalPoint((3.0, 1.0)))


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_sphere_surface_is_outward_and_encloses_the_voxel_volume(name):
    g = oblique_geometry(DIRECTIONS[name])
    mask = sphere()
    s = surface_mesh(mask, g)
    voxel_mm3 = mask.sum() * 2.5 * 0.8 * 0.8
    # positive: faces point outward whatever the axis swap and the direction's determinant
    assert s.signed_volume_mm3 > 0
    assert s.signed_volume_mm3 == pytest.approx(voxel_mm3, rel=0.05)
    assert s.area_mm2 == pytest.approx(surface_mesh(mask, oblique_geometry(np.eye(3))).area_mm2, rel=1e-9)


def _edges_shared_twice(faces: np.ndarray) -> bool:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool(np.all(counts == 2))


def test_surface_closes_at_the_volume_edge():
    g = oblique_geometry(np.eye(3))
    full = np.ones((3, 5, 6), np.uint8)  # fills the volume: every face lies on the edge
    s = surface_mesh(full, g)
    assert _edges_shared_twice(s.faces)
    assert 0 < s.signed_volume_mm3 <= full.sum() * 2.5 * 0.64


def test_a_crop_lands_where_the_full_mask_does():
    g = oblique_geometry()
    mask = sphere()
    zs, ys, xs = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    crop = mask[zs[0]:zs[-1] + 1, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
    whole, cropped = surface_mesh(mask, g), surface_mesh(crop, g, start=(zs[0], ys[0], xs[0]))
    assert cropped.vertices.mean(axis=0) == pytest.approx(whole.vertices.mean(axis=0), abs=1e-9)


def test_smoothing_rounds_off_the_voxel_steps_and_can_remove_a_speck():
    g = oblique_geometry()
    mask = sphere()
    true_area = 4 * np.pi * 12.0 ** 2
    plain, smooth = surface_mesh(mask, g), surface_mesh(mask, g, smooth_mm=1.0)
    assert abs(smooth.area_mm2 - true_area) < abs(plain.area_mm2 - true_area)
    assert smooth.signed_volume_mm3 == pytest.approx(mask.sum() * 1.6, rel=0.05)
    speck = np.zeros((6, 6, 6), np.uint8)
    speck[3, 3, 3] = 1
    assert surface_mesh(speck, g, smooth_mm=3.0) is None
    assert surface_mesh(np.zeros((4, 4, 4), bool), g) is None


def test_surface_refuses_2d():
    with pytest.raises(ValueError, match="3D"):
        surface_mesh(np.ones((1, 4, 4), bool), Geometry((1.0, 1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1), 2))


def _brute_force_bbox(mask: np.ndarray, geometry: Geometry, start=(0, 0, 0)):
    a, b = index_to_physical(geometry)
    idx = np.argwhere(mask) + np.asarray(start)
    corners = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
    pts = (idx[:, None, :] + corners[None]).reshape(-1, 3) @ a.T + b
    return pts.min(axis=0), pts.max(axis=0)


def test_statistics_of_two_labels_with_an_image():
    g = oblique_geometry()
    seg = np.zeros((8, 12, 12), np.int16)
    seg[1:4, 2:6, 3:9] = 1  # one box: 3 x 4 x 6 voxels
    seg[5:7, 1:3, 1:3] = 3  # two blobs touching only at a corner: one component with full connectivity
    seg[7, 3, 3] = 3
    seg[6, 9:11, 9:11] = 3  # and a separate third
    rng = np.random.default_rng(0)
    image = rng.normal(40.0, 10.0, size=(2,) + seg.shape).astype(np.float32)
    rows = structure_statistics("c1", seg, g, image, label_values=[0, 1, 2, 3], label_names=["bg", "liver", "x", "tumour"])
    assert [(r.label, r.name) for r in rows] == [(1, "liver"), (3, "tumour")]  # absent label 2: no row
    liver, tumour = rows
    assert liver.voxels == 72 and liver.volume_ml == pytest.approx(72 * 1.6 / 1000)
    assert liver.n_components == 1 and tumour.n_components == 2
    assert liver.dims == 3 and liver.area_mm2 is None and liver.perimeter_mm is None
    assert liver.surface_area_mm2 == pytest.approx(surface_mesh(seg == 1, g).area_mm2)
    for c in range(2):
        inside = image[c][seg == 3].astype(np.float64)
        assert tumour.intensity_mean[c] == pytest.approx(inside.mean())
        assert tumour.intensity_std[c] == pytest.approx(inside.std())
    for row, value in ((liver, 1), (tumour, 3)):
        lo, hi = _brute_force_bbox(seg == value, g)
        assert row.bbox_min_mm == pytest.approx(lo.tolist()) and row.bbox_max_mm == pytest.approx(hi.tolist())
        assert row.bbox_size_mm == pytest.approx((hi - lo).tolist())


def test_statistics_identity_bbox_and_default_labels():
    g = Geometry((2.0, 1.0, 0.5), (100.0, 0.0, -50.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), 3)
    seg = np.zeros((5, 6, 7), np.uint8)
    seg[1:3, 2:4, 3:7] = 2
    (row,) = structure_statistics("c", seg, g)
    assert row.label == 2 and row.name == "" and row.intensity_mean == []
    # x voxels 3..6 at 0.5 mm from -50: corners -50 + 2.5*0.5 ... ; y 2..3 at 1 mm; z 1..2 at 2 mm from 100
    assert row.bbox_min_mm == pytest.approx([100.0 + 2.5 * 0.5, 1.5, -50.0 + 0.5 * 2.0])
    assert row.bbox_max_mm == pytest.approx([100.0 + 6.5 * 0.5, 3.5, -50.0 + 2.5 * 2.0])


def test_statistics_2d_give_area_and_perimeter():
    sx, sy = 2.0, 0.5
    g = Geometry((1.0, sy, sx), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2)
    seg = np.zeros((1, 10, 10), np.uint8)
    w, h = 5, 4
    seg[0, 2:2 + h, 3:3 + w] = 1
    (row,) = structure_statistics("p", seg, g, np.ones((3, 1, 10, 10), np.float32))
    assert row.dims == 2 and row.volume_ml is None and row.surface_area_mm2 is None
    assert row.area_mm2 == pytest.approx(w * h * sx * sy)
    # marching squares cuts each corner of the rectangle with a diagonal
    corner = np.hypot(0.5 * sx, 0.5 * sy)
    assert row.perimeter_mm == pytest.approx(2 * (w * sx + h * sy) - 4 * (0.5 * sx + 0.5 * sy) + 4 * corner)
    assert row.bbox_min_mm == pytest.approx([2.5 * sx, 1.5 * sy]) and len(row.bbox_size_mm) == 2
    assert row.intensity_mean == [1.0, 1.0, 1.0]


def test_statistics_refuse_bad_input():
    g = oblique_geometry()
    with pytest.raises(ValueError, match="non-integer"):
        structure_statistics("c", np.full((2, 2, 2), 0.5), g)
    with pytest.raises(ValueError, match="image shape"):
        structure_statistics("c", np.ones((2, 2, 2), np.uint8), g, np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="parallel"):
        structure_statistics("c", np.ones((2, 2, 2), np.uint8), g, label_values=[1], label_names=["a", "b"])


def test_csv_and_json_writers(tmp_path):
    g3 = oblique_geometry()
    g2 = Geometry((1.0, 1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), 2)
    rows = structure_statistics("b", sphere(), g3, np.zeros((1, 14, 40, 40), np.float32), [1], ["ball"])
    flat = np.zeros((1, 5, 5), np.uint8)
    flat[0, 1:3, 1:4] = 4
    rows += structure_statistics("a", flat, g2)
    csv_path, json_path = write_structure_statistics(tmp_path, rows)
    assert (csv_path.name, json_path.name) == (STRUCTURES_CSV, STRUCTURES_JSON)
    assert not list(tmp_path.glob(".partial*"))
    table = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [(r["case_id"], r["label"]) for r in table] == [("a", "4"), ("b", "1")]
    a, b = table
    assert a["volume_ml"] == "" and float(a["area_mm2"]) == 6.0 and a["bbox_min_z_mm"] == ""
    assert a["intensity_mean_0"] == "" and float(b["intensity_mean_0"]) == 0.0
    assert b["name"] == "ball" and float(b["volume_ml"]) == pytest.approx(rows[0].volume_ml, rel=1e-5)
    report = StructureReport.load(json_path)
    assert report.schema_version == 1 and report.space == "LPS"
    assert [r.to_dict() for r in report.structures] == [r.to_dict() for r in sorted(rows, key=lambda r: r.case_id)]
