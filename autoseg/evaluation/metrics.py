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


def distance_to(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Euclidean distance in mm from every voxel to the nearest voxel of ``mask`` (0 inside it).

    ITK's Maurer transform, exact like scipy's ``distance_transform_edt(~mask, sampling=spacing)``
    (to 1e-5 mm: ITK works in float32) and about twice as fast, which is most of what scoring a
    hundred classes costs. Outside the mask the distance to its contour is the distance to it;
    inside, the transform is negative and clipped to 0.
    """
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing))))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return np.maximum(sitk.GetArrayFromImage(distance).astype(np.float64), 0.0)


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
    dist_to_b = distance_to(sb, spacing)
    dist_to_a = distance_to(sa, spacing)
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


def _scores(tp: int, n_ref: int, n_pred: int, diagonal_mm: float,
            distances: tuple[np.ndarray, np.ndarray, float] | None, nsd_tolerance_mm: float) -> dict[str, float]:
    """Every metric from the overlap counts and, when both masks are non-empty, their surface distances."""
    fp, fn = n_pred - tp, n_ref - tp
    both_empty = n_ref == 0 and n_pred == 0
    out = {
        "Dice": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "IoU": _ratio(tp, tp + fp + fn, both_empty),
    }
    if both_empty:
        out.update(HD95=0.0, HD=0.0, ASSD=0.0, NSD=1.0)
    elif distances is None:
        out.update(HD95=diagonal_mm, HD=diagonal_mm, ASSD=diagonal_mm, NSD=0.0)
    else:
        d_rp, d_pr, hd = distances
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


def binary_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                   nsd_tolerance_mm: float = 1.0) -> dict[str, float]:
    """All metrics for one pair of boolean masks; see the module docstring for conventions."""
    reference = np.asarray(reference, bool)
    prediction = np.asarray(prediction, bool)
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} != prediction shape {prediction.shape}")
    n_ref, n_pred = int(reference.sum()), int(prediction.sum())
    tp = int(np.logical_and(reference, prediction).sum())
    distances = surface_distances(reference, prediction, spacing) if n_ref and n_pred else None
    return _scores(tp, n_ref, n_pred, image_diagonal_mm(reference.shape, spacing), distances, nsd_tolerance_mm)


def empty_metrics() -> dict[str, float]:
    """The metrics of a class absent from both reference and prediction."""
    return {"Dice": 1.0, "IoU": 1.0, "HD95": 0.0, "HD": 0.0, "ASSD": 0.0, "NSD": 1.0,
            "precision": 1.0, "sensitivity": 1.0, "n_reference": 0.0, "n_prediction": 0.0}


# --- many classes: one pass over the volume for every class's counts and boxes ---

# Label maps are read in slabs of about this many voxels, so no full-volume int64 copy is made
# (numpy's bincount and fancy indexing convert to 8-byte indices).
_SLAB_VOXELS = 1 << 22
# Label values up to this are mapped through a lookup table; larger ones by binary search.
_MAX_LOOKUP_VALUE = 1 << 24


def _slabs(shape: Sequence[int]) -> Iterable[slice]:
    rows = max(1, _SLAB_VOXELS // max(1, int(np.prod(shape[1:]))))
    return (slice(z, z + rows) for z in range(0, int(shape[0]), rows))


def foreground_values(label_values: Iterable[int]) -> list[int]:
    """The distinct nonzero values of ``label_values``, in their order."""
    return list(dict.fromkeys(int(v) for v in label_values if int(v) != 0))


def class_index_map(label_map: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Each voxel's 1-based position in ``values`` (foreground values, no repeats), 0 for any other value.

    One pass over the volume: per-class masks of the result are ``index_map == i``, cropped to
    the boxes of ``scipy.ndimage.find_objects(index_map)``, so K classes cost one full pass.
    """
    label_map = np.asarray(label_map)
    if label_map.dtype == bool:
        label_map = label_map.view(np.uint8)
    vals = np.asarray(values, dtype=np.int64)
    out = np.zeros(label_map.shape, np.int16 if len(vals) < np.iinfo(np.int16).max else np.int32)
    if not len(vals) or not label_map.size:
        return out
    lo, hi = int(vals.min()), int(vals.max())
    if lo >= 0 and hi <= _MAX_LOOKUP_VALUE and np.issubdtype(label_map.dtype, np.integer):
        lut = np.zeros(hi + 2, out.dtype)
        lut[vals] = np.arange(1, len(vals) + 1)
        for s in _slabs(label_map.shape):
            # anything outside [0, hi] lands on an entry that stays 0
            np.take(lut, np.clip(label_map[s].astype(np.int64), -1, hi + 1), out=out[s])
        return out
    order = np.argsort(vals, kind="stable")
    ordered = vals[order]
    for s in _slabs(label_map.shape):
        part = label_map[s]
        pos = np.clip(np.searchsorted(ordered, part), 0, len(ordered) - 1)
        out[s] = np.where(ordered[pos] == part, order[pos] + 1, 0)
    return out


def class_counts(reference_index: np.ndarray, prediction_index: np.ndarray,
                 num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(true positives, reference voxels, prediction voxels)`` per class index 0..K of two
    :func:`class_index_map` results (index 0: every other value), in one pass."""
    if reference_index.shape != prediction_index.shape:
        raise ValueError(f"reference shape {reference_index.shape} != prediction shape {prediction_index.shape}")
    n = num_classes + 1
    tp, n_ref, n_pred = (np.zeros(n, np.int64) for _ in range(3))
    for s in _slabs(reference_index.shape):
        r, p = reference_index[s].ravel(), prediction_index[s].ravel()
        n_ref += np.bincount(r, minlength=n)
        n_pred += np.bincount(p, minlength=n)
        tp += np.bincount(r[r == p], minlength=n)
    return tp, n_ref, n_pred


def class_boxes(index_map: np.ndarray, num_classes: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of every class index 1..K of a :func:`class_index_map` (entry i - 1; None: absent)."""
    return list(ndi.find_objects(index_map, max_label=num_classes))


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: Sequence[int],
               margin: int = 1) -> tuple[slice, ...]:
    boxes = [x for x in (a, b) if x is not None]
    return tuple(slice(max(min(x[d].start for x in boxes) - margin, 0), min(max(x[d].stop for x in boxes) + margin, n))
                 for d, n in enumerate(shape))


def compute_case_metrics(reference: np.ndarray, prediction: np.ndarray, spacing: Sequence[float],
                         label_values: Iterable[int], nsd_tolerance_mm: float = 1.0) -> dict[int, dict[str, float]]:
    """Metrics for every foreground label value (0 is skipped): ``{label: {metric: value}}``.

    ``reference`` and ``prediction`` are ``(Z, Y, X)`` label maps of the same shape;
    ``spacing`` is ``(z, y, x)`` in mm. The overlap counts of all classes come from one pass
    over the maps; surface distances of a class are computed inside its bounding box (both
    masks, plus one voxel), which gives the values :func:`binary_metrics` gives on the whole maps.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} != prediction shape {prediction.shape}")
    spacing = tuple(float(s) for s in spacing)
    values = foreground_values(label_values)
    ref_index, pred_index = class_index_map(reference, values), class_index_map(prediction, values)
    tp, n_ref, n_pred = class_counts(ref_index, pred_index, len(values))
    ref_boxes, pred_boxes = class_boxes(ref_index, len(values)), class_boxes(pred_index, len(values))
    diagonal = image_diagonal_mm(reference.shape, spacing)
    out = {}
    for i, v in enumerate(values, start=1):
        distances = None
        if n_ref[i] and n_pred[i]:
            box = _union_box(ref_boxes[i - 1], pred_boxes[i - 1], reference.shape)
            distances = surface_distances(ref_index[box] == i, pred_index[box] == i, spacing)
        out[v] = _scores(int(tp[i]), int(n_ref[i]), int(n_pred[i]), diagonal, distances, nsd_tolerance_mm)
    return out


def dice_from_counts(tp: np.ndarray, n_ref: np.ndarray, n_pred: np.ndarray) -> np.ndarray:
    """Dice per entry of :func:`class_counts`' arrays (both empty: 1, one empty: 0)."""
    den = (n_ref + n_pred).astype(np.float64)
    return np.where(den > 0, 2.0 * tp / np.maximum(den, 1.0), 1.0)


def dice_per_label(reference: np.ndarray, prediction: np.ndarray, label_values: Iterable[int]) -> dict[int, float]:
    """Only the Dice of every foreground label value (same empty-mask rules), without distances.

    Fast path for model selection, where thousands of case/candidate pairs are scored: one pass
    over the maps whatever the number of classes.
    """
    if reference.shape != prediction.shape:
        raise ValueError(f"reference shape {reference.shape} != prediction shape {prediction.shape}")
    values = foreground_values(label_values)
    dice = dice_from_counts(*class_counts(class_index_map(reference, values), class_index_map(prediction, values),
                                          len(values)))
    return {v: float(dice[i]) for i, v in enumerate(values, start=1)}


def label_values_present(label_map: np.ndarray) -> list[int]:
    """The distinct values of an integer label map, sorted; a bincount per slab where the values
    are small non-negative integers (np.unique sorts the whole volume)."""
    label_map = np.asarray(label_map)
    if not label_map.size:
        return []
    if np.issubdtype(label_map.dtype, np.integer) or label_map.dtype == bool:
        lo, hi = int(label_map.min()), int(label_map.max())
        if lo >= 0 and hi <= _MAX_LOOKUP_VALUE:
            counts = np.zeros(hi + 1, np.int64)
            for s in _slabs(label_map.shape):
                counts += np.bincount(label_map[s].ravel().astype(np.int64), minlength=hi + 1)
            return np.flatnonzero(counts).tolist()
    return np.unique(label_map).tolist()
