"""Seeded image corruptions for robustness tests (Atlas-ISTN's corrupted-input evaluation).

``corrupt(image, seed)`` applies, in this order, on a ``(Z, Y, X)`` or ``(C, Z, Y, X)``
float image (intensities are scaled relative to the image's own foreground-free statistics,
so the corruption means the same on MR and CT):

* ``blur``: gaussian blur, sigma uniform in [1, 2] voxels (in-plane only when Z == 1);
* ``bias``: multiplicative smooth intensity bias, exp of a random linear + quadratic field
  over the normalised coordinates, spanning roughly x0.6..x1.6 across the image;
* ``noise``: additive gaussian noise with sd = 0.15 x the image's standard deviation;
* ``missing_slices``: 15% of the slices along z (at least one), chosen at random, set to the
  image minimum (as a dropped acquisition slice).

Everything is drawn from ``numpy.random.default_rng(seed)``: the same image and seed give
the same output, bit for bit.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

KINDS = ("noise", "blur", "bias", "missing_slices")
_ORDER = ("blur", "bias", "noise", "missing_slices")


def corrupt(image: np.ndarray, seed: int, kinds: Sequence[str] = KINDS) -> np.ndarray:
    """A corrupted float32 copy of ``image``; see the module docstring for what each kind does."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown corruption(s) {sorted(unknown)}; choose from {KINDS}")
    rng = np.random.default_rng(seed)
    arr = np.asarray(image, dtype=np.float32)
    squeeze = arr.ndim == 3
    out = (arr[None] if squeeze else arr).copy()
    spatial = out.shape[1:]
    # draw every random number up front, in a fixed order, so choosing kinds does not change the others
    sigma = rng.uniform(1.0, 2.0)
    coeffs = rng.uniform(-0.25, 0.25, size=(3, 2))
    noise_rng = np.random.default_rng(rng.integers(2 ** 63))
    n_missing = max(1, int(round(0.15 * spatial[0]))) if spatial[0] > 1 else 0
    missing = rng.choice(spatial[0], size=n_missing, replace=False) if n_missing else np.array([], int)
    for kind in _ORDER:
        if kind not in kinds:
            continue
        if kind == "blur":
            s = (0.0, sigma, sigma) if spatial[0] == 1 else (sigma,) * 3
            out = np.stack([ndimage.gaussian_filter(c, s) for c in out])
        elif kind == "bias":
            grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in spatial], indexing="ij")
            field = sum(a * g + b * g * g for (a, b), g in zip(coeffs, grids))
            out = out * np.exp(field)[None].astype(np.float32)
        elif kind == "noise":
            sd = 0.15 * out.reshape(out.shape[0], -1).std(1)
            out = out + noise_rng.standard_normal(out.shape).astype(np.float32) * sd.reshape(-1, 1, 1, 1)
        elif kind == "missing_slices" and len(missing):
            out[:, missing] = out.reshape(out.shape[0], -1).min(1).reshape(-1, 1, 1, 1)
    out = out.astype(np.float32)
    return out[0] if squeeze else out
