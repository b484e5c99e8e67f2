"""From the preprocessed grid back to the input image's grid, and onto disk.

Probabilities are resampled back to the cropped shape at the original spacing (linear,
one class at a time so only one extra volume exists at once) and written straight into
the original-size array; outside the crop box the background has probability 1.
Results are written with exactly the input's spacing, origin and direction, in the
input's file format (2D in, 2D out).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

from autoseg.dataset.imageio import Geometry, write_image
from autoseg.planners.plans import ConfigurationPlan, Plans
from autoseg.preprocessing.resampling import resample

def _config(plans: Plans, config: ConfigurationPlan | str) -> ConfigurationPlan:
    return plans.configuration(config) if isinstance(config, str) else config


def to_original_geometry(
    probabilities: np.ndarray | torch.Tensor,
    properties: dict[str, Any],
    plans: Plans,
    config: ConfigurationPlan | str,
) -> np.ndarray:
    """``(K, z, y, x)`` probabilities on the preprocessed grid -> ``(K, Z0, Y0, X0)`` float32."""
    from autoseg.preprocessing.pipeline import separate_axis_for

    config = _config(plans, config)
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().cpu().numpy()
    if probabilities.ndim != 4:
        raise ValueError(f"expected (K, Z, Y, X) probabilities, got shape {probabilities.shape}")
    k = probabilities.shape[0]
    original_shape = tuple(int(s) for s in properties["original_shape"])
    crop_shape = tuple(int(s) for s in properties["shape_after_crop"])
    bbox = properties["crop_bbox"]
    inside = bounding_box_to_slice([[int(lo), int(hi)] for lo, hi in bbox])
    if "separate_axis" in properties:
        axis = properties["separate_axis"]
    else:
        axis = separate_axis_for(config, properties["original_spacing"], properties["target_spacing"])

    out = np.zeros((k,) + original_shape, dtype=np.float32)
    out[0] = 1.0  # outside the crop box there was no image: background
    for c in range(k):
        # linear for probabilities: a cubic spline would overshoot outside [0, 1]
        out[(c,) + inside] = resample(probabilities[c].astype(np.float32, copy=False), crop_shape, order=1,
                                      separate_axis=axis,
                                      separate_axis_order=config.resampling.separate_axis_order)
    return out


def entropy_map(probabilities: np.ndarray | torch.Tensor) -> np.ndarray:
    """Per-voxel entropy ``-sum_k p log p`` (nats) of ``(K, Z, Y, X)`` probabilities, float32."""
    probs = torch.as_tensor(probabilities)
    out = torch.zeros(tuple(probs.shape[1:]), dtype=torch.float32)
    for c in range(probs.shape[0]):  # one class at a time: no (K, Z, Y, X) temporary
        p = probs[c].float()
        out -= torch.xlogy(p, p)
    return out.clamp_(min=0).numpy()


def label_volumes_ml(seg: np.ndarray, spacing: Sequence[float], label_values: Sequence[int]) -> dict[int, float]:
    """Volume of each label value in millilitres: voxel count x voxel volume (mm^3) / 1000."""
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    counts = np.bincount(np.searchsorted(np.asarray(sorted(label_values)), seg.ravel()), minlength=len(label_values))
    by_value = dict(zip(sorted(label_values), counts.tolist()))
    return {int(v): by_value[v] * voxel_mm3 / 1000.0 for v in label_values}


def write_prediction(seg: np.ndarray, geometry: Geometry, path: str | os.PathLike) -> None:
    """Write a ``(Z, Y, X)`` map with the input's exact geometry, atomically; the ending picks the format."""
    write_image(seg, geometry, Path(path))
