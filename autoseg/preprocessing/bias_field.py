"""Optional N4 bias-field correction for MRI channels (``plan-and-preprocess --n4``).

MRI intensities drift smoothly across the field of view (coil sensitivity). N4 estimates
that multiplicative field; it is fitted on a shrunk copy (the field is smooth, so this is
much faster and just as good) and divided out at full resolution.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def correct_bias_field(volume: np.ndarray, spacing: Sequence[float], shrink: int = 4, iterations: int = 50) -> np.ndarray:
    """N4-correct one ``(Z, Y, X)`` channel; returns float32 of the same shape.

    ``spacing`` is ``(z, y, x)``. A single-slice (2D) volume is corrected as a 2D image.
    """
    import SimpleITK as sitk

    x = np.asarray(volume, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected (Z, Y, X), got shape {x.shape}")
    two_d = x.shape[0] == 1
    img = sitk.GetImageFromArray(x[0] if two_d else x)
    img.SetSpacing(tuple(float(s) for s in (spacing[1:] if two_d else spacing)[::-1]))
    # N4 works on log intensities: fit only on tissue (Otsu foreground), never on zero background
    mask = sitk.OtsuThreshold(img, 0, 1, 200)
    if not sitk.GetArrayViewFromImage(mask).any():
        return x.copy()
    factor = [max(1, min(shrink, s // 8)) for s in img.GetSize()]
    small = sitk.Shrink(img, factor)
    small_mask = sitk.Shrink(mask, factor)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([iterations] * 4)
    corrector.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(img)).astype(np.float32)
    out = x / np.exp(log_field).reshape(x.shape)
    return out.astype(np.float32, copy=False)


def is_mri_channel(channel_name: str, scheme: str) -> bool:
    """Whether N4 applies: per-case z-scored channels that are not CT or colour."""
    name = channel_name.lower()
    return scheme.lower() == "zscore" and "ct" != name and not name.startswith(("rgb", "red", "green", "blue"))


def correct_mri_channels(image: np.ndarray, spacing: Sequence[float], channel_names: Sequence[str], schemes: Sequence[str]) -> np.ndarray:
    """Apply :func:`correct_bias_field` to the MRI channels of ``image`` ``(C, Z, Y, X)``; others pass through."""
    out = image.astype(np.float32, copy=True)
    for c, (name, scheme) in enumerate(zip(channel_names, schemes)):
        if is_mri_channel(name, scheme):
            out[c] = correct_bias_field(out[c], spacing)
    return out
