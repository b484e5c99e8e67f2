"""Per-case segmentation metrics on label maps: overlap, surface distances in mm, PPV, sensitivity.

All functions are pure: numpy label maps ``(Z, Y, X)`` in, plain floats out. Conventions
(documented in ``documentation/evaluation.md``):

* **Surface** of a mask: its voxels that have at least one of their 26 neighbours inside the
  image and outside the mask. The image border is not a surface. This is SimpleITK's
  ``LabelContourImageFilter(fullyConnected=True)`` and the contour that
  ``SignedMaurerDistanceMapImageFilter`` measures to, so the two agree exactly.
* **Surface distances** are Euclidean in mm (voxel spacing applied), from every surface voxel
  of one mask to the nearest surface voxel of the other.
* **HD95** = max of the two directed 95th percentiles (numpy's linear interpolation);
  **ASSD** = mean of all surface distances of both directions pooled;
  **NSD** = fraction of surface voxels of both masks within ``tolerance`` mm of the other
  surface; **HD** = SimpleITK's Hausdorff distance over all voxels of the masks.
* **Empty masks** never give NaN: both empty counts as a perfect result (1 for ratios,
  0 mm for distances); one side empty counts as a complete failure (0 for ratios, the image
  diagonal in mm for distances), so a missed or hallucinated structure is penalised in the
  mean instead of silently dropped.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

METRIC_NAMES = ("Dice", "IoU", "HD95", "HD", "ASSD", "NSD", "precision", "sensitivity")
# Metrics where larger is better; the others are distances in mm.
HIGHER_IS_BETTER = {"Dice": True, "IoU": True, "NSD": True, "precision": True, "sensitivity": True,
                    "HD95": False, "HD": False, "ASSD": False}

_FULL_3D = ndi.generate_binary_structure(3, 3)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image's diagonal in mm: the distance penalty when one mask is empty."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 26-neighbour inside the image that is not in ``mask``."""
    # border_value=1: voxels beyond the image count as foreground, so the border is not a surface
    return mask & ~ndi.binary_erosion(mask, _FULL_3D, border_value=1)


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    coords = np.nonzero(mask)
    return tuple(slice(max(int(c.min()) - margin, 0), min(int(c.max()) + 1 + margin, n))
                 for c, n in zip(coords, mask.shape))


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray, float]:
    """Distances (mm) from a's surface voxels to b's surface and back, plus the all-voxel Hausdorff.

    Both masks must be non-empty. The work is restricted to the bounding box of both masks
    plus one voxel: the nearest surface voxel of either mask lies inside it, and the margin
    keeps the surface definition unchanged (margin voxels are background in both masks).
    """
    box = _bounding_box(a | b)
    a, b = a[box], b[box]
    sa, sb = surface(a), surface(b)
    # A mask filling the whole image has no surface; then its own voxels stand in for it.
    if not sa.any():
        sa = a
    if not sb.any():
        sb = b
    dist_to_b = ndi.distance_transform_edt(~sb, sampling=spacing)
    dist_to_a = ndi.distance_transform_edt(~sa, sampling=spacing)
    d_ab = dist_to_b[sa]
    d_ba = dist_to_a[sb]
    # Outside a mask, the distance to its surface is the distance to the mask itself (the nearest
    # voxel of a mask is always a surface voxel), which gives SimpleITK's all-voxel Hausdorff.
    a_out, b_out = a & ~b, b & ~a
    hd = max(float(dist_to_b[a_out].max()) if a_out.any() else 0.0,
             float(dist_to_a[b_out].max()) if b_out.any() else 0.0)
    return d_ab, d_ba, hd


def _ratio(num: float, den: float, both_empty: bool) -> float:
    if den == 0:
        return 1.0 if both_empty else 0.0
    return float(num / den)


def binary_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                   nsd_tolerance_mm: float = 1.0) -> dict[str, float]:
    """All metrics for one pair of boolean masks; see the module docstring for conventions."""
    reference = np.asarray(reference, bool)
    prediction = np.asarray(prediction, bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} != prediction shape {prediction.shape}")
    n_ref, n_pred = int(reference.sum()), int(prediction.sum())
    tp = int(np.logical_and(reference, prediction).sum())
    fp, fn = n_pred - tp, n_ref - tp
    both_empty = n_ref == 0 and n_pred == 0
    out = {
        "Dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "IoU": _ratio(tp, tp + fp + fn, both_empty),
    }
    if both_empty:
        out.update(HD95=0.0, HD=0.0, ASSD=0.0, NSD=1.0)
    elif n_ref == 0 or n_pred == 0:
        diag = image_diagonal_mm(reference.shape, spacing)
        out.update(HD95=diag, HD=diag, ASSD=diag, NSD=0.0)
    else:
        d_rp, d_pr, hd = surface_distances(reference, prediction, spacing)
        pooled = np.concatenate([d_rp, d_pr])
        out.update(
            HD95=float(max(np.percentile(d_rp, 95), np.percentile(d_pr, 95))),
            HD=hd,
            ASSD=float(pooled.mean()),
            NSD=float((pooled <= nsd_tolerance_mm).sum() / pooled.size),
        )
    out["precision"] = _ratio(tp, n_pred, both_empty)
    out["sensitivity"] = _ratio(tp, n_ref, both_empty)
    out["n_reference"] = float(n_ref)
    out["n_prediction"] = float(n_pred)
    return out


def empty_metrics() -> dict[str, float]:
    """The metrics of a class absent from both reference and prediction."""
    return {"Dice": 1.0, "IoU": 1.0, "HD95": 0.0, "HD": 0.0, "ASSD": 0.0, "NSD": 1.0,
            "precision": 1.0, "sensitivity": 1.0, "n_reference": 0.0, "n_prediction": 0.0}


def compute_case_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                         label_values: Iterable[int], nsd_tolerance_mm: float = 1.0) -> dict[int, dict[str, float]]:
    """Metrics for every foreground label value (0 is skipped): ``{label: {metric: value}}``.

    ``reference`` and ``prediction`` are ``(Z, Y, X)`` label maps of the same shape;
    ``spacing`` is ``(z, y, x)`` in mm.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} != prediction shape {prediction.shape}")
    spacing = tuple(float(s) for s in spacing)
    return {int(v): binary_metrics(reference == v, prediction == v, spacing, nsd_tolerance_mm)
            for v in label_values if int(v) != 0}


def dice_per_label(reference: np.ndarray, prediction: np.ndarray, label_values: Iterable[int]) -> dict[int, float]:
    """Only the Dice of every foreground label value (same empty-mask rules), without distances.

    Fast path for model selection, where thousands of case/candidate pairs are scored.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} != prediction shape {prediction.shape}")
    out = {}
    for v in label_values:
        if int(v) == 0:
            continue
        r, p = reference == v, prediction == v
        tp, n_r, n_p = int(np.count_nonzero(r & p)), int(np.count_nonzero(r)), int(np.count_nonzero(p))
        out[int(v)] = _ratio(2 * tp, n_r + n_p, n_r == 0 and n_p == 0)
    return out
