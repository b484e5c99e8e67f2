"""Crop an image to the region where it holds data.

Many scans carry a frame of exact zeros (skull-stripped MRI, padded CT): cropping it away
saves memory and keeps random training patches on real anatomy. The bounding box is kept
(half-open, in original voxels) so inference puts its prediction back in the full grid.
"""
from __future__ import annotations

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

from autoseg.fingerprint.fingerprint import nonzero_bbox

BBox = list[list[int]]  # [[z0, z1], [y0, y1], [x0, x1]], half-open


def crop(array: np.ndarray, bbox: BBox) -> np.ndarray:
    """Crop the last three (spatial) axes of ``array`` to ``bbox``; leading axes are kept."""
    return array[(Ellipsis,) + bounding_box_to_slice(bbox)]


def crop_to_nonzero(image: np.ndarray, label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, BBox]:
    """Crop ``image`` ``(C, Z, Y, X)`` (and ``label`` ``(Z, Y, X)``) to the image's nonzero box."""
    bbox = nonzero_bbox(image)
    cropped_label = crop(label, bbox) if label is not None else None
    return crop(image, bbox), cropped_label, bbox
