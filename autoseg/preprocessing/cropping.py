"""Crop an image to the region where it holds data, and put a result back into the full grid.

Many scans carry a frame of exact zeros (skull-stripped MRI, padded CT): cropping it away
saves memory and keeps random training patches on real anatomy. The bounding box is kept
(half-open, in original voxels) so inference can ``uncrop`` its prediction.
"""
from __future__ import annotations

import numpy as np

BBox = list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open


def nonzero_bbox(image: np.ndarray) -> BBox:
    """Bounding box of voxels where any channel of ``image`` ``(C, Z, Y, X)`` is nonzero.

    An image with no nonzero voxel keeps its full extent (cropping it to nothing would
    leave nothing to predict on).
    """
    if image.ndim != 4:
        raise ValueError(f"expected (C, Z, Y, X), got shape {image.shape}")
    mask = np.any(image != 0, axis=0)
    bbox: BBox = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other))
        if present.size == 0:
            return [[0, int(s)] for s in mask.shape]
        bbox.append([int(present[0]), int(present[-1]) + 1])
    return bbox


def crop(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """Crop the last three (spatial) axes of ``array`` to ``bbox``; leading axes are kept."""
    slicer = (Ellipsis,) + tuple(slice(lo, hi) for lo, hi in bbox)
    return array[slicer]


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, BBox]:
    """Crop ``image`` ``(C, Z, Y, X)`` (and ``label`` ``(Z, Y, X)``) to the image's nonzero box."""
    bbox = nonzero_bbox(image)
    cropped_label = crop(label, bbox) if label is not None else None
    return crop(image, bbox), cropped_label, bbox


def uncrop(array: np.ndarray, bbox: BBox, original_shape, fill: float = 0) -> np.ndarray:
    """Place ``array`` (``(..., z, y, x)`` of the cropped size) back into the original grid.

    ``original_shape`` is the spatial shape ``(Z, Y, X)``; leading axes (channels, classes)
    are kept. Voxels outside the box get ``fill`` (for probabilities: 1 for background,
    0 for the other classes, which the caller does per channel).
    """
    original_shape = tuple(int(s) for s in original_shape)
    expected = tuple(hi - lo for lo, hi in bbox)
    if tuple(array.shape[-3:]) != expected:
        raise ValueError(f"array spatial shape {array.shape[-3:]} does not match crop box size {expected}")
    out = np.full(array.shape[:-3] + original_shape, fill, dtype=array.dtype)
    out[(Ellipsis,) + tuple(slice(lo, hi) for lo, hi in bbox)] = array
    return out
