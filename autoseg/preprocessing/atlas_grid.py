"""The atlas grid of Atlas-ISTN: a fixed box around a case's foreground, cut out and pasted back.

Training cuts every case onto the grid around its label's centre of mass; prediction cuts the
ITN's probabilities around theirs and pastes the warped atlas back. Both use these functions,
so the box a trained STN saw is the box it is given at prediction.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd, insert_crop_into_image

from autoseg.errors import UserError


def foreground_center(seg: np.ndarray) -> tuple[int, int, int]:
    """Rounded centre of mass (z, y, x) of ``seg > 0``; the volume centre without foreground."""
    pts = np.argwhere(np.asarray(seg) > 0)
    if len(pts) == 0:
        return tuple(int(s) // 2 for s in seg.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in pts.mean(0))  # type: ignore[return-value]


def atlas_grid_from_labels(segs: Sequence[np.ndarray], dim: int, divisor: Sequence[int], margin: int = 4) -> list[int]:
    """Grid shape (``dim`` entries): median foreground bbox + 2·margin, rounded up to ``divisor``."""
    sizes = []
    for seg in segs:
        pts = np.argwhere(np.asarray(seg) > 0)
        if len(pts):
            sizes.append(pts.max(0) - pts.min(0) + 1)
    if not sizes:
        raise UserError("atlas_istn: no training case has foreground; the atlas grid cannot be planned")
    med = np.median(np.stack(sizes), 0)
    axes = med[-dim:]
    return [int(math.ceil((a + 2 * margin) / d) * d) for a, d in zip(axes, divisor)]


def grid_box(center: Sequence[int], grid: Sequence[int], shape: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open box (one pair per axis of ``shape``, (z, y, x)) of ``grid`` centred on ``center``.

    With a 2D grid the z axis is the whole (single-slice) volume. The box may stick out of the
    volume; :func:`crop_to_box` zero-pads.
    """
    axes = list(zip(center, shape))
    box = [] if len(grid) == 3 else [(0, int(shape[0]))]
    for (c, _), g in zip(axes[-len(grid):], grid):
        lo = int(c) - int(g) // 2
        box.append((lo, lo + int(g)))
    return box


def crop_to_box(volume: np.ndarray, box: Sequence[tuple[int, int]]) -> np.ndarray:
    """``(C, Z, Y, X)`` -> ``(C, *box sizes)`` float32, zero outside the volume."""
    return crop_and_pad_nd(np.asarray(volume), [list(b) for b in box], cast_cropped_to=np.float32)


def uncrop_from_box(cropped: np.ndarray, box: Sequence[tuple[int, int]], shape: Sequence[int],
                    background: bool = True) -> np.ndarray:
    """Inverse of :func:`crop_to_box` for class probabilities: class 0 is 1 outside the box."""
    out = np.zeros((cropped.shape[0], *shape), np.float32)
    if background:
        out[0] = 1.0
    return insert_crop_into_image(out, np.asarray(cropped, np.float32), [list(b) for b in box])
