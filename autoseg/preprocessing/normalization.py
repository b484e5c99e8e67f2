"""Intensity normalization, one scheme per input channel (``plans.normalization``).

* ``ct``: Hounsfield units mean the same in every scan, so every case is clipped to the
  dataset's foreground percentiles and z-scored with the dataset's foreground mean/std.
* ``zscore``: MRI and other arbitrary-unit modalities; each case is z-scored with its own
  mean and std (over the whole cropped image).
* ``rgb``: 8-bit colour photographs; per case and channel z-score, as ``zscore``.
* ``none``: cast to float32 only (data that is already normalized by the user).

Output is always float32.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from autoseg.planners.plans import NORMALIZATION_SCHEMES, ChannelNormalization

SCHEMES = NORMALIZATION_SCHEMES
_EPS = 1e-8


def _zscore(x: np.ndarray) -> np.ndarray:
    # statistics in float64: float32 sums over millions of voxels lose digits
    mean = float(x.mean(dtype=np.float64))
    std = float(x.std(dtype=np.float64))
    out = x.astype(np.float32, copy=True)
    out -= mean
    out /= max(std, _EPS)
    return out


def normalize_channel(x: np.ndarray, norm: ChannelNormalization) -> np.ndarray:
    """Normalize one channel (any shape) according to ``norm``; returns a new float32 array."""
    scheme = norm.scheme.lower()
    if scheme == "ct":
        missing = [k for k in ("clip_low", "clip_high", "mean", "std") if getattr(norm, k) is None]
        if missing:
            raise ValueError(f"CT normalization needs {', '.join(missing)} in the plans (from the fingerprint)")
        out = np.clip(x.astype(np.float32, copy=False), norm.clip_low, norm.clip_high).astype(np.float32, copy=False)
        out = out - np.float32(norm.mean)
        out /= np.float32(max(norm.std, _EPS))
        return out
    if scheme in ("zscore", "rgb"):
        return _zscore(x)
    if scheme == "none":
        return x.astype(np.float32, copy=True)
    raise ValueError(f"unknown normalization scheme '{norm.scheme}' (known: {', '.join(SCHEMES)})")


def normalize(image: np.ndarray, schemes: Sequence[ChannelNormalization]) -> np.ndarray:
    """Normalize ``image`` ``(C, ...)`` channel by channel; returns float32 of the same shape."""
    if image.shape[0] != len(schemes):
        raise ValueError(f"image has {image.shape[0]} channel(s) but the plans give {len(schemes)} normalization scheme(s)")
    out = np.empty(image.shape, dtype=np.float32)
    for c, norm in enumerate(schemes):
        out[c] = normalize_channel(image[c], norm)
    return out
