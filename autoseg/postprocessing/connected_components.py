"""Connected-component postprocessing: keep only the largest object (of the foreground, or per class).

Components use full connectivity (26 neighbours in 3D), so pieces that touch at an edge or a
corner stay one object; only truly separate islands are removed.

A postprocessing *spec* is plain JSON::

    {"foreground_largest_component": true, "per_class_largest_component": [1, 3]}

applied in that order: first the whole foreground is reduced to its largest component (voxels
of every class outside it become background), then each listed label value keeps only its own
largest component (removed voxels become background).

The per-class step works inside each class's bounding box (one pass over the volume finds all
of them), so a hundred classes do not cost a hundred full-volume labellings.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage as ndi

from autoseg.evaluation.metrics import class_boxes, class_index_map

NO_POSTPROCESSING: dict = {"foreground_largest_component": False, "per_class_largest_component": []}


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Boolean mask holding only the largest connected component of ``mask`` (empty stays empty)."""
    mask = np.asarray(mask, bool)
    labelled, n = ndi.label(mask, structure=ndi.generate_binary_structure(mask.ndim, mask.ndim))
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def validate_spec(spec: dict) -> dict:
    """Normalise a spec (missing keys mean 'off'); raise ValueError on anything unknown."""
    unknown = set(spec) - set(NO_POSTPROCESSING)
    if unknown:
        raise ValueError(f"unknown postprocessing keys: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(NO_POSTPROCESSING)})")
    return {"foreground_largest_component": bool(spec.get("foreground_largest_component", False)),
            "per_class_largest_component": [int(v) for v in spec.get("per_class_largest_component", [])]}


def apply_postprocessing(seg: np.ndarray, spec: dict, label_values: Iterable[int] | None = None) -> np.ndarray:
    """Apply ``spec`` to a label map; returns a new array of the same dtype.

    ``label_values`` (the dataset's values, 0 = background) restricts the per-class step to
    known classes; a listed value not among them is an error.
    """
    spec = validate_spec(spec)
    out = np.array(seg, copy=True)
    if label_values is not None:
        known = {int(v) for v in label_values}
        bad = [v for v in spec["per_class_largest_component"] if v not in known or v == 0]
        if bad:
            raise ValueError(f"per-class postprocessing names label value(s) {bad} not among the foreground labels {sorted(known - {0})}")
    if spec["foreground_largest_component"]:
        foreground = out != 0
        out[foreground & ~keep_largest_component(foreground)] = 0
    keep_largest_per_class(out, spec["per_class_largest_component"])
    return out


def keep_largest_per_class(seg: np.ndarray, label_values: Iterable[int]) -> None:
    """In place: each listed value keeps only its largest component, the rest becomes background."""
    values = list(dict.fromkeys(int(v) for v in label_values if int(v) != 0))
    if not values:
        return
    index = class_index_map(seg, values)
    for i, box in enumerate(class_boxes(index, len(values)), start=1):
        if box is None:
            continue
        mask = index[box] == i
        view = seg[box]
        view[mask & ~keep_largest_component(mask)] = 0
