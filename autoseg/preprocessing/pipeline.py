"""Preprocess one case: crop -> normalize -> resample. Pure; training and inference share it.

Normalization runs *before* resampling (as nnU-Net does), because

* CT is clipped to its intensity window first, so a cubic spline never rings from
  out-of-window values (air at -1000, metal, -3024 scanner padding) into the tissue range;
* per-case z-score statistics come from acquired voxels, not interpolated ones, which is
  also what the fingerprint measured for the CT statistics;
* resampling then works on float32 data that is already in its final range.

The label map leaves as int16 *class indices*: label value ``plans.label_values[i]`` -> ``i``.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from autoseg.dataset.imageio import Geometry
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.cropping import crop_to_nonzero
from autoseg.preprocessing.normalization import normalize
from autoseg.preprocessing.resampling import compute_new_shape, resample

MAX_CLASS_LOCATIONS = 10_000
# a case whose own spacing is this anisotropic has its coarse axis resampled separately
ANISOTROPY_THRESHOLD = 3.0


def target_spacing_for(config: ConfigurationPlan, original_spacing) -> list[float]:
    """The spacing a case is resampled to; a 2D configuration keeps the case's own z spacing."""
    spacing = [float(s) for s in config.spacing]
    if len(spacing) == 2:
        spacing = [float(original_spacing[0])] + spacing
    if config.dim == 2:
        spacing[0] = float(original_spacing[0])
    return spacing


def separate_axis_for(config: ConfigurationPlan, original_spacing, target_spacing) -> int | None:
    """Which axis (if any) is resampled on its own.

    2D configurations never resample across slices, so in-plane only. Otherwise the plan
    decides; a case that is itself strongly anisotropic (a few thick-slice scans in an
    otherwise isotropic dataset) gets its coarse axis treated separately too.
    """
    if config.dim == 2:
        return 0
    if config.resampling.separate_axis is not None:
        return int(config.resampling.separate_axis)
    for spacing in (original_spacing, target_spacing):
        s = np.asarray(spacing, dtype=np.float64)
        if s.max() / s.min() > ANISOTROPY_THRESHOLD and np.sum(s == s.max()) == 1:
            return int(np.argmax(s))
    return None


def labels_to_class_indices(label: np.ndarray, label_values) -> np.ndarray:
    """Map label values to class indices (int16); a value not in ``label_values`` is an error."""
    values = np.asarray(label_values, dtype=np.int64)
    if label.dtype.kind == "f":
        label = np.rint(label)
    label = label.astype(np.int64, copy=False)
    lo, hi = int(label.min()), int(label.max())
    if lo >= 0 and hi < 65536:
        present = np.flatnonzero(np.bincount(label.ravel(), minlength=1))  # much faster than np.unique
    else:
        present = np.unique(label)
    unknown = np.setdiff1d(present, values)
    if unknown.size:
        raise ValueError(f"label map holds value(s) {unknown.tolist()} not declared in the plans' label values {values.tolist()}")
    if np.array_equal(values, np.arange(values.size)):
        return label.astype(np.int16)  # the common case: values are already 0..K-1
    lowest = int(min(values.min(), 0))
    lut = np.zeros(int(values.max()) - lowest + 1, dtype=np.int16)
    lut[values - lowest] = np.arange(values.size, dtype=np.int16)
    return lut[label - lowest]


def sample_class_locations(seg: np.ndarray, num_classes: int, seed: int, max_per_class: int = MAX_CLASS_LOCATIONS) -> dict[str, list[list[int]]]:
    """Up to ``max_per_class`` voxel coordinates per foreground class index, reproducibly sampled."""
    rng = np.random.default_rng(seed)
    flat = seg.ravel()
    locations: dict[str, list[list[int]]] = {}
    for c in range(1, num_classes):
        where = np.flatnonzero(flat == c)
        if where.size > max_per_class:
            where = np.sort(rng.choice(where, max_per_class, replace=False))
        coords = np.stack(np.unravel_index(where, seg.shape), axis=1) if where.size else np.zeros((0, 3), np.int64)
        locations[str(c)] = coords.tolist()
    return locations


def preprocess_case(
    image: np.ndarray,
    label: np.ndarray | None,
    geometry: Geometry,
    plans: Plans,
    config: ConfigurationPlan,
    case_id: str = "",
    bias_field_corrected: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Preprocess ``image`` ``(C, Z, Y, X)`` and ``label`` ``(Z, Y, X)`` (or None at inference).

    Returns float32 data ``(C, Z', Y', X')``, int16 class indices ``(Z', Y', X')`` or None,
    and the properties documented in documentation/architecture.md. When the plans ask for
    N4 bias-field correction it is applied here, so training data and new scans at inference
    get the same correction; ``bias_field_corrected=True`` says the caller already did it
    (the dataset runner does it once per case for all configurations).
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {image.shape}")
    if plans.n4_bias_correction and not bias_field_corrected:
        from autoseg.preprocessing.bias_field import correct_mri_channels

        image = correct_mri_channels(image, geometry.spacing, plans.channel_names, [n.scheme for n in plans.normalization])
    if label is not None and label.shape != image.shape[1:]:
        raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[1:]}")
    original_shape = [int(s) for s in image.shape[1:]]
    original_spacing = [float(s) for s in geometry.spacing]

    cropped, cropped_label, bbox = crop_to_nonzero(image, label)
    data = normalize(cropped, plans.normalization)

    target_spacing = target_spacing_for(config, original_spacing)
    new_shape = compute_new_shape(data.shape[1:], original_spacing, target_spacing)
    axis = separate_axis_for(config, original_spacing, target_spacing)
    rs = config.resampling
    data = resample(data, new_shape, order=rs.image_order, separate_axis=axis, separate_axis_order=rs.separate_axis_order)

    seg = None
    if cropped_label is not None:
        seg = labels_to_class_indices(cropped_label, plans.label_values)
        seg = resample(seg, new_shape, order=rs.label_order, separate_axis=axis, separate_axis_order=rs.separate_axis_order, is_label=True)
        seg = np.ascontiguousarray(seg, dtype=np.int16)

    properties: dict[str, Any] = {
        "case_id": case_id,
        "geometry": geometry.to_dict(),
        "original_shape": original_shape,
        "crop_bbox": bbox,
        "shape_after_crop": [int(s) for s in cropped.shape[1:]],
        "original_spacing": original_spacing,
        "target_spacing": target_spacing,
        "shape_after_resampling": [int(s) for s in data.shape[1:]],
        "separate_axis": axis,
    }
    if seg is not None:
        properties["class_locations"] = sample_class_locations(seg, len(plans.label_values), seed=zlib.crc32(case_id.encode()))
    return np.ascontiguousarray(data, dtype=np.float32), seg, properties
