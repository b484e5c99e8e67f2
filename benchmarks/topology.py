"""Topological plausibility of a segmentation: is every foreground class one connected piece?"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def component_counts(seg: np.ndarray, label_values: Sequence[int], connectivity: int | None = None) -> dict[int, int]:
    """Connected components per foreground label value (``connectivity``: 1 = faces, default = full)."""
    seg = np.asarray(seg)
    structure = ndimage.generate_binary_structure(seg.ndim, seg.ndim if connectivity is None else connectivity)
    return {int(v): int(ndimage.label(seg == v, structure)[1]) for v in label_values if v != 0}


def topology_plausible(seg: np.ndarray, label_values: Sequence[int], connectivity: int | None = None) -> bool:
    """True when every foreground class is present as exactly one connected component.

    A missing class (0 components) is implausible too: the structure is expected in every case.
    Full connectivity (26 in 3D, 8 in 2D) by default, as the fingerprint counts components.
    """
    return all(n == 1 for n in component_counts(seg, label_values, connectivity).values())
