"""Resample images, label maps and probability maps to a new voxel grid.

Arrays are ``(C, Z, Y, X)`` (a ``(Z, Y, X)`` array is accepted and returned as such).
Voxels are aligned by their extent (pixel-area alignment: the first and last voxel
*edges* coincide), the convention of ``skimage.transform.resize`` and of ``grid_mode`` in
scipy, so going to a grid and back does not shift the image by half a voxel.

* images: spline of ``order`` (3 for training data; inference uses 1 for probabilities),
  one channel at a time in float32 so a ``(K, Z, Y, X)`` probability map never needs a
  float64 copy of all classes at once;
* labels (``is_label=True``): ``order`` 1 resamples each label value as a one-hot map
  linearly and takes the argmax (smooth boundaries, no new values); ``order`` 0 is nearest;
* anisotropic data (``separate_axis`` set): each slice is resampled in-plane with
  ``order`` and the coarse axis separately with ``separate_axis_order`` (0 = nearest), so
  thick slices are never blended by a cubic kernel across 5-10 mm.

An axis whose size does not change is never touched, and an array whose shape does not
change is returned without any work (only cast to float32 for images).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]) -> list[int]:
    """Shape of a ``(Z, Y, X)`` grid of ``spacing`` after resampling to ``target_spacing``."""
    if not (len(shape) == len(spacing) == len(target_spacing)):
        raise ValueError(f"shape {shape}, spacing {spacing} and target {target_spacing} must have the same length")
    return [max(1, int(round(s * sp / t))) for s, sp, t in zip(shape, spacing, target_spacing)]


def _source_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """Continuous input coordinate of each output voxel centre (pixel-area alignment)."""
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    # the input voxel whose extent holds the output voxel's centre
    idx = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.intp)
    return np.clip(idx, 0, n_in - 1)


def _nearest(x: np.ndarray, new_shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of the last ``len(new_shape)`` axes; keeps dtype."""
    lead = x.ndim - len(new_shape)
    index = [slice(None)] * lead
    for axis, n_out in enumerate(new_shape):
        n_in = x.shape[lead + axis]
        index.append(slice(None) if n_in == n_out else _nearest_indices(n_in, n_out))
    if all(isinstance(i, slice) for i in index):
        return x
    # np.ix_ needs arrays on every axis; build them only for the spatial axes
    arrays = [np.arange(x.shape[lead + a]) if isinstance(i, slice) else i for a, i in enumerate(index[lead:])]
    return x[(Ellipsis,) + np.ix_(*arrays)]


def _along_axis(x: np.ndarray, axis: int, n_out: int, order: int) -> np.ndarray:
    """Resample one axis of a float32 array with ``order`` 0 (nearest), 1 (linear) or a spline."""
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    if order == 0:
        return np.take(x, _nearest_indices(n_in, n_out), axis=axis)
    if order == 1:
        src = np.clip(_source_coordinates(n_in, n_out), 0, n_in - 1)
        lo = np.floor(src).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        shape = [1] * x.ndim
        shape[axis] = n_out
        w = (src - lo).astype(np.float32).reshape(shape)
        return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w
    factors = [1.0] * x.ndim
    factors[axis] = n_out / n_in
    return ndimage.zoom(x, factors, order=order, mode="nearest", grid_mode=True, output=np.float32)


def _zoom(x: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resample a float32 array (2D or 3D, all axes spatial) jointly on all axes."""
    new_shape = tuple(int(s) for s in new_shape)
    if x.shape == new_shape:
        return x
    if order == 0:
        return _nearest(x, new_shape)
    if order == 1:
        # separable linear is exact and avoids scipy's float64 working copy
        for axis, n_out in enumerate(new_shape):
            x = _along_axis(x, axis, n_out, 1)
        return x.astype(np.float32, copy=False)
    factors = [o / i for o, i in zip(new_shape, x.shape)]
    out = ndimage.zoom(x, factors, order=order, mode="nearest", grid_mode=True, output=np.float32)
    if out.shape != new_shape:  # guard against round-off in scipy's shape computation
        raise RuntimeError(f"resampling produced shape {out.shape}, expected {new_shape}")
    return out


def _resample_volume(x: np.ndarray, new_shape: Sequence[int], order: int, separate_axis: int | None, separate_axis_order: int) -> np.ndarray:
    """Resample one float32 ``(Z, Y, X)`` volume."""
    new_shape = tuple(int(s) for s in new_shape)
    if x.shape == new_shape:
        return x
    if separate_axis is None:
        return _zoom(x, new_shape, order)
    x = np.moveaxis(x, separate_axis, 0)
    in_plane = tuple(new_shape[a] for a in range(3) if a != separate_axis)
    if x.shape[1:] != in_plane:
        slices = np.empty((x.shape[0],) + in_plane, dtype=np.float32)
        for i in range(x.shape[0]):
            slices[i] = _zoom(x[i], in_plane, order)
        x = slices
    x = _along_axis(x, 0, new_shape[separate_axis], separate_axis_order)
    return np.ascontiguousarray(np.moveaxis(x, 0, separate_axis), dtype=np.float32)


def resample(
    array: np.ndarray,
    new_shape: Sequence[int],
    order: int = 3,
    separate_axis: int | None = None,
    separate_axis_order: int = 0,
    is_label: bool = False,
) -> np.ndarray:
    """Resample ``array`` ``(C, Z, Y, X)`` or ``(Z, Y, X)`` to spatial ``new_shape`` ``(Z, Y, X)``.

    Images come back float32; labels keep their dtype and hold only values present in the
    input. See the module docstring for ``order`` and ``separate_axis``.
    """
    squeeze = array.ndim == 3
    if squeeze:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"resample expects (C, Z, Y, X) or (Z, Y, X), got shape {array.shape}")
    new_shape = tuple(int(s) for s in new_shape)
    if len(new_shape) != 3:
        raise ValueError(f"new_shape must have three entries (Z, Y, X), got {new_shape}")
    if separate_axis is not None and separate_axis not in (0, 1, 2):
        raise ValueError(f"separate_axis must be 0, 1, 2 or None, got {separate_axis}")

    if array.shape[1:] == new_shape:
        out = array if is_label else array.astype(np.float32, copy=False)
    elif is_label:
        out = _resample_label(array, new_shape, order, separate_axis, separate_axis_order)
    else:
        out = np.empty((array.shape[0],) + new_shape, dtype=np.float32)
        for c in range(array.shape[0]):
            out[c] = _resample_volume(array[c].astype(np.float32, copy=False), new_shape, order, separate_axis, separate_axis_order)
    return out[0] if squeeze else out


def _resample_label(labels: np.ndarray, new_shape: tuple[int, ...], order: int, separate_axis: int | None, separate_axis_order: int) -> np.ndarray:
    out = np.empty((labels.shape[0],) + new_shape, dtype=labels.dtype)
    for c in range(labels.shape[0]):
        lab = labels[c]
        if order == 0:
            out[c] = _nearest(lab, new_shape)
            continue
        values = np.unique(lab)
        if values.size == 1:
            out[c] = values[0]
            continue
        # one-hot maps resampled one at a time: memory stays at two float32 volumes
        best = np.full(new_shape, -1.0, dtype=np.float32)
        result = np.empty(new_shape, dtype=labels.dtype)
        for v in values:
            m = _resample_volume((lab == v).astype(np.float32), new_shape, order, separate_axis, separate_axis_order)
            better = m > best
            result[better] = v
            best[better] = m[better]
        out[c] = result
    return out
