"""Metrics checked against an independent implementation built from SimpleITK filters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from autoseg.evaluation.metrics import binary_metrics, compute_case_metrics, image_diagonal_mm

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _img(mask: np.ndarray, spacing) -> sitk.Image:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    return img


def sitk_metrics(ref: np.ndarray, pred: np.ndarray, spacing, tol: float) -> dict[str, float]:
    """Reference values from SimpleITK alone (both masks non-empty)."""
    r, p = _img(ref, spacing), _img(pred, spacing)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(r, p)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(r, p)

    def dist_map(img):
        return sitk.GetArrayFromImage(sitk.Abs(sitk.SignedMaurerDistanceMap(img, squaredDistance=False, useImageSpacing=True)))

    def contour(img):
        return sitk.GetArrayFromImage(sitk.LabelContour(img, fullyConnected=True, backgroundValue=0)) > 0

    d_pr = dist_map(r)[contour(p)]  # prediction surface -> reference surface
    d_rp = dist_map(p)[contour(r)]
    pooled = np.concatenate([d_rp, d_pr])
    return {
        "Dice": overlap.GetDiceCoefficient(),
        "IoU": overlap.GetJaccardCoefficient(),
        "HD": hausdorff.GetHausdorffDistance(),
        "HD95": max(np.percentile(d_rp, 95), np.percentile(d_pr, 95)),
        "ASSD": pooled.mean(),
        "NSD": (pooled <= tol).mean(),
    }


def assert_match(ref, pred, spacing, tol=1.0):
    ours = binary_metrics(ref, pred, spacing, nsd_tolerance_mm=tol)
    theirs = sitk_metrics(ref, pred, spacing, tol)
    assert ours["Dice"] == pytest.approx(theirs["Dice"], abs=1e-6)
    assert ours["IoU"] == pytest.approx(theirs["IoU"], abs=1e-6)
    for key in ("HD", "HD95", "ASSD"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-3), key
    # NSD counts distances at a threshold; float32 maps could flip a distance exactly at it
    assert ours["NSD"] == pytest.approx(theirs["NSD"], abs=1e-3)
    tp = (ref & pred).sum()
    assert ours["precision"] == pytest.approx(tp / pred.sum())
    assert ours["sensitivity"] == pytest.approx(tp / ref.sum())
    return ours


def _ellipsoid(shape, center, radii):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 0.8, 0.7), (10.0, 1.5625, 1.5625)])
def test_synthetic_against_simpleitk(spacing):
    rng = np.random.default_rng(0)
    shape = (20, 30, 28)
    ref = _ellipsoid(shape, (10, 14, 13), (6, 9, 8))
    pred = _ellipsoid(shape, (11, 16, 12), (5, 10, 7))
    pred |= rng.random(shape) > 0.995  # scattered false positives far from the surface
    ours = assert_match(ref, pred, spacing)
    assert 0.3 < ours["Dice"] < 1
    # masks touching the image border (the border is not a surface)
    ref2 = np.zeros(shape, bool)
    ref2[:12, :, 5:] = True
    pred2 = np.roll(ref2, 2, axis=2)
    assert_match(ref2, pred2, spacing, tol=2.0)


def test_identical_masks_are_perfect():
    m = _ellipsoid((10, 12, 12), (5, 6, 6), (3, 4, 4))
    r = binary_metrics(m, m, (2.0, 1.0, 1.0))
    assert r["Dice"] == 1 and r["IoU"] == 1 and r["HD95"] == 0 and r["ASSD"] == 0 and r["NSD"] == 1 and r["HD"] == 0


def test_known_shift_distance():
    # a slab shifted by 2 voxels along z at 3 mm spacing: every surface distance is 0 or 6 mm
    ref = np.zeros((20, 10, 10), bool)
    ref[5:12, 2:8, 2:8] = True
    pred = np.roll(ref, 2, axis=0)
    r = binary_metrics(ref, pred, (3.0, 1.0, 1.0))
    assert r["HD"] == pytest.approx(6.0)
    assert r["Dice"] == pytest.approx(2 * 5 / 14)


def test_empty_conventions():
    shape, spacing = (4, 5, 6), (2.0, 1.0, 1.0)
    empty = np.zeros(shape, bool)
    some = empty.copy()
    some[1:3, 1:3, 1:3] = True
    both = binary_metrics(empty, empty, spacing)
    assert both["Dice"] == 1 and both["IoU"] == 1 and both["HD95"] == 0 and both["NSD"] == 1
    diag = image_diagonal_mm(shape, spacing)
    assert diag == pytest.approx(np.sqrt(8 ** 2 + 5 ** 2 + 6 ** 2))
    for ref, pred in ((some, empty), (empty, some)):
        r = binary_metrics(ref, pred, spacing)
        assert r["Dice"] == 0 and r["IoU"] == 0 and r["NSD"] == 0
        assert r["HD95"] == r["ASSD"] == r["HD"] == pytest.approx(diag)
        assert r["precision"] == 0 and r["sensitivity"] == 0
        assert not any(np.isnan(v) for v in r.values())


def test_compute_case_metrics_per_label_and_shape_check():
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:4, 1:5, 1:5] = 1
    ref[1:4, 5:7, 1:5] = 2
    pred = ref.copy()
    pred[pred == 2] = 0
    m = compute_case_metrics(ref, pred, (1, 1, 1), [0, 1, 2, 3])
    assert set(m) == {1, 2, 3}
    assert m[1]["Dice"] == 1 and m[2]["Dice"] == 0 and m[3]["Dice"] == 1
    with pytest.raises(ValueError):
        compute_case_metrics(ref, pred[:-1], (1, 1, 1), [1])


def _real_cases(folder: str, n: int):
    labels = DATA / folder / "labelsTr"
    if not labels.is_dir():
        pytest.skip(f"{labels} absent")
    from autoseg.dataset.imageio import read_label
    return [read_label(f) for f in sorted(labels.glob("*.nii.gz"))[:n]]


@pytest.mark.parametrize("folder,n", [("Task04_Hippocampus", 3), ("ACDC", 1)])
def test_real_label_maps_against_simpleitk(folder, n):
    for label, geometry in _real_cases(folder, n):
        spacing = geometry.spacing
        for value in [v for v in np.unique(label) if v != 0]:
            ref = label == value
            eroded = ndi.binary_erosion(ref, ndi.generate_binary_structure(3, 1))
            shifted = np.roll(ref, 2, axis=2)
            one_slice_removed = ref.copy()
            zs = np.nonzero(ref.any(axis=(1, 2)))[0]
            one_slice_removed[zs[len(zs) // 2]] = False
            for pred in (eroded, shifted, one_slice_removed):
                if pred.any():
                    assert_match(ref, pred, spacing, tol=2.0)
